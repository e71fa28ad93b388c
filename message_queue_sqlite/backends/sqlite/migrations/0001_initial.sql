-- 0001: tasks, live nodes, and the indexes that keep every hot query O(log n).
CREATE TABLE mqs_tasks (
    -- rowid: always one past the largest, and the newest row is never purged, so ids are
    -- monotonic and never reused (FIFO within a priority) without AUTOINCREMENT's extra write
    id            INTEGER PRIMARY KEY,
    task_name     TEXT    NOT NULL,
    args          TEXT,                -- JSON; for a cached task, the key of its arguments in memory
    priority      INTEGER NOT NULL DEFAULT 0,
    status        INTEGER NOT NULL,    -- TaskStatus
    outcome       INTEGER,             -- 3 or 4 once ended; kept when status becomes 5
    result        TEXT,                -- JSON return value, or the error message
    traceback     TEXT,
    sender        TEXT    NOT NULL,    -- node that sent it (callbacks run there)
    notify        INTEGER NOT NULL DEFAULT 0,  -- 1: the sender has a callback waiting
    cache_owner   TEXT,                -- node whose memory holds the arguments
    attempts      INTEGER NOT NULL DEFAULT 0,  -- claims so far; the lease's fencing token
    max_retries   INTEGER NOT NULL DEFAULT 0,
    retry         TEXT,                -- per-send retry policy (JSON)
    crashes       INTEGER NOT NULL DEFAULT 0,  -- leases that expired under a dead worker
    run_after     REAL    NOT NULL DEFAULT 0,
    lease_owner   TEXT,
    lease_expires REAL,
    created_at    REAL    NOT NULL,
    started_at    REAL,
    ended_at      REAL
);
-- claim order: best priority, then send order; only ready rows are indexed
CREATE INDEX mqs_tasks_ready ON mqs_tasks (priority DESC, id) WHERE status = 1;
CREATE INDEX mqs_tasks_scheduled ON mqs_tasks (run_after) WHERE status = 6;
CREATE INDEX mqs_tasks_running ON mqs_tasks (lease_owner, lease_expires) WHERE status = 2;
CREATE INDEX mqs_tasks_notify ON mqs_tasks (sender) WHERE notify = 1 AND status IN (3, 4);
-- ended_at is set exactly when a task ends (3, 4, 5); marking CALLBACKED leaves this index alone
CREATE INDEX mqs_tasks_ended ON mqs_tasks (ended_at) WHERE ended_at IS NOT NULL;
CREATE INDEX mqs_tasks_cached ON mqs_tasks (cache_owner)
    WHERE cache_owner IS NOT NULL AND status IN (1, 2, 6);

CREATE TABLE mqs_nodes (
    node_id    TEXT PRIMARY KEY,
    pid        INTEGER NOT NULL,
    host       TEXT NOT NULL,
    started_at REAL NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
