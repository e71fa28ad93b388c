-- 0012: a task's headers (as SQLite's migration 0013): string pairs (JSON text) the sender's
-- hooks attach and the worker's hooks read when it runs.
ALTER TABLE {schema}.mqs_tasks ADD COLUMN headers TEXT;
