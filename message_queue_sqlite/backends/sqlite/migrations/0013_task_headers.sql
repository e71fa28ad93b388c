-- 0013: a task's headers: string pairs (JSON) a sender's hooks attach to it and a worker's hooks
-- read when it runs (a trace context linking the send to the run, say); not its arguments.
ALTER TABLE mqs_tasks ADD COLUMN headers TEXT;
