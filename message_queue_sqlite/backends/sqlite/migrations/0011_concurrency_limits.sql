-- 0011: global concurrency limits. A task name listed here runs at most max_running at once
-- on this shard, whoever claims: the claim statement counts its RUNNING rows (on the running
-- index) and leases no more than the room left. Workers declare their tasks' limits at start.
CREATE TABLE mqs_limits (
    task_name   TEXT PRIMARY KEY,
    max_running INTEGER NOT NULL
) WITHOUT ROWID;
