-- 0006: unique tasks. A task sent with a unique key holds it while its state is one of its
-- unique_states (a bitmask: bit s set, state s held; the state is coalesce(outcome, status),
-- so an ended task counts by how it ended, whether or not its callback ran, and a removed
-- row's tombstone, status 0, holds nothing), until unique_until (the wall clock, as
-- run_after; NULL: no limit) has passed: then a send of the same key first sets the
-- holder's unique_states to 0, in its own transaction. The partial UNIQUE index below makes
-- a second holder impossible, whoever inserts it; rows without a key are not in it, so a
-- task sent without a key costs the index nothing but the predicate's first test.
ALTER TABLE mqs_tasks ADD COLUMN unique_key TEXT;
ALTER TABLE mqs_tasks ADD COLUMN unique_states INTEGER NOT NULL DEFAULT 0;
ALTER TABLE mqs_tasks ADD COLUMN unique_until REAL;
CREATE UNIQUE INDEX mqs_tasks_unique ON mqs_tasks (unique_key)
    WHERE unique_key IS NOT NULL AND ((unique_states >> coalesce(outcome, status)) & 1) = 1;
