-- 0008: cancellation (as SQLite's migration 0009): status CANCELLED (7, outcome 7); a
-- RUNNING task's cancel_requested (1: asked, 2: seen by its worker) on a small index its
-- worker polls; cancelled tasks reach callbacks and the retention purge like ended ones.
ALTER TABLE {schema}.mqs_tasks ADD COLUMN cancel_requested SMALLINT NOT NULL DEFAULT 0;
CREATE INDEX mqs_tasks_cancelling ON {schema}.mqs_tasks (lease_owner) WHERE status = 2 AND cancel_requested = 1;
DROP INDEX {schema}.mqs_tasks_notify;
CREATE INDEX mqs_tasks_notify ON {schema}.mqs_tasks (sender) WHERE notify AND status IN (3, 4, 7);
DROP INDEX {schema}.mqs_tasks_ended;
CREATE INDEX mqs_tasks_ended ON {schema}.mqs_tasks (ended_at) WHERE status IN (3, 4, 5, 7);
CREATE INDEX mqs_tasks_cancelled ON {schema}.mqs_tasks (id) WHERE outcome = 7;
