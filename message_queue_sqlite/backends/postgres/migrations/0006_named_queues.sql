-- 0006: named queues (as SQLite's migration 0007). Every task belongs to one queue
-- ('default' unless sent to another); a claim takes from one queue, on the ready index, now
-- led by the queue. mqs_queues lists every queue a task was ever sent to (written once per
-- queue and process, before its first task), so that what serves every queue enumerates
-- them without scanning the tasks. Adding a column with a constant default rewrites nothing.
ALTER TABLE {schema}.mqs_tasks ADD COLUMN queue TEXT NOT NULL DEFAULT 'default';
DROP INDEX {schema}.mqs_tasks_ready;
CREATE INDEX mqs_tasks_ready ON {schema}.mqs_tasks (queue, priority DESC, id) WHERE status = 1;
CREATE TABLE {schema}.mqs_queues (
    name TEXT PRIMARY KEY
);
INSERT INTO {schema}.mqs_queues (name) VALUES ('default');
