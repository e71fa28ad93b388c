-- Every statement the SQLite backend runs. Each block: "-- name: NAME", one line that
-- says what it is for, then the SQL. Parameters are positional (?1, ?2, ...).
-- Clock readings come from the backend, never from a parameter: mqs_lease_now() (the host's
-- boot clock: lease and node expiries) and mqs_wall_now() (the wall clock: scheduled times,
-- end stamps), each read once per statement after it took the write lock (clock.py).

-- name: enqueue
-- Store one new task in queue ?11 with timeout ?12 and headers ?13 (executemany for a batch); a delay ?9 > 0 (seconds) schedules it that long from now.
INSERT INTO mqs_tasks (task_name, args, priority, status, sender, notify, cache_owner,
                       max_retries, retry, run_after, created_at, queue, timeout, headers)
VALUES (?1, ?2, ?3, CASE WHEN ?9 > 0 THEN 6 ELSE 1 END, ?4, ?5, ?6, ?7, ?8,
        CASE WHEN ?9 > 0 THEN mqs_wall_now() + ?9 ELSE 0 END, ?10, ?11, ?12, ?13);

-- name: enqueue_plain
-- Store one new ready task in queue ?7 with no cached arguments, retries, delay, timeout or headers of its own (most sends): the other columns keep their defaults, and five fewer values to bind cost 2 µs less per row.
INSERT INTO mqs_tasks (task_name, args, priority, status, sender, notify, created_at, queue)
VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7);

-- name: enqueue_in_transaction
-- Store one new task through the application's own connection, in its open transaction (Config.database): no function of ours exists there, so a delayed task's run-after time ?9 comes from this process's wall clock (0: ready now).
INSERT INTO mqs_tasks (task_name, args, priority, status, sender, notify, max_retries, retry,
                       run_after, created_at, queue, timeout, headers)
VALUES (?1, ?2, ?3, CASE WHEN ?9 > 0 THEN 6 ELSE 1 END, ?4, ?5, ?6, ?7, ?9, ?8, ?10, ?11, ?12);

-- name: database_file
-- The file of a connection's main database (to check an application's connection is to the queue's database).
SELECT file FROM pragma_database_list WHERE name = 'main';

-- name: enqueue_unique
-- Store one new task (in queue ?14, with timeout ?15 and headers ?16) holding unique key ?11 in the states of bitmask ?12 for ?13 seconds from now (NULL: no limit), unless a stored task holds that key: then nothing is stored (changes() = 0) and no row id is used.
INSERT INTO mqs_tasks (task_name, args, priority, status, sender, notify, cache_owner,
                       max_retries, retry, run_after, created_at, unique_key, unique_states, unique_until,
                       queue, timeout, headers)
VALUES (?1, ?2, ?3, CASE WHEN ?9 > 0 THEN 6 ELSE 1 END, ?4, ?5, ?6, ?7, ?8,
        CASE WHEN ?9 > 0 THEN mqs_wall_now() + ?9 ELSE 0 END, ?10, ?11, ?12,
        CASE WHEN ?13 IS NOT NULL THEN mqs_wall_now() + ?13 END, ?14, ?15, ?16)
ON CONFLICT (unique_key)
   WHERE unique_key IS NOT NULL AND ((unique_states >> coalesce(outcome, status)) & 1) = 1
DO NOTHING;

-- name: release_expired_unique
-- Before a send of unique key ?1, in its transaction: a holder whose unique_for ran out (by the wall clock) holds it no longer, for good (unique_states 0), on the unique index.
UPDATE mqs_tasks SET unique_states = 0
 WHERE unique_key = ?1 AND ((unique_states >> coalesce(outcome, status)) & 1) = 1
   AND unique_until <= mqs_wall_now();

-- name: unique_holder
-- The row id of the task that holds unique key ?1 (at most one: the unique index), on that index.
SELECT id FROM mqs_tasks
 WHERE unique_key = ?1 AND ((unique_states >> coalesce(outcome, status)) & 1) = 1;

