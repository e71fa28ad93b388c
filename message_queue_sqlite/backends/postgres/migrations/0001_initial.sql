-- 0001: tasks, live nodes, and the indexes that keep every hot query O(log n).
-- {schema} is replaced by the quoted schema name; the schema itself and the
-- mqs_schema_version table are created by connection.py before this runs.
CREATE TABLE {schema}.mqs_tasks (
    -- from a sequence: monotonic and never reused (FIFO within a priority; public ids are
    -- '<shard>-<id>')
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_name     TEXT             NOT NULL,
    args          TEXT,                        -- JSON; for a cached task, the key of its arguments in memory
    priority      BIGINT           NOT NULL DEFAULT 0,
    status        INTEGER          NOT NULL,   -- TaskStatus
    outcome       INTEGER,                     -- 3 or 4 once ended; kept when status becomes 5
    result        TEXT,                        -- JSON return value, or the error message
    traceback     TEXT,
    sender        TEXT             NOT NULL,   -- node that sent it (callbacks run there)
    notify        BOOLEAN          NOT NULL DEFAULT FALSE,  -- the sender has a callback waiting
    cache_owner   TEXT,                        -- node whose memory holds the arguments
    attempts      INTEGER          NOT NULL DEFAULT 0,  -- claims so far; the lease's fencing token
    max_retries   BIGINT           NOT NULL DEFAULT 0,
    retry         TEXT,                        -- per-send retry policy (JSON)
    crashes       INTEGER          NOT NULL DEFAULT 0,  -- leases that expired under a dead worker
    run_after     DOUBLE PRECISION NOT NULL DEFAULT 0,
    lease_owner   TEXT,
    lease_expires DOUBLE PRECISION,
    created_at    DOUBLE PRECISION NOT NULL,
    started_at    DOUBLE PRECISION,
    ended_at      DOUBLE PRECISION
) WITH (fillfactor = 85, autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
-- claim order: best priority, then send order; only ready rows are indexed
CREATE INDEX mqs_tasks_ready ON {schema}.mqs_tasks (priority DESC, id) WHERE status = 1;
CREATE INDEX mqs_tasks_scheduled ON {schema}.mqs_tasks (run_after) WHERE status = 6;
CREATE INDEX mqs_tasks_running ON {schema}.mqs_tasks (lease_owner, lease_expires) WHERE status = 2;
CREATE INDEX mqs_tasks_notify ON {schema}.mqs_tasks (sender) WHERE notify AND status IN (3, 4);
CREATE INDEX mqs_tasks_ended ON {schema}.mqs_tasks (ended_at) WHERE status IN (3, 4, 5);
CREATE INDEX mqs_tasks_cached ON {schema}.mqs_tasks (cache_owner)
    WHERE cache_owner IS NOT NULL AND status IN (1, 2, 6);

CREATE TABLE {schema}.mqs_nodes (
    node_id    TEXT PRIMARY KEY,
    pid        INTEGER NOT NULL,
    host       TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
