-- 0012: rate limits ("100/m": at most 100 runs of a task per window). mqs_rates keeps, per
-- limited task, the window being filled (possibly a future one) and the runs it holds: a run
-- takes a place in the current window, or the task is deferred to the first window with room
-- (status SCHEDULED until its start, rate_slot = that window), where it runs on its place.
CREATE TABLE mqs_rates (
    task_name    TEXT PRIMARY KEY,
    window_start REAL NOT NULL,
    used         INTEGER NOT NULL
) WITHOUT ROWID;
ALTER TABLE mqs_tasks ADD COLUMN rate_slot REAL;
