-- 0010: global concurrency limits (as SQLite's migration 0011): a task name listed here runs at
-- most max_running at once, counted by the claim statement; claims of a schema with limits
-- first lock these rows, so two claimers never both see the same room.
CREATE TABLE {schema}.mqs_limits (
    task_name   TEXT PRIMARY KEY,
    max_running INTEGER NOT NULL
);
