-- 0009: a running task's progress (as SQLite's migration 0010), as it last reported it (JSON
-- text: done, total, message, at), written by its worker in batches, fenced by owner and attempt.
ALTER TABLE {schema}.mqs_tasks ADD COLUMN progress TEXT;
