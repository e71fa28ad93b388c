-- 0003: a task's retries used, counted apart from its claims (attempts, the lease's fencing
-- token, now only grows: a give-back or a requeue no longer takes it back); and a place for
-- the boot whose clock lease and node expiries are on (they move from the wall clock to the
-- host's boot clock, see clock.py).
ALTER TABLE mqs_tasks ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
-- Tasks still to run keep the budget they had: every claim that neither crashed nor is the
-- one running now ended in a scheduled retry (a started give-back counted too: erring on
-- fewer retries, never more).
UPDATE mqs_tasks SET retries = max(attempts - crashes - (status = 2), 0) WHERE status IN (1, 2, 6);
-- key 'boot_id': written by the first opener of each boot; none yet, so the first opener
-- expires the leases and liveness rows written on the wall clock by older versions
CREATE TABLE mqs_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
