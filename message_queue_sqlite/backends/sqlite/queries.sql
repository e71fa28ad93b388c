-- Every statement the SQLite backend runs. Each block: "-- name: NAME", one line that
-- says what it is for, then the SQL. Parameters are positional (?1, ?2, ...).

-- name: enqueue
-- Store one new task (executemany for a batch).
INSERT INTO mqs_tasks (task_name, args, priority, status, sender, notify, cache_owner,
                       max_retries, retry, run_after, created_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11);

-- name: enqueue_plain
-- Store one new ready task with no cached arguments, retries or delay (most sends): the other columns keep their defaults, and five fewer values to bind cost 2 µs less per row.
INSERT INTO mqs_tasks (task_name, args, priority, status, sender, notify, created_at)
VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6);

-- name: last_row_id
-- The row id of the last insert of this connection (a batch's ids are consecutive up to it).
SELECT last_insert_rowid();

-- name: promote_due
-- Scheduled tasks whose run-after time has come become ready.
UPDATE mqs_tasks SET status = 1 WHERE status = 6 AND run_after <= ?1;

-- name: probe_claimable
-- Read-only: is anything ready for owner ?1, is any scheduled task due at ?2? Idle workers never take the write lock for nothing.
SELECT EXISTS (SELECT 1 FROM mqs_tasks WHERE status = 1 AND (cache_owner IS NULL OR cache_owner = ?1)),
       EXISTS (SELECT 1 FROM mqs_tasks WHERE status = 6 AND run_after <= ?2);

-- name: claim_batch
-- Lease up to ?4 ready tasks (best priority, then oldest) to owner ?1 until ?2; cached tasks only to their owner.
UPDATE mqs_tasks
   SET status = 2, lease_owner = ?1, lease_expires = ?2, attempts = attempts + 1, started_at = ?3
 WHERE id IN (SELECT id FROM mqs_tasks
               WHERE status = 1 AND (cache_owner IS NULL OR cache_owner = ?1)
               ORDER BY priority DESC, id LIMIT ?4)
RETURNING id, task_name, args, priority, attempts, max_retries, retry, sender, notify,
          cache_owner, created_at, started_at;

-- name: complete
-- End one attempt (FINISHED/FAILED, or SCHEDULED for a retry) unless the lease was lost since (fenced by attempt and owner ?9); ?10 = 1: the sender got the outcome in memory, so it need not look for it (notify = 0).
UPDATE mqs_tasks
   SET status = ?3, notify = CASE WHEN ?10 THEN 0 ELSE notify END,
       outcome = CASE WHEN ?3 IN (3, 4) THEN ?3 END,
       result = ?4, traceback = ?5,
       ended_at = CASE WHEN ?3 IN (3, 4) THEN ?6 END,
       run_after = ?7, started_at = ?8, lease_owner = NULL, lease_expires = NULL
 WHERE id = ?1 AND attempts = ?2 AND status = 2 AND lease_owner = ?9;

-- name: complete_finished
-- The same as complete for a task that FINISHED (no traceback, no retry time): fewer values to bind per row. ?4 = 1: handed over in memory.
UPDATE mqs_tasks
   SET status = 3, notify = CASE WHEN ?4 THEN 0 ELSE notify END, outcome = 3, result = ?3,
       traceback = NULL, ended_at = ?5, run_after = 0, started_at = ?6, lease_owner = NULL,
       lease_expires = NULL
 WHERE id = ?1 AND attempts = ?2 AND status = 2 AND lease_owner = ?7;

-- name: release
-- Give a lease back at once (graceful stop); ?3 is 1 when the task never started, so that claim is not counted.
UPDATE mqs_tasks
   SET status = 1, attempts = attempts - ?3, lease_owner = NULL, lease_expires = NULL
 WHERE id = ?1 AND attempts = ?2 AND status = 2;

-- name: renew_leases
-- Extend every lease held by owner ?1 to ?2.
UPDATE mqs_tasks SET lease_expires = ?2 WHERE status = 2 AND lease_owner = ?1;

-- name: fail_orphaned_cached
-- Cached tasks whose owning node is gone can never run: FAILED, with the reason.
UPDATE mqs_tasks
   SET status = 4, outcome = 4, ended_at = ?1, lease_owner = NULL, lease_expires = NULL,
       result = 'the process that sent this cache-mode task ended before it ran; its arguments lived only in that process''s memory'
 WHERE cache_owner IS NOT NULL AND status IN (1, 2, 6)
   AND cache_owner NOT IN (SELECT node_id FROM mqs_nodes WHERE expires_at > ?1)
RETURNING id;

-- name: recover_expired
-- Leases that expired (their worker died): run again, or FAILED once the crash limit ?2 is reached.
UPDATE mqs_tasks
   SET crashes = crashes + 1,
       status = CASE WHEN crashes + 1 >= ?2 THEN 4 ELSE 1 END,
       outcome = CASE WHEN crashes + 1 >= ?2 THEN 4 END,
       ended_at = CASE WHEN crashes + 1 >= ?2 THEN ?1 END,
       result = CASE WHEN crashes + 1 >= ?2
                THEN 'the worker running this task died ' || (crashes + 1) || ' times (lease expired); crash limit reached'
                ELSE result END,
       lease_owner = NULL, lease_expires = NULL
 WHERE status = 2 AND lease_expires < ?1
RETURNING status;

-- name: next_run_after
-- When the earliest scheduled task becomes ready.
SELECT min(run_after) FROM mqs_tasks WHERE status = 6;

-- name: outcome_row_ids
-- Row ids of ended tasks of sender ?1 whose callback has not run yet.
SELECT id FROM mqs_tasks WHERE sender = ?1 AND notify = 1 AND status IN (3, 4) LIMIT ?2;

-- name: mark_callbacked
-- The sender's callback ran for these tasks (?1: a JSON array of row ids; one statement per batch).
UPDATE mqs_tasks SET status = 5 WHERE id IN (SELECT value FROM json_each(?1)) AND status IN (3, 4);

-- name: get_task
-- One task by its row id.
SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
       sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at
  FROM mqs_tasks WHERE id = ?1;

-- name: list_tasks
-- Newest tasks, optionally of status ?1 (3 or 4 also match CALLBACKED rows with that outcome) and name ?2.
SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
       sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at
  FROM mqs_tasks
 WHERE (?1 IS NULL OR status = ?1 OR (status = 5 AND outcome = ?1))
   AND (?2 IS NULL OR task_name = ?2)
 ORDER BY id DESC LIMIT ?3;

-- name: count_by_status
-- Number of tasks in each status.
SELECT status, count(*) FROM mqs_tasks GROUP BY status;

-- name: ended_timings
-- Created, started and ended times of the newest ended tasks (latency summaries).
SELECT created_at, started_at, ended_at FROM mqs_tasks
 WHERE ended_at IS NOT NULL ORDER BY id DESC LIMIT ?1;

-- name: count_waiting
-- Tasks waiting to run (ready or scheduled), counted on their partial indexes.
SELECT (SELECT count(*) FROM mqs_tasks WHERE status = 1) + (SELECT count(*) FROM mqs_tasks WHERE status = 6);

-- name: requeue_failed
-- FAILED tasks (by row id ?1 and/or name ?2) run again with a fresh retry budget; cached ones cannot.
UPDATE mqs_tasks
   SET status = 1, outcome = NULL, result = NULL, traceback = NULL, attempts = 0, crashes = 0,
       ended_at = NULL, started_at = NULL, run_after = ?3
 WHERE (status = 4 OR (status = 5 AND outcome = 4)) AND cache_owner IS NULL
   AND (?1 IS NULL OR id = ?1) AND (?2 IS NULL OR task_name = ?2);

-- name: register_node
-- A queue object is alive until ?4 (its cached arguments and leases depend on it).
INSERT INTO mqs_nodes (node_id, pid, host, started_at, expires_at) VALUES (?1, ?2, ?3, ?5, ?4)
ON CONFLICT (node_id) DO UPDATE SET expires_at = excluded.expires_at;

-- name: unregister_node
-- A queue object stopped.
DELETE FROM mqs_nodes WHERE node_id = ?1;

-- name: forget_dead_nodes
-- Drop liveness rows long expired.
DELETE FROM mqs_nodes WHERE expires_at < ?1;

-- name: purge_window
-- Read-only, for the retention purge: over the ?3 rows after row id ?1, the last id, how many ended before ?2, and the oldest creation time.
SELECT max(id), sum(ended_at < ?2), min(created_at)
  FROM (SELECT id, ended_at, created_at FROM mqs_tasks WHERE id > ?1 ORDER BY id LIMIT ?3);

-- name: purge_ended
-- Delete the tasks that ended before ?1 among row ids ?2 < id <= ?3 (one window); never the newest row, so row ids are never reused.
DELETE FROM mqs_tasks
 WHERE id > ?2 AND id <= ?3 AND ended_at < ?1 AND id < (SELECT max(id) FROM mqs_tasks);
