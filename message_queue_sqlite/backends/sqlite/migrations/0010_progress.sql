-- 0010: a running task's progress, as it last reported it (JSON: done, total, message, at),
-- written by its worker at most a few times a second (batched), fenced by owner and attempt.
ALTER TABLE mqs_tasks ADD COLUMN progress TEXT;
