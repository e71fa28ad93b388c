-- 0004: counts a dashboard can poll every second at millions of rows, and an index for the
-- failed (dead-letter) listing.
-- mqs_counts holds, per (status, outcome), the tasks in the states a task stays in: SCHEDULED
-- (6, 0), FINISHED (3, 3), FAILED (4, 4), CALLBACKED (5, 3) and (5, 4), and the rows ever
-- removed (0, 0). The statements that move a task into or out of those states update it in
-- the same transaction. The two states every task passes through quickly are not kept, so
-- the hottest statements (a send, a claim) write nothing more: RUNNING is counted on its
-- partial index (at most the leases held), and NOT_STARTED is what is left of every row
-- ever stored (row ids are consecutive and never reused: max(id) of them).
CREATE TABLE mqs_counts (
    status  INTEGER NOT NULL,
    outcome INTEGER NOT NULL,
    n       INTEGER NOT NULL,
    PRIMARY KEY (status, outcome)
) WITHOUT ROWID;
INSERT INTO mqs_counts (status, outcome, n)
SELECT k.status, k.outcome,
       CASE WHEN k.status = 0
            THEN coalesce((SELECT max(id) FROM mqs_tasks), 0) - (SELECT count(*) FROM mqs_tasks)
            ELSE (SELECT count(*) FROM mqs_tasks t
                   WHERE t.status = k.status AND coalesce(t.outcome, 0) = k.outcome) END
  FROM (SELECT 6 AS status, 0 AS outcome UNION ALL SELECT 3, 3 UNION ALL SELECT 4, 4
        UNION ALL SELECT 5, 3 UNION ALL SELECT 5, 4 UNION ALL SELECT 0, 0) AS k;
-- failed tasks, newest first, whether or not their callback ran (failures are rare: the
-- index costs nothing on the path of a task that finishes)
CREATE INDEX mqs_tasks_failed ON mqs_tasks (id) WHERE outcome = 4;
