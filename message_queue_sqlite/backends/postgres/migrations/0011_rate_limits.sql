-- 0011: rate limits (as SQLite's migration 0012): per limited task, the window being filled
-- (possibly a future one) and the runs it holds; a deferred task keeps its window's place.
CREATE TABLE {schema}.mqs_rates (
    task_name    TEXT PRIMARY KEY,
    window_start DOUBLE PRECISION NOT NULL,
    used         INTEGER NOT NULL
);
ALTER TABLE {schema}.mqs_tasks ADD COLUMN rate_slot DOUBLE PRECISION;
