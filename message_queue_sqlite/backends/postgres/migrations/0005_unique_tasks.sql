-- 0005: unique tasks (as SQLite's migration 0006). A task sent with a unique key holds it
-- while its state, coalesce(outcome, status) (an ended task counts by how it ended, whether
-- or not its callback ran), is in its unique_states bitmask, until unique_until (server
-- epoch seconds; NULL: no limit) has passed: then a send of the same key first sets the
-- holder's unique_states to 0 in its own transaction. The partial UNIQUE index makes a
-- second holder impossible: a concurrent insert of the same key waits for the first
-- transaction and then conflicts (READ COMMITTED), so no lock is ever taken beforehand.
ALTER TABLE {schema}.mqs_tasks ADD COLUMN unique_key TEXT;
ALTER TABLE {schema}.mqs_tasks ADD COLUMN unique_states INTEGER NOT NULL DEFAULT 0;
ALTER TABLE {schema}.mqs_tasks ADD COLUMN unique_until DOUBLE PRECISION;
CREATE UNIQUE INDEX mqs_tasks_unique ON {schema}.mqs_tasks (unique_key)
    WHERE unique_key IS NOT NULL AND ((unique_states >> coalesce(outcome, status)) & 1) = 1;
