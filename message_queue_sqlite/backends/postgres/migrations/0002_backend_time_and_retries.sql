-- 0002: a task's retries used, counted apart from its claims (attempts, the lease's fencing
-- token, now only grows: a give-back or a requeue no longer takes it back). Every time is now
-- the server's (queries.sql); stored times were epoch seconds already and stay comparable.
ALTER TABLE {schema}.mqs_tasks ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
-- Tasks still to run keep the budget they had: every claim that neither crashed nor is the
-- one running now ended in a scheduled retry (a started give-back counted too: erring on
-- fewer retries, never more).
UPDATE {schema}.mqs_tasks SET retries = greatest(attempts - crashes - CASE WHEN status = 2 THEN 1 ELSE 0 END, 0)
 WHERE status IN (1, 2, 6);
