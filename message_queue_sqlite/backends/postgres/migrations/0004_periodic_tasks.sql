-- 0004: periodic tasks. A schedule row per periodic task, and on each task the schedule and
-- slot it was enqueued for. A slot is enqueued by the transaction that moves its schedule's
-- last_slot past it (compare-and-set on the row: a concurrent scheduler waits for the row
-- lock, then finds last_slot moved and stores nothing) and inserts its task; the unique index
-- on (schedule, slot) refuses a second task for one slot whatever happens to the schedule row.
ALTER TABLE {schema}.mqs_tasks ADD COLUMN schedule TEXT;
ALTER TABLE {schema}.mqs_tasks ADD COLUMN slot DOUBLE PRECISION;
CREATE UNIQUE INDEX mqs_tasks_slot ON {schema}.mqs_tasks (schedule, slot) WHERE schedule IS NOT NULL;
CREATE TABLE {schema}.mqs_schedules (
    name       TEXT PRIMARY KEY,
    expression TEXT NOT NULL,
    last_slot  DOUBLE PRECISION NOT NULL,
    next_slot  DOUBLE PRECISION,
    last_task  BIGINT,
    seen_at    DOUBLE PRECISION NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
