-- 0008: a send's own timeout (seconds a run may take; NULL: the task's or the worker's
-- setting, if any), read back by the claim with the periodic slot, for the task's context.
ALTER TABLE mqs_tasks ADD COLUMN timeout REAL;
