-- 0005: periodic tasks. A schedule row per periodic task (on the first shard, with the tasks
-- of its slots), and on each task the schedule and slot it was enqueued for. A slot is
-- enqueued by the transaction that moves its schedule's last_slot past it (compare-and-set:
-- exactly one of the schedulers trying wins) and inserts its task; the unique index on
-- (schedule, slot) refuses a second task for one slot whatever happens to the schedule row.
ALTER TABLE mqs_tasks ADD COLUMN schedule TEXT;
ALTER TABLE mqs_tasks ADD COLUMN slot REAL;
CREATE UNIQUE INDEX mqs_tasks_slot ON mqs_tasks (schedule, slot) WHERE schedule IS NOT NULL;
CREATE TABLE mqs_schedules (
    name       TEXT PRIMARY KEY,  -- the task's name
    expression TEXT NOT NULL,     -- "every 30s", "cron */5 * * * * (UTC)"
    last_slot  REAL NOT NULL,     -- the newest slot decided (enqueued or skipped)
    next_slot  REAL,              -- the next one, as the last scheduler to decide computed it
    last_task  INTEGER,           -- row id of the newest slot's task
    seen_at    REAL NOT NULL,     -- a live scheduler declared it then (wall clock)
    created_at REAL NOT NULL
) WITHOUT ROWID;
