-- 0007: named queues. Every task belongs to one queue ('default' unless sent to another);
-- a worker claims from the queues it serves, one queue per claim statement, on the ready
-- index, now led by the queue: each claim is a range scan of its own queue, however long the
-- others' backlogs. mqs_queues lists every queue a task was ever sent to (written once per
-- queue and process, before its first task), so that what serves "every queue" (immediate
-- mode, `--queues '*'`, listings and counts) enumerates them without scanning the tasks.
ALTER TABLE mqs_tasks ADD COLUMN queue TEXT NOT NULL DEFAULT 'default';
DROP INDEX mqs_tasks_ready;
CREATE INDEX mqs_tasks_ready ON mqs_tasks (queue, priority DESC, id) WHERE status = 1;
CREATE TABLE mqs_queues (
    name TEXT PRIMARY KEY
) WITHOUT ROWID;
INSERT INTO mqs_queues (name) VALUES ('default');