-- name: last_row_id
-- The row id of the last insert of this connection (a batch's ids are consecutive up to it).
SELECT last_insert_rowid();

-- name: promote_due
-- Scheduled tasks whose run-after time has come become ready.
UPDATE mqs_tasks SET status = 1 WHERE status = 6 AND run_after <= mqs_wall_now();

-- name: probe_claimable
-- Read-only: is anything ready in queue ?2 for owner ?1, is any scheduled task due? Idle workers never take the write lock for nothing.
SELECT EXISTS (SELECT 1 FROM mqs_tasks
                WHERE status = 1 AND queue = ?2 AND (cache_owner IS NULL OR cache_owner = ?1)),
       EXISTS (SELECT 1 FROM mqs_tasks WHERE status = 6 AND run_after <= mqs_wall_now());

-- name: claim_batch
-- Lease up to ?3 ready tasks of queue ?4 (best priority, then oldest, on the ready index) to owner ?1 for ?2 seconds; cached tasks only to their owner; each claim is a new attempt (the fencing token only grows). A task name with a concurrency limit (mqs_limits) gets no more than its room (the limit less its RUNNING rows, counted on the running index): names with no room are skipped by the scan, and of the others at most their room is taken.
UPDATE mqs_tasks
   SET status = 2, lease_owner = ?1, lease_expires = mqs_lease_now() + ?2, attempts = attempts + 1,
       started_at = mqs_wall_now()
 WHERE id IN (
    WITH room AS (
        SELECT l.task_name, l.max_running - (SELECT count(*) FROM mqs_tasks AS r INDEXED BY mqs_tasks_running
                                              WHERE r.status = 2 AND r.task_name = l.task_name) AS n
          FROM mqs_limits AS l),
    candidates AS (
        SELECT id, task_name, priority FROM mqs_tasks
         WHERE status = 1 AND queue = ?4 AND (cache_owner IS NULL OR cache_owner = ?1)
           AND task_name NOT IN (SELECT task_name FROM room WHERE n <= 0)
         ORDER BY priority DESC, id LIMIT ?3)
    SELECT id FROM (
        SELECT c.id, room.n AS room,
               row_number() OVER (PARTITION BY c.task_name ORDER BY c.priority DESC, c.id) AS nth
          FROM candidates AS c LEFT JOIN room ON room.task_name = c.task_name)
     WHERE room IS NULL OR nth <= room)
RETURNING id, task_name, args, priority, attempts, max_retries, retry, sender, notify,
          cache_owner, created_at, started_at, retries, slot, timeout, rate_slot, headers;

-- name: complete
-- End one attempt (FINISHED/FAILED, or SCHEDULED for a retry ?7 seconds from now, which uses one retry) unless the lease was lost since (fenced by attempt and owner ?9); ?10 = 1: the sender got the outcome in memory, so it need not look for it (notify = 0).
UPDATE mqs_tasks
   SET status = ?3, notify = CASE WHEN ?10 THEN 0 ELSE notify END,
       outcome = CASE WHEN ?3 IN (3, 4, 7) THEN ?3 END,
       result = ?4, traceback = ?5,
       ended_at = CASE WHEN ?3 IN (3, 4, 7) THEN ?6 END,
       run_after = CASE WHEN ?3 = 6 THEN mqs_wall_now() + ?7 ELSE 0 END,
       retries = retries + (?3 = 6),
       started_at = ?8, lease_owner = NULL, lease_expires = NULL
 WHERE id = ?1 AND attempts = ?2 AND status = 2 AND lease_owner = ?9;

-- name: complete_finished
-- The same as complete for a task that FINISHED (no traceback, no retry time): fewer values to bind per row. ?4 = 1: handed over in memory.
UPDATE mqs_tasks
   SET status = 3, notify = CASE WHEN ?4 THEN 0 ELSE notify END, outcome = 3, result = ?3,
       traceback = NULL, ended_at = ?5, run_after = 0, started_at = ?6, lease_owner = NULL,
       lease_expires = NULL
 WHERE id = ?1 AND attempts = ?2 AND status = 2 AND lease_owner = ?7;

-- name: release
-- Give owner ?3's lease (attempt ?2) back at once (graceful stop): ready again, counting neither a retry nor a crash; the attempt stays counted (the fencing token never goes back).
UPDATE mqs_tasks
   SET status = 1, lease_owner = NULL, lease_expires = NULL
 WHERE id = ?1 AND attempts = ?2 AND status = 2 AND lease_owner = ?3;

-- name: renew_leases
-- Extend the leases ?2 (a JSON array of [row id, attempt]) that owner ?1 still holds to ?3 seconds from now; returns the row ids extended. Each lease is found by its row id (unary + keeps the planner off the owner's index, which would rescan the list for every row the owner holds).
UPDATE mqs_tasks SET lease_expires = mqs_lease_now() + ?3
  FROM json_each(?2) AS held
 WHERE mqs_tasks.id = json_extract(held.value, '$[0]')
   AND mqs_tasks.attempts = json_extract(held.value, '$[1]')
   AND +mqs_tasks.status = 2 AND +mqs_tasks.lease_owner = ?1
RETURNING id;

-- name: count_orphaned_scheduled
-- How many of the tasks fail_orphaned_cached is about to fail are SCHEDULED (for the kept counts; same transaction).
SELECT count(*) FROM mqs_tasks INDEXED BY mqs_tasks_cached
 WHERE cache_owner IS NOT NULL AND status IN (1, 2, 6) AND +status = 6
   AND cache_owner NOT IN (SELECT node_id FROM mqs_nodes WHERE expires_at > mqs_lease_now());

-- name: fail_orphaned_cached
-- Cached tasks whose owning node is gone can never run: FAILED, with the reason.
UPDATE mqs_tasks
   SET status = 4, outcome = 4, ended_at = mqs_wall_now(), lease_owner = NULL, lease_expires = NULL,
       result = 'the process that sent this cache-mode task ended before it ran; its arguments lived only in that process''s memory'
 WHERE cache_owner IS NOT NULL AND status IN (1, 2, 6)
   AND cache_owner NOT IN (SELECT node_id FROM mqs_nodes WHERE expires_at > mqs_lease_now())
RETURNING id;

-- name: recover_expired
-- Leases that expired (their worker died): run again, or FAILED once the crash limit ?1 is reached, or CANCELLED if a cancel was requested.
UPDATE mqs_tasks
   SET crashes = crashes + 1,
       status = CASE WHEN cancel_requested > 0 THEN 7 WHEN crashes + 1 >= ?1 THEN 4 ELSE 1 END,
       outcome = CASE WHEN cancel_requested > 0 THEN 7 WHEN crashes + 1 >= ?1 THEN 4 END,
       ended_at = CASE WHEN cancel_requested > 0 OR crashes + 1 >= ?1 THEN mqs_wall_now() END,
       result = CASE WHEN cancel_requested > 0
                THEN 'cancelled (its worker died with the cancel pending)'
                WHEN crashes + 1 >= ?1
                THEN 'the worker running this task died ' || (crashes + 1) || ' times (lease expired); crash limit reached'
                ELSE result END,
       lease_owner = NULL, lease_expires = NULL
 WHERE status = 2 AND lease_expires < mqs_lease_now()
RETURNING status;

-- name: seconds_until_due
-- Seconds until the earliest scheduled task becomes ready (NULL: none is scheduled).
SELECT (SELECT min(run_after) FROM mqs_tasks WHERE status = 6) - mqs_wall_now();

-- name: outcome_row_ids
-- Row ids of ended tasks of sender ?1 whose callback has not run yet.
SELECT id FROM mqs_tasks WHERE sender = ?1 AND notify = 1 AND status IN (3, 4, 7) LIMIT ?2;

-- name: mark_callbacked
-- The sender's callback ran for these tasks (?1: a JSON array of row ids; one statement per batch); returns each one's outcome (for the kept counts).
UPDATE mqs_tasks SET status = 5 WHERE id IN (SELECT value FROM json_each(?1)) AND status IN (3, 4, 7)
RETURNING outcome;

-- name: get_task
-- One task by its row id (a removed one's tombstone, status 0, is not a task).
SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
       sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at,
       queue
  FROM mqs_tasks WHERE id = ?1 AND status <> 0;

-- name: list_recent
-- The newest tasks (of name ?2 and queue ?4 if not NULL), walking the primary key back from the newest row.
SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
       sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at,
       queue
  FROM mqs_tasks
 WHERE status <> 0 AND (?2 IS NULL OR task_name = ?2)
   AND (?4 IS NULL OR queue = ?4)
 ORDER BY id DESC LIMIT ?3;

-- name: list_ready
-- Ready tasks of queue ?4 (and of name ?2) in the order they will be claimed, on the ready index.
SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
       sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at,
       queue
  FROM mqs_tasks
 WHERE status = 1 AND queue = ?4 AND (?2 IS NULL OR task_name = ?2)
 ORDER BY priority DESC, id LIMIT ?3;

-- name: list_scheduled
-- Scheduled tasks (of name ?2, of queue ?4) in the order they become ready, on the scheduled index.
SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
       sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at,
       queue
  FROM mqs_tasks
 WHERE status = 6 AND (?2 IS NULL OR task_name = ?2)
   AND (?4 IS NULL OR queue = ?4)
 ORDER BY run_after, id LIMIT ?3;

-- name: list_running
-- Running tasks (of name ?2, of queue ?4), newest first, on the running index (at most the leases held).
SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
       sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at,
       queue
  FROM mqs_tasks INDEXED BY mqs_tasks_running
 WHERE status = 2 AND (?2 IS NULL OR task_name = ?2)
   AND (?4 IS NULL OR queue = ?4)
 ORDER BY id DESC LIMIT ?3;

-- name: list_failed
-- Failed tasks (of name ?2, of queue ?4), whether or not their callback ran, newest first, on the failed index.
SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
       sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at,
       queue
  FROM mqs_tasks
 WHERE outcome = 4 AND (?2 IS NULL OR task_name = ?2)
   AND (?4 IS NULL OR queue = ?4)
 ORDER BY id DESC LIMIT ?3;

-- name: list_ended_as
-- Tasks of status ?1 (3: FINISHED, with those whose callback ran; 5: CALLBACKED) name ?2 and queue ?4, newest first, walking the primary key back from the newest row (most ended tasks finished: no index is kept on every completion for this).
SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
       sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at,
       queue
  FROM mqs_tasks
 WHERE (status = ?1 OR (?1 = 3 AND status = 5 AND outcome = 3)) AND (?2 IS NULL OR task_name = ?2)
   AND (?4 IS NULL OR queue = ?4)
 ORDER BY id DESC LIMIT ?3;

-- name: count_tasks
-- One snapshot: the kept counts (migration 0004 says which), the running tasks on their index, and the largest row id (every row ever stored: the rest are ready). Status -1 carries max(id).
SELECT status, outcome, n FROM mqs_counts
UNION ALL SELECT 2, 0, (SELECT count(*) FROM mqs_tasks WHERE status = 2)
UNION ALL SELECT -1, 0, coalesce((SELECT max(id) FROM mqs_tasks), 0);

-- name: add_to_count
-- Move the kept count of (status ?1, outcome ?2) by ?3, in the transaction that moved the tasks.
UPDATE mqs_counts SET n = n + ?3 WHERE status = ?1 AND outcome = ?2;

-- name: ended_timings
-- Created, started and ended times of the newest ended tasks (latency summaries), among the newest ?2 rows only: a backlog sent after them bounds the walk instead of making it the whole table.
SELECT created_at, started_at, ended_at FROM mqs_tasks
 WHERE id > (SELECT max(id) FROM mqs_tasks) - ?2 AND ended_at IS NOT NULL ORDER BY id DESC LIMIT ?1;

-- name: requeue_failed_by_id
-- Task ?1, if it is of status ?3 (4: FAILED, or 5: its callback ran) with outcome FAILED (and of name ?2, if not NULL), runs again with a fresh retry budget (retries and crashes from 0; attempts, the fencing token, kept); a cached one cannot. By primary key. A unique task keeps its key only if it held it while failed (bit 4 of unique_states): otherwise another task may hold the key by now, so it runs without one (unique_states 0).
UPDATE mqs_tasks
   SET status = 1, outcome = NULL, result = NULL, traceback = NULL, retries = 0, crashes = 0,
       ended_at = NULL, started_at = NULL, run_after = 0,
       unique_states = CASE WHEN (unique_states >> 4) & 1 = 1 THEN unique_states ELSE 0 END
 WHERE id = ?1 AND status = ?3 AND outcome = 4 AND cache_owner IS NULL
   AND (?2 IS NULL OR task_name = ?2);

-- name: requeue_failed_all
-- As requeue_failed_by_id for every failed task of status ?3 (and of name ?2, if not NULL), found on the failed index; a unique task runs without its key unless it held it while failed.
UPDATE mqs_tasks
   SET status = 1, outcome = NULL, result = NULL, traceback = NULL, retries = 0, crashes = 0,
       ended_at = NULL, started_at = NULL, run_after = 0,
       unique_states = CASE WHEN (unique_states >> 4) & 1 = 1 THEN unique_states ELSE 0 END
 WHERE outcome = 4 AND +status = ?3 AND cache_owner IS NULL AND (?2 IS NULL OR task_name = ?2);

-- name: register_node
-- A queue object is alive for ?4 more seconds (its cached arguments depend on it); refreshed before that runs out.
INSERT INTO mqs_nodes (node_id, pid, host, started_at, expires_at)
VALUES (?1, ?2, ?3, mqs_wall_now(), mqs_lease_now() + ?4)
ON CONFLICT (node_id) DO UPDATE SET expires_at = excluded.expires_at;

-- name: unregister_node
-- A queue object stopped.
DELETE FROM mqs_nodes WHERE node_id = ?1;

-- name: forget_dead_nodes
-- Drop liveness rows expired for a day.
DELETE FROM mqs_nodes WHERE expires_at < mqs_lease_now() - 86400.0;

-- name: boot_id
-- The boot (kernel boot id) whose boot clock the stored lease and node expiries are on.
SELECT value FROM mqs_meta WHERE key = 'boot_id';

-- name: expire_leases_of_owner
-- The queue object ?1 is known dead (its supervisor saw its process end): its leases expire now, for recover_expired.
UPDATE mqs_tasks SET lease_expires = 0 WHERE status = 2 AND lease_owner = ?1;

-- name: expire_leases_of_boot
-- After a reboot: every lease was taken by a process of the previous boot (all dead), on that boot's clock: expired now.
UPDATE mqs_tasks SET lease_expires = 0 WHERE status = 2;

-- name: expire_nodes_of_boot
-- After a reboot: every queue object of the previous boot is gone.
UPDATE mqs_nodes SET expires_at = 0;

-- name: record_boot
-- The boot ?1 whose clock expiries are on from now.
INSERT INTO mqs_meta (key, value) VALUES ('boot_id', ?1)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: purge_window
-- Read-only, for the retention purge: over the ?3 rows after row id ?1, the last id, how many ended before ?2, and the oldest creation time.
SELECT max(id), sum(ended_at < ?2), min(created_at)
  FROM (SELECT id, ended_at, created_at FROM mqs_tasks WHERE id > ?1 ORDER BY id LIMIT ?3);

-- name: purge_ended
-- Delete the tasks that ended before ?1 among row ids ?2 < id <= ?3 (one window); never the newest row, so row ids are never reused; returns what each was (for the kept counts).
DELETE FROM mqs_tasks
 WHERE id > ?2 AND id <= ?3 AND ended_at < ?1 AND id < (SELECT max(id) FROM mqs_tasks)
RETURNING status, coalesce(outcome, 0);

-- name: newest_row
-- The newest row (id, status, name): a removal never deletes it, so row ids are never reused.
SELECT id, status, task_name FROM mqs_tasks WHERE id = (SELECT max(id) FROM mqs_tasks);

-- name: tombstone
-- Row ?1, the newest, is removed in place: status 0 (no task; never claimed, listed or counted), arguments dropped, ended now so the retention purge deletes it once a newer row exists.
UPDATE mqs_tasks SET status = 0, outcome = NULL, args = NULL, result = NULL, traceback = NULL,
       notify = 0, ended_at = mqs_wall_now()
 WHERE id = ?1;

-- name: remove_waiting_by_id
-- Delete task ?1 if it is waiting (ready or scheduled; of name ?2 if not NULL) and not the newest row, by primary key; returns its status.
DELETE FROM mqs_tasks
 WHERE id = ?1 AND status IN (1, 6) AND (?2 IS NULL OR task_name = ?2)
   AND id < (SELECT max(id) FROM mqs_tasks)
RETURNING status;

-- name: remove_ready
-- Delete the ready tasks (of name ?1; all when NULL) but the newest row, on the ready index.
DELETE FROM mqs_tasks
 WHERE status = 1 AND (?1 IS NULL OR task_name = ?1) AND +id < (SELECT max(id) FROM mqs_tasks);

-- name: remove_scheduled
-- Delete the scheduled tasks (of name ?1; all when NULL) but the newest row, on the scheduled index.
DELETE FROM mqs_tasks
 WHERE status = 6 AND (?1 IS NULL OR task_name = ?1) AND +id < (SELECT max(id) FROM mqs_tasks);

-- name: wall_now
-- The wall clock every scheduler of this folder does its slot arithmetic on.
SELECT mqs_wall_now();

-- name: declare_schedule
-- Store schedule ?1 (expression ?2, its last slot ?3 before the first to run, next ?4) if new; else update its expression; seen now either way.
INSERT INTO mqs_schedules (name, expression, last_slot, next_slot, seen_at, created_at)
VALUES (?1, ?2, ?3, ?4, mqs_wall_now(), mqs_wall_now())
ON CONFLICT (name) DO UPDATE SET expression = excluded.expression, seen_at = excluded.seen_at;

-- name: decide_slots
-- Compare-and-set: schedule ?1's last slot moves from ?2 to ?3 (next ?4); no row changed: another scheduler decided first.
UPDATE mqs_schedules SET last_slot = ?3, next_slot = ?4 WHERE name = ?1 AND last_slot = ?2;

-- name: previous_run_waiting
-- Is schedule ?1's newest task still waiting or running (skip_if_running)? On the primary keys.
SELECT EXISTS (SELECT 1 FROM mqs_tasks
                WHERE id = (SELECT last_task FROM mqs_schedules WHERE name = ?1) AND status IN (1, 2, 6));

-- name: enqueue_slot
-- Store the task of schedule ?8's slot ?9 (ready at once, in queue ?10) unless that slot is stored already (the unique index on schedule and slot); returns its row id, none if it was.
INSERT INTO mqs_tasks (task_name, args, priority, status, sender, notify, max_retries, retry,
                       created_at, schedule, slot, queue)
VALUES (?1, ?2, ?3, 1, ?4, 0, ?5, ?6, ?7, ?8, ?9, ?10)
ON CONFLICT (schedule, slot) WHERE schedule IS NOT NULL DO NOTHING
RETURNING id;

-- name: note_last_task
-- Schedule ?1's newest slot is stored as task ?2.
UPDATE mqs_schedules SET last_task = ?2 WHERE name = ?1;

-- name: list_schedules
-- Every schedule, with the stored status and outcome of its newest slot's task (by primary key).
SELECT s.name, s.expression, s.last_slot, s.next_slot, s.last_task, t.status, t.outcome,
       s.seen_at, s.created_at
  FROM mqs_schedules AS s LEFT JOIN mqs_tasks AS t ON t.id = s.last_task AND t.status <> 0
 ORDER BY s.name;

-- name: remove_schedule
-- Forget schedule ?1 (its stored tasks stay).
DELETE FROM mqs_schedules WHERE name = ?1;

-- name: declare_queue
-- Queue ?1 exists (a task is about to be sent to it): stored once, on the primary key.
INSERT OR IGNORE INTO mqs_queues (name) VALUES (?1);

-- name: list_queues
-- Every queue a task was ever sent to.
SELECT name FROM mqs_queues ORDER BY name;

-- name: count_ready_in_queue
-- Ready tasks of queue ?1, counted on the ready index (a range of it: no table row is read).
SELECT count(*) FROM mqs_tasks WHERE status = 1 AND queue = ?1;

-- name: count_running_by_queue
-- Running tasks per queue, on the running index (at most the leases held).
SELECT queue, count(*) FROM mqs_tasks INDEXED BY mqs_tasks_running WHERE status = 2 GROUP BY queue;

-- name: count_scheduled_by_queue
-- Scheduled tasks per queue, on the scheduled index.
SELECT queue, count(*) FROM mqs_tasks INDEXED BY mqs_tasks_scheduled WHERE status = 6 GROUP BY queue;

-- name: cancel_waiting
-- Cancel waiting task ?1 (ready or scheduled) in place: it never starts; returns its former status (for the kept counts) and whether its sender waits for the outcome.
UPDATE mqs_tasks
   SET status = 7, outcome = 7, ended_at = mqs_wall_now(), result = 'cancelled before it started', run_after = 0
 WHERE id = ?1 AND status IN (1, 6)
RETURNING 1;

-- name: request_cancel
-- Ask the worker holding running task ?1 to stop it (or never start it, if still in its buffer); returns the lease owner.
UPDATE mqs_tasks SET cancel_requested = 1 WHERE id = ?1 AND status = 2 AND cancel_requested = 0
RETURNING lease_owner;

-- name: cancel_state
-- Where task ?1 stands for a cancel in progress: its status, and whether its worker has seen a cancel request.
SELECT status, cancel_requested FROM mqs_tasks WHERE id = ?1;

-- name: waiting_ids_of_name
-- The waiting tasks (ready, then scheduled) of name ?1: the ready ones on each queue's part of the ready index, the scheduled ones on theirs.
SELECT id FROM mqs_tasks WHERE status = 1 AND task_name = ?1
UNION ALL
SELECT id FROM mqs_tasks WHERE status = 6 AND task_name = ?1;

-- name: cancel_requests
-- The running tasks of owner ?1 whose cancel was asked for and not seen yet, on the cancelling index.
SELECT id FROM mqs_tasks WHERE status = 2 AND cancel_requested = 1 AND lease_owner = ?1;

-- name: cancel_seen
-- Owner ?2 has asked running task ?1 to stop (fenced by owner and attempt ?3): the canceller's wait ends.
UPDATE mqs_tasks SET cancel_requested = 2 WHERE id = ?1 AND status = 2 AND lease_owner = ?2 AND attempts = ?3;

-- Dashboard reads (contrib/dashboard): keyset pages that each read at most their LIMIT of
-- rows on an index or a range of the primary key, whatever the table's size. The page's
-- rows carry args (the listing queries above leave it out); ?1.. are the cursor then ?N the
-- LIMIT. A cursor is the sort key of the last row the previous page examined.

-- name: page_recent
-- One page of every task, newest first: row ids below ?1, on the primary key.
SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
       sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at, queue, args
  FROM mqs_tasks
 WHERE id < ?1 AND status <> 0
 ORDER BY id DESC LIMIT ?2;

-- name: page_finished
-- One page of FINISHED tasks (whether or not their callback ran), newest first: row ids below ?1, on the primary key (most ended tasks finished).
SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
       sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at, queue, args
  FROM mqs_tasks
 WHERE id < ?1 AND (status = 3 OR (status = 5 AND outcome = 3))
 ORDER BY id DESC LIMIT ?2;

-- name: page_failed
-- One page of FAILED tasks (whether or not their callback ran), newest first: row ids below ?1, on the failed index.
SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
       sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at, queue, args
  FROM mqs_tasks INDEXED BY mqs_tasks_failed
 WHERE outcome = 4 AND id < ?1
 ORDER BY id DESC LIMIT ?2;

-- name: page_running
-- One page of RUNNING tasks, newest first: row ids below ?1, on the running index (at most the leases held).
SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
       sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at, queue, args
  FROM mqs_tasks INDEXED BY mqs_tasks_running
 WHERE status = 2 AND id < ?1
 ORDER BY id DESC LIMIT ?2;

-- name: page_ready
-- One page of ready tasks of queue ?4 in claim order after (priority ?1, row id ?2): the rest of priority ?1, then lower priorities, two seeks on the ready index.
SELECT * FROM (
    SELECT * FROM (SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
                          sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at,
                          started_at, ended_at, queue, args
                     FROM mqs_tasks WHERE status = 1 AND queue = ?4 AND priority = ?1 AND id > ?2
                    ORDER BY priority DESC, id LIMIT ?3)
    UNION ALL
    SELECT * FROM (SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
                          sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at,
                          started_at, ended_at, queue, args
                     FROM mqs_tasks WHERE status = 1 AND queue = ?4 AND priority < ?1
                    ORDER BY priority DESC, id LIMIT ?3))
 ORDER BY priority DESC, id LIMIT ?3;

-- name: page_scheduled
-- One page of scheduled tasks in the order they become ready after (run_after ?1, row id ?2): the rest of that time, then later ones, two seeks on the scheduled index.
SELECT * FROM (
    SELECT * FROM (SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
                          sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at,
                          started_at, ended_at, queue, args
                     FROM mqs_tasks WHERE status = 6 AND run_after = ?1 AND id > ?2
                    ORDER BY run_after, id LIMIT ?3)
    UNION ALL
    SELECT * FROM (SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
                          sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at,
                          started_at, ended_at, queue, args
                     FROM mqs_tasks WHERE status = 6 AND run_after > ?1
                    ORDER BY run_after, id LIMIT ?3))
 ORDER BY run_after, id LIMIT ?3;

-- name: get_tasks
-- Several tasks by row id (?1: a JSON array), in one statement: a sender's poll reads a
-- batch of outcomes at a time.
SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
       sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at,
       queue
  FROM mqs_tasks WHERE id IN (SELECT value FROM json_each(?1)) AND status <> 0;

-- name: get_task_detail
-- One task by its row id with its arguments and progress (the task page); a removed one's tombstone is not a task.
SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
       sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at, queue, args,
       progress
  FROM mqs_tasks WHERE id = ?1 AND status <> 0;

-- name: recent_ends
-- Created, started and ended times and the outcome of the newest ended tasks that ended at or after ?3 (the dashboard's last hour), among the newest ?2 rows only (a bounded range of the primary key), at most ?1.
SELECT created_at, started_at, ended_at, outcome FROM mqs_tasks
 WHERE id > (SELECT max(id) FROM mqs_tasks) - ?2 AND outcome IS NOT NULL AND ended_at >= ?3
 ORDER BY id DESC LIMIT ?1;

-- name: oldest_ready
-- The oldest ready task of queue ?1 (row id, name, created): the lowest row id of each priority level, each level found by one seek on the ready index (at most 1000 levels).
WITH RECURSIVE levels(p, n) AS (
    SELECT (SELECT priority FROM mqs_tasks WHERE status = 1 AND queue = ?1 ORDER BY priority DESC LIMIT 1), 1
    UNION ALL
    SELECT (SELECT priority FROM mqs_tasks WHERE status = 1 AND queue = ?1 AND priority < levels.p
             ORDER BY priority DESC LIMIT 1), n + 1
      FROM levels WHERE levels.p IS NOT NULL AND n < 1000)
SELECT t.id, t.task_name, t.created_at
  FROM levels
  JOIN mqs_tasks AS t ON t.id = (SELECT id FROM mqs_tasks WHERE status = 1 AND queue = ?1 AND priority = levels.p
                                  ORDER BY priority DESC, id LIMIT 1)
 ORDER BY t.id LIMIT 1;

-- name: list_nodes
-- The live queue objects (lease not expired by the boot clock): host, pid, when started, seconds left on their lease, and how many tasks each is running (on the running index).
SELECT n.node_id, n.host, n.pid, n.started_at, n.expires_at - mqs_lease_now(),
       (SELECT count(*) FROM mqs_tasks INDEXED BY mqs_tasks_running
         WHERE status = 2 AND lease_owner = n.node_id)
  FROM mqs_nodes AS n
 WHERE n.expires_at > mqs_lease_now()
 ORDER BY n.started_at, n.node_id;

-- name: page_cancelled
-- One page of CANCELLED tasks (whether or not their callback ran), newest first: row ids below ?1, on the cancelled index.
SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
       sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at, queue, args
  FROM mqs_tasks INDEXED BY mqs_tasks_cancelled
 WHERE outcome = 7 AND id < ?1
 ORDER BY id DESC LIMIT ?2;

-- name: record_progress
-- Task ?1's progress (JSON ?4), from owner ?2 of its attempt ?3 while it runs (a late report of an ended or lost run is ignored).
UPDATE mqs_tasks SET progress = ?4 WHERE id = ?1 AND status = 2 AND lease_owner = ?2 AND attempts = ?3;

-- name: get_progress
-- Task ?1's last reported progress (JSON), on the primary key.
SELECT progress FROM mqs_tasks WHERE id = ?1 AND status <> 0;

-- name: declare_limit
-- Task ?1 runs at most ?2 at once (a concurrency limit), on the primary key.
INSERT INTO mqs_limits (task_name, max_running) VALUES (?1, ?2)
ON CONFLICT (task_name) DO UPDATE SET max_running = excluded.max_running;

-- name: forget_limit
-- Task ?1 has no concurrency limit (any more).
DELETE FROM mqs_limits WHERE task_name = ?1;

-- name: list_limits
-- The concurrency limits.
SELECT task_name, max_running FROM mqs_limits ORDER BY task_name;

-- name: rate_window
-- Task ?1's rate window being filled and the runs it holds (none yet: no row).
SELECT window_start, used FROM mqs_rates WHERE task_name = ?1;

-- name: set_rate_window
-- Task ?1's rate window being filled is ?2, holding ?3 runs.
INSERT INTO mqs_rates (task_name, window_start, used) VALUES (?1, ?2, ?3)
ON CONFLICT (task_name) DO UPDATE SET window_start = excluded.window_start, used = excluded.used;

-- name: defer_to_window
-- Owner ?3's claimed task ?1 (attempt ?2) waits for its rate window ?4: SCHEDULED until then, its place kept (rate_slot); neither a retry nor a crash is counted.
UPDATE mqs_tasks
   SET status = 6, run_after = ?4, rate_slot = ?4, lease_owner = NULL, lease_expires = NULL
 WHERE id = ?1 AND attempts = ?2 AND status = 2 AND lease_owner = ?3;
