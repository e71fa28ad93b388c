"""The command line: ``python -m message_queue_sqlite`` (also ``mqs``)."""
