from message_queue_sqlite.cli.main import main

raise SystemExit(main())
