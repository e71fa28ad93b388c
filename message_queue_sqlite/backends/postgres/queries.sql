-- Every statement the PostgreSQL backend runs. Each block: "-- name: NAME", one line that
-- says what it is for, then the SQL. {schema} is replaced by the quoted schema name;
-- parameters are named (%(name)s, psycopg server-side binding). A batch travels as one
-- JSON array of positional rows: one statement and one round trip for any size, and
-- several times cheaper to build than psycopg's adaptation of lists element by element.
-- Writes that others must hear about call pg_notify once per statement or transaction;
-- the payload is '' (the writing process already knows: its listener skips what its own
-- session sent) or '*' (for everyone, the writer's process included).
-- Time comes from the server's clock, never from a client (clients' clocks differ and
-- step): the client passes durations (a lease's length, a delay, a retention). Two readings:
-- a comparison with a stored time (is a lease expired, a node alive, a task due, a row old
-- enough to purge) uses now(), the transaction's start, which errs towards "not yet"; a
-- time that starts a period (a lease's expiry, a node's liveness, a retry's or a delayed
-- send's due time) uses clock_timestamp(), read when the row is written, so a lock the
-- statement waited for first does not shorten the period.

-- name: enqueue
-- Store a batch of new tasks (JSON rows, field 10 the queue, 11 the timeout or null, 12 the headers or null; a delay > 0, in seconds, schedules a task that long from now) in batch order, so their ids (from the sequence, increasing) follow it; returns the ids in that order and notifies listeners at commit.
WITH inserted AS (
    INSERT INTO {schema}.mqs_tasks (task_name, args, priority, status, sender, notify, cache_owner,
                                    max_retries, retry, run_after, created_at, queue, timeout, headers)
    SELECT e->>0, e->>1, (e->>2)::bigint, CASE WHEN (e->>8)::float8 > 0 THEN 6 ELSE 1 END, e->>3,
           (e->>4)::boolean, e->>5, (e->>6)::bigint, e->>7,
           CASE WHEN (e->>8)::float8 > 0 THEN date_part('epoch', clock_timestamp()) + (e->>8)::float8 ELSE 0 END,
           (e->>9)::float8, e->>10, (e->>11)::float8, e->>12
      FROM json_array_elements(%(tasks)s::json) WITH ORDINALITY AS b (e, n)
     ORDER BY b.n
    RETURNING id)
SELECT ids, CASE WHEN ids IS NOT NULL THEN pg_notify(%(channel)s, '') END
  FROM (SELECT array_agg(id ORDER BY id) AS ids FROM inserted) AS c;

-- name: database_identity
-- Which database and server a session is on (to check an application's connection is to the queue's database).
SELECT current_database(), coalesce(host(inet_server_addr()), 'local'), coalesce(inet_server_port(), 0);

-- name: enqueue_unique
-- As enqueue, for a batch in which tasks may carry a unique key (JSON rows, fields 10-12: key, states bitmask, unique_for seconds or null; 13: the queue; 14: the timeout or null; 15: the headers or null): a task whose key a stored task holds, or an earlier row of this batch, is not stored (ON CONFLICT DO NOTHING on the unique index; a concurrent insert of the key waits for the other transaction, then conflicts). Returns the stored rows as one JSON array of [id, unique key] in id order (= batch order), and notifies listeners at commit if any was stored.
WITH inserted AS (
    INSERT INTO {schema}.mqs_tasks (task_name, args, priority, status, sender, notify, cache_owner,
                                    max_retries, retry, run_after, created_at,
                                    unique_key, unique_states, unique_until, queue, timeout, headers)
    SELECT e->>0, e->>1, (e->>2)::bigint, CASE WHEN (e->>8)::float8 > 0 THEN 6 ELSE 1 END, e->>3,
           (e->>4)::boolean, e->>5, (e->>6)::bigint, e->>7,
           CASE WHEN (e->>8)::float8 > 0 THEN date_part('epoch', clock_timestamp()) + (e->>8)::float8 ELSE 0 END,
           (e->>9)::float8, e->>10, (e->>11)::integer,
           CASE WHEN e->>12 IS NOT NULL THEN date_part('epoch', clock_timestamp()) + (e->>12)::float8 END,
           e->>13, (e->>14)::float8, e->>15
      FROM json_array_elements(%(tasks)s::json) WITH ORDINALITY AS b (e, n)
     ORDER BY b.n
    ON CONFLICT (unique_key)
       WHERE unique_key IS NOT NULL AND ((unique_states >> coalesce(outcome, status)) & 1) = 1
    DO NOTHING
    RETURNING id, unique_key)
SELECT coalesce(json_agg(json_build_array(id, unique_key) ORDER BY id), '[]'::json),
       CASE WHEN count(*) > 0 THEN pg_notify(%(channel)s, '') END
  FROM inserted;

-- name: release_expired_unique
-- Before a send of unique keys, in its transaction: a holder whose unique_for ran out by now() holds its key no longer, for good (unique_states 0), on the unique index. A concurrent sender releasing the same holder waits for this row lock, then finds it released.
UPDATE {schema}.mqs_tasks SET unique_states = 0
 WHERE unique_key = ANY(%(unique_keys)s::text[])
   AND ((unique_states >> coalesce(outcome, status)) & 1) = 1
   AND unique_until <= date_part('epoch', now());

-- name: unique_holders
-- The tasks (unique key, row id) that hold these unique keys (at most one each: the unique index), read after the insert that conflicted with them, on that index.
SELECT unique_key, id FROM {schema}.mqs_tasks
 WHERE unique_key = ANY(%(unique_keys)s::text[])
   AND ((unique_states >> coalesce(outcome, status)) & 1) = 1;

-- name: find_batch
-- After a connection broke during an enqueue's commit: the batch's rows (id, unique key) if it did commit (a batch shares its sender and creation time), above the ids returned to this client before it (on the primary key).
SELECT id, unique_key FROM {schema}.mqs_tasks
 WHERE id > %(floor)s::bigint AND sender = %(sender)s AND created_at = %(created_at)s ORDER BY id;

-- name: complete_and_claim
-- One statement, so one transaction and one round trip: end a batch of attempts of owner's leases unless the lease was lost since (fenced by owner and attempt; one handed over to its sender in memory also clears notify; a retry is due retry_in seconds from now and uses one retry; lease_owner stays on the row, so that a replay after a lost reply can tell its own completions, see completions_settled), mark CALLBACKED the rows whose callback ran (ended earlier, so disjoint from the batch), make due scheduled tasks ready (now(): a comparison), and lease up to %(limit)s ready tasks of queue %(queue)s (a task name with a concurrency limit: no more than its room, the limit less its RUNNING rows; lock_limits first makes that count exact) for %(lease)s seconds from clock_timestamp() (after whatever the completions waited for), stamped started_at = %(stamp)s (the client's, unique per claim: how an unconfirmed claim is found again), each a new attempt (best priority, then oldest; cached ones only to their owner; rows another claimer holds are skipped), and no more than %(max_bytes)s bytes of arguments in all, counted in claim order, but always the first (with any empty ones before it) (octet_length reads the stored size, never the value; issue 17, finding 7: the claimed rows come back as one json_agg, which PostgreSQL caps at 1 GiB, so a few huge arguments made every claim fail). The three touch disjoint rows (status 2, 6, 1 in the statement's snapshot), so tasks promoted here are claimable from the next statement on. The batch is first folded into ONE row of arrays (MATERIALIZED): whatever plan the always-stale statistics suggest, it is parsed once and each completed row finds its values by position, never by re-reading the batch. Listeners are notified once when a completion applied or a task became ready (payload '*': also the writer's own process, its workers' next wake-up time changed). One row comes back: applied completion ids, promoted count, and the claimed tasks as one JSON array of positional rows (cheap to read: no per-row decoding). A transaction that claimed commits durably whatever the session's durability (set_config(..., true): synchronous_commit = on until this commit; issue 17, finding 3): a claim lost in a server crash would hand the same attempt number, the fencing token, out again, so a stale completion of the lost claim could pass the fence; completions alone keep the session's setting (one lost in a crash leaves its row RUNNING under a lease nobody renews: it expires and is recovered). With nothing to complete and nothing ready it writes nothing: no row lock, no transaction id, no WAL.
WITH batch AS MATERIALIZED (
    SELECT array_agg((e->>0)::bigint) AS ids, array_agg((e->>1)::integer) AS attempts,
           array_agg((e->>2)::integer) AS statuses, array_agg(e->>3) AS results,
           array_agg(e->>4) AS tracebacks, array_agg((e->>5)::float8) AS ended,
           array_agg((e->>6)::float8) AS retry_ins, array_agg((e->>7)::float8) AS started,
           array_agg((e->>8)::boolean) AS handed_over
      FROM json_array_elements(%(completions)s::json) AS e),
done AS (
    UPDATE {schema}.mqs_tasks AS t
       SET status = b.statuses[array_position(b.ids, t.id)],
           outcome = CASE WHEN b.statuses[array_position(b.ids, t.id)] IN (3, 4, 7)
                          THEN b.statuses[array_position(b.ids, t.id)] END,
           result = b.results[array_position(b.ids, t.id)],
           traceback = b.tracebacks[array_position(b.ids, t.id)],
           ended_at = CASE WHEN b.statuses[array_position(b.ids, t.id)] IN (3, 4, 7)
                           THEN b.ended[array_position(b.ids, t.id)] END,
           run_after = CASE WHEN b.statuses[array_position(b.ids, t.id)] = 6
                            THEN date_part('epoch', clock_timestamp()) + b.retry_ins[array_position(b.ids, t.id)]
                            ELSE 0 END,
           retries = t.retries + (b.statuses[array_position(b.ids, t.id)] = 6)::integer,
           started_at = b.started[array_position(b.ids, t.id)],
           notify = t.notify AND NOT b.handed_over[array_position(b.ids, t.id)],
           lease_expires = NULL
      FROM batch AS b
     WHERE t.id = ANY(b.ids) AND t.attempts = b.attempts[array_position(b.ids, t.id)]
       AND t.status = 2 AND t.lease_owner = %(owner)s
    RETURNING t.id, t.status),
marked AS (
    UPDATE {schema}.mqs_tasks SET status = 5
     WHERE id = ANY(%(callbacked)s::bigint[]) AND status IN (3, 4, 7)
    RETURNING 1),
promoted AS (
    UPDATE {schema}.mqs_tasks SET status = 1
     WHERE id IN (SELECT id FROM {schema}.mqs_tasks
                   WHERE status = 6 AND run_after <= date_part('epoch', now())
                     FOR UPDATE SKIP LOCKED)
    RETURNING 1),
room AS (
    SELECT l.task_name, l.max_running - (SELECT count(*) FROM {schema}.mqs_tasks AS r
                                          WHERE r.status = 2 AND r.task_name = l.task_name) AS n
      FROM {schema}.mqs_limits AS l),
candidates AS (
    SELECT id, task_name, priority, coalesce(octet_length(args), 0) AS size FROM {schema}.mqs_tasks
     WHERE status = 1 AND queue = %(queue)s AND (cache_owner IS NULL OR cache_owner = %(owner)s)
       AND task_name NOT IN (SELECT task_name FROM room WHERE n <= 0)
     ORDER BY priority DESC, id LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED),
claimed AS (
    UPDATE {schema}.mqs_tasks
       SET status = 2, lease_owner = %(owner)s, lease_expires = date_part('epoch', clock_timestamp()) + %(lease)s,
           attempts = attempts + 1, started_at = %(stamp)s
     WHERE id IN (SELECT id FROM (
                      SELECT id, size, sum(size) OVER (ORDER BY priority DESC, id) - size AS before FROM (
                          SELECT c.id, c.priority, c.size, room.n AS room,
                                 row_number() OVER (PARTITION BY c.task_name ORDER BY c.priority DESC, c.id) AS nth
                            FROM candidates AS c LEFT JOIN room ON room.task_name = c.task_name) AS ranked
                       WHERE room IS NULL OR nth <= room) AS sized
                   WHERE before + size <= %(max_bytes)s OR before = 0)
    RETURNING id, task_name, args, priority, attempts, max_retries, retry, sender, notify,
              cache_owner, created_at, started_at, retries, slot, timeout, rate_slot, headers),
summary AS (
    SELECT a.ids, p.n,
           CASE WHEN a.ids IS NOT NULL OR p.n > 0
                THEN pg_notify(%(channel)s, CASE WHEN a.rescheduled OR p.n > 0 THEN '*' ELSE '' END) END AS signal
      FROM (SELECT array_agg(id) AS ids, bool_or(status = 6) AS rescheduled FROM done) AS a,
           (SELECT count(*) AS n FROM promoted) AS p)
SELECT s.ids, s.n, s.signal,
       (SELECT json_agg(json_build_array(id, task_name, args, priority, attempts, max_retries, retry, sender,
                                         notify, cache_owner, created_at, started_at, retries, slot,
                                         timeout, rate_slot, headers))
          FROM claimed),
       (SELECT set_config('synchronous_commit', 'on', true) FROM claimed LIMIT 1)
  FROM summary AS s;

-- name: completions_settled
-- After a connection broke during an exchange: the completions of the batch (row ids, attempts) that owner's last try already applied (the row is no longer RUNNING, still under that attempt and owner: nothing but that owner's completion ends a lease and keeps its owner).
SELECT coalesce(array_agg(t.id), '{}')
  FROM {schema}.mqs_tasks AS t
  JOIN unnest(%(row_id)s::bigint[], %(attempt)s::integer[]) AS c (id, attempt) ON t.id = c.id
 WHERE t.attempts = c.attempt AND t.lease_owner = %(owner)s AND t.status <> 2;

-- name: notify
-- Tell every listener of this schema that something changed (delivered at commit; once per transaction).
SELECT pg_notify(%(channel)s, '');

-- name: unclaim_ambiguous
-- After a connection broke during a claim's commit: give back what that claim (owner, its started_at stamp) may have leased; the attempt stays counted (the fencing token never goes back).
UPDATE {schema}.mqs_tasks
   SET status = 1, lease_owner = NULL, lease_expires = NULL
 WHERE status = 2 AND lease_owner = %(owner)s AND started_at = %(stamp)s;

-- name: release
-- Give owner's leases (row ids and their attempts) back at once (graceful stop): ready again, counting neither a retry nor a crash, the attempt kept (the fencing token never goes back); listeners are notified once if any applied.
WITH released AS (
    UPDATE {schema}.mqs_tasks AS t
       SET status = 1, lease_owner = NULL, lease_expires = NULL
     WHERE t.id = ANY(%(row_id)s::bigint[])
       AND t.attempts = (%(attempt)s::integer[])[array_position(%(row_id)s::bigint[], t.id)]
       AND t.status = 2 AND t.lease_owner = %(owner)s
    RETURNING 1)
SELECT n, CASE WHEN n > 0 THEN pg_notify(%(channel)s, '') END FROM (SELECT count(*) AS n FROM released) AS c;

-- name: renew_leases
-- Extend the leases (row ids and their attempts) that owner still holds to %(lease)s seconds from clock_timestamp(), read after the rows are locked (held, first: a row lock waited for does not shorten the lease); returns the row ids extended.
WITH held AS MATERIALIZED (
    SELECT t.id FROM {schema}.mqs_tasks AS t
      JOIN unnest(%(row_id)s::bigint[], %(attempt)s::integer[]) AS l (id, attempt) ON t.id = l.id
     WHERE t.attempts = l.attempt AND t.status = 2 AND t.lease_owner = %(owner)s
       FOR UPDATE OF t),
renewed AS (
    UPDATE {schema}.mqs_tasks AS t SET lease_expires = date_part('epoch', clock_timestamp()) + %(lease)s
      FROM held WHERE t.id = held.id
    RETURNING t.id)
SELECT coalesce(array_agg(id), '{}') FROM renewed;

-- name: fail_orphaned_cached
-- Cached tasks whose owning node is gone (its liveness ran out by now()) can never run: FAILED, with the reason.
UPDATE {schema}.mqs_tasks
   SET status = 4, outcome = 4, ended_at = date_part('epoch', now()), lease_owner = NULL, lease_expires = NULL,
       result = 'the process that sent this cache-mode task ended before it ran; its arguments lived only in that process''s memory'
 WHERE id IN (SELECT t.id FROM {schema}.mqs_tasks AS t
               WHERE t.cache_owner IS NOT NULL AND t.status IN (1, 2, 6)
                 AND NOT EXISTS (SELECT 1 FROM {schema}.mqs_nodes AS n
                                  WHERE n.node_id = t.cache_owner AND n.expires_at > date_part('epoch', now()))
                 FOR UPDATE SKIP LOCKED)
RETURNING id;

-- name: expire_leases_of_owner
-- The queue object owner is known dead (its supervisor saw its process end): its leases expire now, for recover_expired.
UPDATE {schema}.mqs_tasks SET lease_expires = 0 WHERE status = 2 AND lease_owner = %(owner)s;

-- name: recover_expired
-- Leases that expired by now() (their worker died): run again, or FAILED once the crash limit is reached, or CANCELLED if a cancel was requested; rows a worker is completing right now are skipped.
UPDATE {schema}.mqs_tasks
   SET crashes = crashes + 1,
       status = CASE WHEN cancel_requested > 0 THEN 7 WHEN crashes + 1 >= %(crash_limit)s THEN 4 ELSE 1 END,
       outcome = CASE WHEN cancel_requested > 0 THEN 7 WHEN crashes + 1 >= %(crash_limit)s THEN 4 END,
       ended_at = CASE WHEN cancel_requested > 0 OR crashes + 1 >= %(crash_limit)s
                       THEN date_part('epoch', now()) END,
       result = CASE WHEN cancel_requested > 0
                THEN 'cancelled (its worker died with the cancel pending)'
                WHEN crashes + 1 >= %(crash_limit)s
                THEN 'the worker running this task died ' || (crashes + 1) || ' times (lease expired); crash limit reached'
                ELSE result END,
       lease_owner = NULL, lease_expires = NULL
 WHERE id IN (SELECT id FROM {schema}.mqs_tasks
               WHERE status = 2 AND lease_expires < date_part('epoch', now())
                 FOR UPDATE SKIP LOCKED)
RETURNING status;

-- name: seconds_until_due
-- Seconds until the earliest scheduled task becomes ready, by the server's clock (NULL: none is scheduled).
SELECT (SELECT min(run_after) FROM {schema}.mqs_tasks WHERE status = 6) - date_part('epoch', now());

-- name: outcome_row_ids
-- Row ids of ended tasks of a sender whose callback has not run yet.
SELECT id FROM {schema}.mqs_tasks WHERE sender = %(sender)s AND notify AND status IN (3, 4, 7) LIMIT %(limit)s;

-- name: mark_callbacked
-- The sender's callback ran for these tasks.
UPDATE {schema}.mqs_tasks SET status = 5 WHERE id = ANY(%(row_id)s::bigint[]) AND status IN (3, 4, 7);

-- name: get_tasks
-- Tasks by their row ids.
SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
       sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at,
       queue
  FROM {schema}.mqs_tasks WHERE id = ANY(%(row_id)s::bigint[]);

-- name: list_recent
-- The newest tasks (of a name, if given), walking the primary key back from the newest row.
SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
       sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at,
       queue
  FROM {schema}.mqs_tasks
 WHERE (%(task_name)s::text IS NULL OR task_name = %(task_name)s::text)
   AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
 ORDER BY id DESC LIMIT %(limit)s;

-- name: list_ready
-- Ready tasks of a queue (and of a name) in the order they will be claimed, on the ready index.
SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
       sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at,
       queue
  FROM {schema}.mqs_tasks
 WHERE status = 1 AND queue = %(queue)s AND (%(task_name)s::text IS NULL OR task_name = %(task_name)s::text)
 ORDER BY priority DESC, id LIMIT %(limit)s;

-- name: list_scheduled
-- Scheduled tasks (of a name) in the order they become ready, on the scheduled index.
SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
       sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at,
       queue
  FROM {schema}.mqs_tasks
 WHERE status = 6 AND (%(task_name)s::text IS NULL OR task_name = %(task_name)s::text)
   AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
 ORDER BY run_after, id LIMIT %(limit)s;

-- name: list_running
-- Running tasks (of a name), newest first, read on the running index (at most the leases held) and sorted after: a walk of the primary key looking for them, which the planner may prefer for the ORDER BY, would cross the whole table.
WITH running AS MATERIALIZED (
    SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
           sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at,
       queue
      FROM {schema}.mqs_tasks
     WHERE status = 2 AND (%(task_name)s::text IS NULL OR task_name = %(task_name)s::text)
       AND (%(queue)s::text IS NULL OR queue = %(queue)s::text))
SELECT * FROM running ORDER BY id DESC LIMIT %(limit)s;

-- name: list_failed
-- Failed tasks (of a name), whether or not their callback ran, newest first, on the failed index.
SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
       sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at,
       queue
  FROM {schema}.mqs_tasks
 WHERE outcome = 4 AND (%(task_name)s::text IS NULL OR task_name = %(task_name)s::text)
   AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
 ORDER BY id DESC LIMIT %(limit)s;

-- name: list_ended_as
-- Tasks of a status (3: FINISHED, with those whose callback ran; 5: CALLBACKED) and a name, newest first, walking the primary key back from the newest row (most ended tasks finished: no index is kept on every completion for this).
SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
       sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at,
       queue
  FROM {schema}.mqs_tasks
 WHERE (status = %(status)s::integer OR (%(status)s::integer = 3 AND status = 5 AND outcome = 3))
   AND (%(task_name)s::text IS NULL OR task_name = %(task_name)s::text)
   AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
 ORDER BY id DESC LIMIT %(limit)s;

-- name: count_tasks
-- Tasks per status and outcome: the folded counts plus the deltas appended since (migration 0003), in one snapshot.
SELECT status, outcome, sum(n)::bigint FROM (
    SELECT status, outcome, n FROM {schema}.mqs_counts
    UNION ALL
    SELECT status, outcome, n FROM {schema}.mqs_count_deltas) AS c
 GROUP BY 1, 2 HAVING sum(n) <> 0;

-- name: fold_counts
-- Fold the appended deltas into the counts, in one statement (a concurrent fold waits for this one's rows, then finds them gone); in key order, so two folds never deadlock.
WITH moved AS (DELETE FROM {schema}.mqs_count_deltas RETURNING status, outcome, n)
INSERT INTO {schema}.mqs_counts (status, outcome, n)
SELECT status, outcome, sum(n) FROM moved GROUP BY 1, 2 ORDER BY 1, 2
ON CONFLICT (status, outcome) DO UPDATE SET n = {schema}.mqs_counts.n + excluded.n;

-- name: ended_timings
-- Created, started and ended times of the tasks that ended last (latency summaries), on the ended index.
SELECT created_at, started_at, ended_at FROM {schema}.mqs_tasks
 WHERE status IN (3, 4, 5, 7) ORDER BY ended_at DESC LIMIT %(limit)s;

-- name: requeue_failed_by_id
-- Task %(row_id)s, if it failed (whether or not its callback ran; of a name, if given), runs again with a fresh retry budget (retries and crashes from 0; attempts, the fencing token, kept); a cached one cannot; a unique task keeps its key only if it held it while failed (bit 4 of unique_states), otherwise another task may hold it by now and it runs without one. By primary key; listeners are notified if it was.
WITH requeued AS (
    UPDATE {schema}.mqs_tasks
       SET status = 1, outcome = NULL, result = NULL, traceback = NULL, retries = 0, crashes = 0,
           ended_at = NULL, started_at = NULL, run_after = 0,
           unique_states = CASE WHEN (unique_states >> 4) & 1 = 1 THEN unique_states ELSE 0 END
     WHERE id = %(row_id)s::bigint AND status IN (4, 5) AND outcome = 4 AND cache_owner IS NULL
       AND (%(task_name)s::text IS NULL OR task_name = %(task_name)s::text)
    RETURNING 1)
SELECT n, CASE WHEN n > 0 THEN pg_notify(%(channel)s, '') END FROM (SELECT count(*) AS n FROM requeued) AS c;

-- name: requeue_failed_all
-- As requeue_failed_by_id for every failed task (of a name, if given), found on the failed index (a unique one keeps its key only if it held it while failed); listeners are notified once if any.
WITH requeued AS (
    UPDATE {schema}.mqs_tasks
       SET status = 1, outcome = NULL, result = NULL, traceback = NULL, retries = 0, crashes = 0,
           ended_at = NULL, started_at = NULL, run_after = 0,
           unique_states = CASE WHEN (unique_states >> 4) & 1 = 1 THEN unique_states ELSE 0 END
     WHERE outcome = 4 AND status IN (4, 5) AND cache_owner IS NULL
       AND (%(task_name)s::text IS NULL OR task_name = %(task_name)s::text)
    RETURNING 1)
SELECT n, CASE WHEN n > 0 THEN pg_notify(%(channel)s, '') END FROM (SELECT count(*) AS n FROM requeued) AS c;

-- name: remove_waiting_by_id
-- Delete task %(row_id)s if it is waiting (ready or scheduled; of a name, if given), by primary key (the sequence never reuses its id).
DELETE FROM {schema}.mqs_tasks
 WHERE id = %(row_id)s::bigint AND status IN (1, 6)
   AND (%(task_name)s::text IS NULL OR task_name = %(task_name)s::text);

-- name: remove_ready
-- Delete the ready tasks (of a name; all when NULL), on the ready index.
DELETE FROM {schema}.mqs_tasks
 WHERE status = 1 AND (%(task_name)s::text IS NULL OR task_name = %(task_name)s::text);

-- name: remove_scheduled
-- Delete the scheduled tasks (of a name; all when NULL), on the scheduled index.
DELETE FROM {schema}.mqs_tasks
 WHERE status = 6 AND (%(task_name)s::text IS NULL OR task_name = %(task_name)s::text);

-- name: register_node
-- A queue object is alive for %(lease)s more seconds from clock_timestamp() (its cached arguments depend on it); refreshed before that runs out.
INSERT INTO {schema}.mqs_nodes (node_id, pid, host, started_at, expires_at)
VALUES (%(node)s, %(pid)s, %(host)s, date_part('epoch', now()), date_part('epoch', clock_timestamp()) + %(lease)s)
ON CONFLICT (node_id) DO UPDATE SET expires_at = excluded.expires_at;

-- name: unregister_node
-- A queue object stopped.
DELETE FROM {schema}.mqs_nodes WHERE node_id = %(node)s;

-- name: forget_dead_nodes
-- Drop liveness rows expired for a day.
DELETE FROM {schema}.mqs_nodes WHERE expires_at < date_part('epoch', now()) - 86400.0;

-- name: purge_ended
-- Delete up to %(limit)s tasks that ended more than %(retention)s seconds before now() (retention), oldest first; rows in use elsewhere wait for the next round; never the newest row (the sequence never reuses ids anyway, this keeps SQLite's contract).
DELETE FROM {schema}.mqs_tasks WHERE id IN (
    SELECT id FROM {schema}.mqs_tasks
     WHERE status IN (3, 4, 5, 7) AND ended_at < date_part('epoch', now()) - %(retention)s
     ORDER BY ended_at LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED)
  AND id < (SELECT max(id) FROM {schema}.mqs_tasks);

-- name: wall_now
-- The server's clock, which every scheduler of this queue does its slot arithmetic on.
SELECT date_part('epoch', clock_timestamp());

-- name: declare_schedules
-- Store each schedule of a JSON array of [name, expression, last slot before the first to run, next slot] if new, else update its expression; seen now either way.
INSERT INTO {schema}.mqs_schedules (name, expression, last_slot, next_slot, seen_at, created_at)
SELECT e->>0, e->>1, (e->>2)::float8, (e->>3)::float8, date_part('epoch', now()), date_part('epoch', now())
  FROM json_array_elements(%(schedules)s::json) AS e
ON CONFLICT (name) DO UPDATE SET expression = excluded.expression, seen_at = excluded.seen_at;

-- name: decide_slots
-- Compare-and-set: the schedule's last slot moves from %(expected)s to %(decided)s; a concurrent scheduler waits for this row lock, then finds the value moved and changes nothing (READ COMMITTED re-checks the row).
UPDATE {schema}.mqs_schedules SET last_slot = %(decided)s, next_slot = %(next_slot)s
 WHERE name = %(name)s AND last_slot = %(expected)s;

-- name: previous_run_waiting
-- Is the schedule's newest task still waiting or running (skip_if_running)? On the primary keys.
SELECT EXISTS (SELECT 1 FROM {schema}.mqs_tasks
                WHERE id = (SELECT last_task FROM {schema}.mqs_schedules WHERE name = %(name)s)
                  AND status IN (1, 2, 6));

-- name: enqueue_slots
-- Store the tasks of the schedule's slots (JSON rows [name, args, priority, sender, max_retries, retry, created_at, slot, queue]; ready at once) but the slots stored already (the unique index on schedule and slot); note the newest as the schedule's last task; returns the ids and notifies listeners at commit.
WITH inserted AS (
    INSERT INTO {schema}.mqs_tasks (task_name, args, priority, status, sender, notify, max_retries,
                                    retry, created_at, schedule, slot, queue)
    SELECT e->>0, e->>1, (e->>2)::bigint, 1, e->>3, false, (e->>4)::bigint, e->>5, (e->>6)::float8,
           %(name)s, (e->>7)::float8, e->>8
      FROM json_array_elements(%(tasks)s::json) WITH ORDINALITY AS b (e, n)
     ORDER BY b.n
    ON CONFLICT (schedule, slot) WHERE schedule IS NOT NULL DO NOTHING
    RETURNING id),
noted AS (
    UPDATE {schema}.mqs_schedules SET last_task = (SELECT max(id) FROM inserted)
     WHERE name = %(name)s AND EXISTS (SELECT 1 FROM inserted))
SELECT ids, CASE WHEN ids IS NOT NULL THEN pg_notify(%(channel)s, '*') END
  FROM (SELECT array_agg(id ORDER BY id) AS ids FROM inserted) AS c;

-- name: list_schedules
-- Every schedule, with the stored status and outcome of its newest slot's task (one primary-key lookup per schedule: OFFSET 0 keeps the planner from turning the few lookups into a merge join that walks the whole primary key).
SELECT s.name, s.expression, s.last_slot, s.next_slot, s.last_task, t.status, t.outcome,
       s.seen_at, s.created_at
  FROM {schema}.mqs_schedules AS s
  LEFT JOIN LATERAL (SELECT status, outcome FROM {schema}.mqs_tasks WHERE id = s.last_task OFFSET 0) AS t
       ON true
 ORDER BY s.name;

-- name: remove_schedules
-- Forget these schedules (an array of names); their stored tasks stay.
DELETE FROM {schema}.mqs_schedules WHERE name = ANY(%(names)s::text[]);

-- name: declare_queues
-- These queues exist (a task is about to be sent to each): stored once, on the primary key.
INSERT INTO {schema}.mqs_queues (name) SELECT unnest(%(names)s::text[]) ON CONFLICT (name) DO NOTHING;

-- name: list_queues
-- Every queue a task was ever sent to.
SELECT name FROM {schema}.mqs_queues ORDER BY name;

-- name: count_by_queue
-- Waiting and running tasks per stored queue, in one snapshot: ready ones counted on a range of the ready index each, running and scheduled ones on their indexes.
SELECT q.name,
       (SELECT count(*) FROM {schema}.mqs_tasks WHERE status = 1 AND queue = q.name),
       coalesce(s.n, 0), coalesce(r.n, 0)
  FROM {schema}.mqs_queues AS q
  LEFT JOIN (SELECT queue, count(*) AS n FROM {schema}.mqs_tasks WHERE status = 6 GROUP BY queue) AS s
         ON s.queue = q.name
  LEFT JOIN (SELECT queue, count(*) AS n FROM {schema}.mqs_tasks WHERE status = 2 GROUP BY queue) AS r
         ON r.queue = q.name
 ORDER BY q.name;

-- name: cancel_waiting
-- Cancel waiting tasks (ready or scheduled) in place: they never start; returns how many, and notifies listeners (their senders' callbacks, the kept counts' triggers do the rest).
WITH cancelled AS (
    UPDATE {schema}.mqs_tasks
       SET status = 7, outcome = 7, ended_at = date_part('epoch', clock_timestamp()),
           result = 'cancelled before it started', run_after = 0
     WHERE id = ANY(%(row_id)s::bigint[]) AND status IN (1, 6)
    RETURNING 1)
SELECT n, CASE WHEN n > 0 THEN pg_notify(%(channel)s, '*') END FROM (SELECT count(*) AS n FROM cancelled) AS c;

-- name: request_cancel
-- Ask the workers holding these running tasks to stop them (or never start them, if still in their buffers); returns how many were asked, and notifies listeners (the workers' watchers).
WITH asked AS (
    UPDATE {schema}.mqs_tasks SET cancel_requested = 1
     WHERE id = ANY(%(row_id)s::bigint[]) AND status = 2 AND cancel_requested = 0
    RETURNING 1)
SELECT n, CASE WHEN n > 0 THEN pg_notify(%(channel)s, '*') END FROM (SELECT count(*) AS n FROM asked) AS c;

-- name: cancel_state
-- Where these tasks stand for a cancel in progress: status, and whether a cancel request was seen.
SELECT id, status, cancel_requested FROM {schema}.mqs_tasks WHERE id = ANY(%(row_id)s::bigint[]);

-- name: waiting_ids_of_name
-- The waiting tasks (ready, then scheduled) of a name, each state on its own index.
SELECT id FROM {schema}.mqs_tasks WHERE status = 1 AND task_name = %(task_name)s
UNION ALL
SELECT id FROM {schema}.mqs_tasks WHERE status = 6 AND task_name = %(task_name)s;

-- name: cancel_requests
-- The running tasks of an owner whose cancel was asked for and not seen yet, on the cancelling index.
SELECT id FROM {schema}.mqs_tasks WHERE status = 2 AND cancel_requested = 1 AND lease_owner = %(owner)s;

-- name: cancel_seen
-- The owner has asked these running tasks to stop (fenced by owner and attempt): the cancellers' waits end (listeners are notified).
WITH seen AS (
    UPDATE {schema}.mqs_tasks AS t SET cancel_requested = 2
      FROM unnest(%(row_id)s::bigint[], %(attempt)s::integer[]) AS c (id, attempt)
     WHERE t.id = c.id AND t.attempts = c.attempt AND t.status = 2 AND t.lease_owner = %(owner)s
    RETURNING 1)
SELECT count(*), pg_notify(%(channel)s, '') FROM seen;

-- Dashboard reads (contrib/dashboard): keyset pages that each read at most their LIMIT of
-- rows on an index or a range of the primary key, whatever the table's size. The page's
-- rows carry args (the listing queries above leave it out). A cursor is the sort key of the
-- last row the previous page examined.

-- name: page_recent
-- One page of every task, newest first: row ids below %(before)s, on the primary key.
SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
       sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at, queue, args
  FROM {schema}.mqs_tasks
 WHERE id < %(before)s::bigint AND status <> 0
 ORDER BY id DESC LIMIT %(limit)s;

-- name: page_finished
-- One page of FINISHED tasks (whether or not their callback ran), newest first: row ids below %(before)s, on the primary key (most ended tasks finished).
SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
       sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at, queue, args
  FROM {schema}.mqs_tasks
 WHERE id < %(before)s::bigint AND (status = 3 OR (status = 5 AND outcome = 3))
 ORDER BY id DESC LIMIT %(limit)s;

-- name: page_failed
-- One page of FAILED tasks (whether or not their callback ran), newest first: row ids below %(before)s, on the failed index.
SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
       sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at, queue, args
  FROM {schema}.mqs_tasks
 WHERE outcome = 4 AND id < %(before)s::bigint
 ORDER BY id DESC LIMIT %(limit)s;

-- name: page_running
-- One page of RUNNING tasks, newest first: row ids below %(before)s, read on the running index (at most the leases held) and sorted after, as list_running.
WITH running AS MATERIALIZED (
    SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
           sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at, queue, args
      FROM {schema}.mqs_tasks
     WHERE status = 2 AND id < %(before)s::bigint)
SELECT * FROM running ORDER BY id DESC LIMIT %(limit)s;

-- name: page_ready
-- One page of ready tasks of a queue in claim order after (priority %(after_priority)s, row id %(after_id)s): the rest of that priority, then lower ones, two seeks on the ready index.
SELECT * FROM (
    (SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
            sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at, queue, args
       FROM {schema}.mqs_tasks
      WHERE status = 1 AND queue = %(queue)s AND priority = %(after_priority)s::bigint AND id > %(after_id)s::bigint
      ORDER BY priority DESC, id LIMIT %(limit)s)
    UNION ALL
    (SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
            sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at, queue, args
       FROM {schema}.mqs_tasks
      WHERE status = 1 AND queue = %(queue)s AND priority < %(after_priority)s::bigint
      ORDER BY priority DESC, id LIMIT %(limit)s)) AS page
 ORDER BY priority DESC, id LIMIT %(limit)s;

-- name: page_scheduled
-- One page of scheduled tasks in the order they become ready after (run_after %(after_run_after)s, row id %(after_id)s): the rest of that very time (read on the scheduled index and sorted after: MATERIALIZED, as the planner would otherwise walk the primary key for the ORDER BY), then later ones, on the scheduled index.
WITH same_time AS MATERIALIZED (
    SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
           sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at, queue, args
      FROM {schema}.mqs_tasks
     WHERE status = 6 AND run_after = %(after_run_after)s::double precision)
SELECT * FROM (
    (SELECT * FROM same_time WHERE id > %(after_id)s::bigint ORDER BY id LIMIT %(limit)s)
    UNION ALL
    (SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
            sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at, queue, args
       FROM {schema}.mqs_tasks
      WHERE status = 6 AND run_after > %(after_run_after)s::double precision
      ORDER BY run_after, id LIMIT %(limit)s)) AS page
 ORDER BY run_after, id LIMIT %(limit)s;

-- name: get_task_detail
-- One task by its row id with its arguments and progress (the task page), by primary key.
SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
       sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at, queue, args,
       progress
  FROM {schema}.mqs_tasks WHERE id = %(row_id)s::bigint;

-- name: recent_ends
-- Created, started and ended times and the outcome of the tasks that ended last, at or after %(since)s (the dashboard's last hour), on the ended index.
SELECT created_at, started_at, ended_at, outcome FROM {schema}.mqs_tasks
 WHERE status IN (3, 4, 5) AND ended_at >= %(since)s::double precision
 ORDER BY ended_at DESC LIMIT %(limit)s;

-- name: oldest_ready
-- The oldest ready task of a queue (row id, name, created): the lowest row id of each priority level, each level found by one seek on the ready index (at most 1000 levels).
WITH RECURSIVE levels(p, n) AS (
    SELECT (SELECT priority FROM {schema}.mqs_tasks WHERE status = 1 AND queue = %(queue)s ORDER BY priority DESC LIMIT 1), 1
    UNION ALL
    SELECT (SELECT priority FROM {schema}.mqs_tasks WHERE status = 1 AND queue = %(queue)s AND priority < levels.p
             ORDER BY priority DESC LIMIT 1), n + 1
      FROM levels WHERE levels.p IS NOT NULL AND n < 1000)
SELECT first.id, first.task_name, first.created_at
  FROM levels
  CROSS JOIN LATERAL (SELECT id, task_name, created_at FROM {schema}.mqs_tasks
                       WHERE status = 1 AND queue = %(queue)s AND priority = levels.p
                       ORDER BY priority DESC, id LIMIT 1) AS first
 ORDER BY first.id LIMIT 1;

-- name: list_nodes
-- The live queue objects (lease not expired by the server's clock): host, pid, when started, seconds left on their lease, and how many tasks each is running (on the running index).
SELECT n.node_id, n.host, n.pid, n.started_at, n.expires_at - date_part('epoch', clock_timestamp()),
       (SELECT count(*) FROM {schema}.mqs_tasks AS t WHERE t.status = 2 AND t.lease_owner = n.node_id)
  FROM {schema}.mqs_nodes AS n
 WHERE n.expires_at > date_part('epoch', clock_timestamp())
 ORDER BY n.started_at, n.node_id;

-- name: page_cancelled
-- One page of CANCELLED tasks (whether or not their callback ran), newest first: row ids below %(before)s, on the cancelled index.
SELECT id, task_name, status, outcome, result, traceback, priority, attempts, max_retries,
       sender, notify, cache_owner, lease_owner, lease_expires, run_after, created_at, started_at, ended_at, queue, args
  FROM {schema}.mqs_tasks
 WHERE outcome = 7 AND id < %(before)s::bigint
 ORDER BY id DESC LIMIT %(limit)s;

-- name: record_progress
-- Running tasks' progress (JSON rows [row id, attempt, progress]) from their owner, fenced by owner and attempt (a late report of an ended or lost run is ignored).
UPDATE {schema}.mqs_tasks AS t SET progress = e->>2
  FROM json_array_elements(%(items)s::json) AS e
 WHERE t.id = (e->>0)::bigint AND t.attempts = (e->>1)::integer AND t.status = 2
   AND t.lease_owner = %(owner)s;

-- name: get_progress
-- A task's last reported progress (JSON), on the primary key.
SELECT progress FROM {schema}.mqs_tasks WHERE id = %(row_id)s::bigint;

-- name: lock_limits
-- Before a claim, in its transaction, when concurrency limits exist: take their rows' locks, so that the claim's own statement (a new snapshot, after any other claimer committed) counts every RUNNING row of a limited task.
SELECT count(*) FROM (SELECT 1 FROM {schema}.mqs_limits ORDER BY task_name FOR UPDATE) AS locked;

-- name: declare_limits
-- These tasks run at most max_running at once (JSON rows [name, max]); the names of ``forget`` have no limit any more.
WITH declared AS (
    INSERT INTO {schema}.mqs_limits (task_name, max_running)
    SELECT e->>0, (e->>1)::integer FROM json_array_elements(%(limits)s::json) AS e
    ON CONFLICT (task_name) DO UPDATE SET max_running = excluded.max_running
    RETURNING 1)
DELETE FROM {schema}.mqs_limits WHERE task_name = ANY(%(forget)s::text[]);

-- name: list_limits
-- The concurrency limits.
SELECT task_name, max_running FROM {schema}.mqs_limits ORDER BY task_name;

-- name: make_rate_window
-- A task's rate window row, made empty at the given window if it has none.
INSERT INTO {schema}.mqs_rates (task_name, window_start, used) VALUES (%(task_name)s, %(window)s, 0)
ON CONFLICT (task_name) DO NOTHING;

-- name: lock_rate_window
-- A task's rate window being filled and the runs it holds, locked for this transaction.
SELECT window_start, used FROM {schema}.mqs_rates WHERE task_name = %(task_name)s FOR UPDATE;

-- name: set_rate_window
-- A task's rate window being filled, and the runs it holds.
UPDATE {schema}.mqs_rates SET window_start = %(window)s, used = %(used)s WHERE task_name = %(task_name)s;

-- name: defer_to_window
-- The owner's claimed task waits for its rate window: SCHEDULED until then, its place kept (rate_slot); neither a retry nor a crash is counted; listeners are notified (a worker's next wake-up changed).
WITH deferred AS (
    UPDATE {schema}.mqs_tasks
       SET status = 6, run_after = %(window)s, rate_slot = %(window)s, lease_owner = NULL, lease_expires = NULL
     WHERE id = %(row_id)s::bigint AND attempts = %(attempt)s AND status = 2 AND lease_owner = %(owner)s
    RETURNING 1)
SELECT count(*), pg_notify(%(channel)s, '*') FROM deferred;
