"""The engine: sending, worker threads, leases and outcome delivery, over any backend."""
