-- 0009: cancellation. A new status, CANCELLED (7; outcome 7, kept when the callback has run).
-- A waiting task is cancelled in place (it never starts); a RUNNING one (leased, maybe still
-- in its worker's buffer) gets cancel_requested = 1, which its worker finds on the small
-- index below, answers (an unstarted one ends CANCELLED, a running one is asked to stop and
-- the request is marked seen, 2) and a lease recovered with a request pending ends
-- CANCELLED instead of running again. Cancelled tasks reach their senders' callbacks like
-- ended ones: the notify index now includes them.
ALTER TABLE mqs_tasks ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
CREATE INDEX mqs_tasks_cancelling ON mqs_tasks (lease_owner) WHERE status = 2 AND cancel_requested = 1;
DROP INDEX mqs_tasks_notify;
CREATE INDEX mqs_tasks_notify ON mqs_tasks (sender) WHERE notify = 1 AND status IN (3, 4, 7);
-- the kept counts of the new state (no task was cancelled before this migration)
INSERT INTO mqs_counts (status, outcome, n) VALUES (7, 7, 0), (5, 7, 0);
-- cancelled tasks, newest first (the dashboard's page of them), as the failed index
CREATE INDEX mqs_tasks_cancelled ON mqs_tasks (id) WHERE outcome = 7;
