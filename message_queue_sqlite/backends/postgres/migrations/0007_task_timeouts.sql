-- 0007: a send's own timeout (as SQLite's migration 0008): seconds a run may take; NULL:
-- the task's or the worker's setting, if any.
ALTER TABLE {schema}.mqs_tasks ADD COLUMN timeout DOUBLE PRECISION;
