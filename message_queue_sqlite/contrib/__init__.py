"""Optional parts built on the public API, each with its own extra (``pip install
'message_queue_sqlite[dashboard]'``); nothing in the core imports them, so the queue itself
stays standard-library only."""
