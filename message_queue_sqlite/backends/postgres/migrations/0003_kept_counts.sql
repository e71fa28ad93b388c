-- 0003: counts a dashboard can poll every second at millions of rows, and an index for the
-- failed (dead-letter) listing.
-- Every statement that inserts, updates or deletes tasks appends what it changed, per
-- (status, outcome), to mqs_count_deltas: one statement-level trigger per kind of change,
-- reading the statement's transition tables, so no statement can forget to count and no
-- row-level trigger runs per task. Appending takes no lock that another session waits for
-- (one counter row updated by every worker would serialize them all); maintenance folds the
-- deltas into mqs_counts now and then. Readers add the two.
CREATE TABLE {schema}.mqs_counts (
    status  INTEGER NOT NULL,
    outcome INTEGER NOT NULL,  -- 3 or 4 once ended, else 0
    n       BIGINT  NOT NULL,
    PRIMARY KEY (status, outcome)
);
CREATE TABLE {schema}.mqs_count_deltas (
    status  INTEGER NOT NULL,
    outcome INTEGER NOT NULL,
    n       BIGINT  NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 1000);
INSERT INTO {schema}.mqs_counts (status, outcome, n)
SELECT status, coalesce(outcome, 0), count(*) FROM {schema}.mqs_tasks GROUP BY 1, 2;

CREATE FUNCTION {schema}.mqs_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {schema}.mqs_count_deltas (status, outcome, n)
    SELECT status, coalesce(outcome, 0), count(*) FROM new_rows GROUP BY 1, 2;
    RETURN NULL;
END $$;
CREATE FUNCTION {schema}.mqs_count_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {schema}.mqs_count_deltas (status, outcome, n)
    SELECT status, outcome, sum(n) FROM (
        SELECT status, coalesce(outcome, 0) AS outcome, 1 AS n FROM new_rows
        UNION ALL
        SELECT status, coalesce(outcome, 0), -1 FROM old_rows) AS moved
     GROUP BY 1, 2 HAVING sum(n) <> 0;
    RETURN NULL;
END $$;
CREATE FUNCTION {schema}.mqs_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {schema}.mqs_count_deltas (status, outcome, n)
    SELECT status, coalesce(outcome, 0), -count(*) FROM old_rows GROUP BY 1, 2;
    RETURN NULL;
END $$;
CREATE TRIGGER mqs_count_inserted AFTER INSERT ON {schema}.mqs_tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.mqs_count_inserted();
CREATE TRIGGER mqs_count_updated AFTER UPDATE ON {schema}.mqs_tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.mqs_count_updated();
CREATE TRIGGER mqs_count_deleted AFTER DELETE ON {schema}.mqs_tasks
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.mqs_count_deleted();

-- failed tasks, newest first, whether or not their callback ran (failures are rare: the
-- index costs nothing on the path of a task that finishes)
CREATE INDEX mqs_tasks_failed ON {schema}.mqs_tasks (id) WHERE outcome = 4;
