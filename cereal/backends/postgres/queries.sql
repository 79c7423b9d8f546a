-- Every statement the PostgreSQL driver runs. Each starts with a "-- name:" line; the
-- connection's search_path points at the cereal schema. Notifications go to one channel
-- per schema; their payload format is defined in notify.py (e<workflow name> events,
-- t<task name> tasks, f<instance id> finished, s schedules). The statements below whose
-- notification must commit with their writes build those payloads themselves.
--
-- A queue table analysed while empty keeps its pages (migration 0010), and PostgreSQL plans
-- it as one row until the next ANALYZE, however full it is by then. On one row, a join that
-- walks a whole index costs the same as a probe, and the planner may pick it. So the hot
-- statements below find rows by id through an `id = ANY(...)` condition, and look a row up
-- per row in a LATERAL subquery with LIMIT 1: both are index probes whatever the estimates
-- (tests/integration/test_stale_statistics.py). The same holds for the generic plan a
-- prepared statement gets from its sixth execution on, which knows neither the parameter
-- arrays' lengths nor their values:
-- - a row never joins the unnested parameter arrays or a CTE by id: a nested loop may scan
--   all of them once per row, quadratic in the batch. It finds its values by its position
--   in the id array instead: `(%(values)s::text[])[array_position(%(ids)s::bigint[], id)]`.
--   Those lookups walk the arrays, so the driver gives such a statement at most
--   ROWS_PER_STATEMENT rows (arrays.py) and sends a larger batch as several;
-- - a lookup by id that also checks the workflow name writes that check as
--   `(workflow_name = ANY(...)) IS TRUE`, which no index can serve: as a plain condition,
--   a generic plan may walk every instance of the workflow in an index on workflow_name
--   for each id.

-- name: enqueue_workflow
-- Insert a live instance and its start event, unless the pair is already live.
WITH inserted AS (
    INSERT INTO workflow_instances (workflow_name, instance_name, parameters, trace_context)
    VALUES (%(workflow_name)s, %(instance_name)s, %(parameters)s::jsonb, %(trace_context)s)
    ON CONFLICT ON CONSTRAINT workflow_instances_name DO NOTHING
    RETURNING id, workflow_name
), start_event AS (
    INSERT INTO workflow_events (instance_id, event_type, workflow_name)
    SELECT id, 'start', workflow_name FROM inserted
)
SELECT id, pg_notify(%(channel)s, 'e' || workflow_name) FROM inserted;

-- name: enqueue_holding
-- enqueue_workflow for enqueue_and_hold, which locks the new instance again right after the
-- commit: no notification (nobody else needs waking), and the id goes to the session setting
-- relock_held_instances reads (written empty when the pair is live).
WITH inserted AS (
    INSERT INTO workflow_instances (workflow_name, instance_name, parameters, trace_context)
    VALUES (%(workflow_name)s, %(instance_name)s, %(parameters)s::jsonb, %(trace_context)s)
    ON CONFLICT ON CONSTRAINT workflow_instances_name DO NOTHING
    RETURNING id, workflow_name
), start_event AS (
    INSERT INTO workflow_events (instance_id, event_type, workflow_name)
    SELECT id, 'start', workflow_name FROM inserted
)
SELECT (SELECT id FROM inserted) AS id,
       set_config('cereal.held_instances', coalesce((SELECT id::text FROM inserted), ''), false)
           AS held;

-- name: enqueue_held
-- enqueue_workflow for a manager that runs on_start itself (eager start): the instance and its
-- start event stay in the caller's open transaction, which holds them as a claim would (no
-- other session sees them before the commit) and consumes the start event. No notification:
-- the commit leaves nothing to announce but what the batch's own commit announces.
WITH inserted AS (
    INSERT INTO workflow_instances (workflow_name, instance_name, parameters, trace_context)
    VALUES (%(workflow_name)s, %(instance_name)s, %(parameters)s::jsonb, %(trace_context)s)
    ON CONFLICT ON CONSTRAINT workflow_instances_name DO NOTHING
    RETURNING id, workflow_name, instance_name, parameters, payload, status, enqueued_tasks,
              completed_tasks, started_at, trace_context
), start_event AS (
    INSERT INTO workflow_events (instance_id, event_type, workflow_name)
    SELECT id, 'start', workflow_name FROM inserted
    RETURNING id, enqueued_at
)
SELECT i.*, e.id AS event_id, e.enqueued_at AS event_enqueued_at
FROM inserted i CROSS JOIN start_event e;

-- name: cancel_workflow
-- Queue a cancel event for a live instance. The key-share lock (which does not wait for an
-- event handler) skips an instance that finished after this statement's snapshot was taken,
-- so that race reports "not found" instead of failing the foreign key check.
WITH target AS (
    SELECT id FROM workflow_instances
    WHERE workflow_name = %(workflow_name)s AND instance_name = %(instance_name)s
    FOR KEY SHARE
), ev AS (
    INSERT INTO workflow_events (instance_id, event_type, workflow_name)
    SELECT id, 'cancel', %(workflow_name)s FROM target
    RETURNING instance_id
)
SELECT instance_id, pg_notify(%(channel)s, 'e' || %(workflow_name)s) FROM ev;

-- name: signal_workflow
-- Queue a signal event for a live instance and wake its workflow's handlers, in one
-- statement. The key-share lock works as in cancel_workflow.
WITH target AS (
    SELECT id FROM workflow_instances
    WHERE workflow_name = %(workflow_name)s AND instance_name = %(instance_name)s
    FOR KEY SHARE
), ev AS (
    INSERT INTO workflow_events
        (instance_id, event_type, workflow_name, signal_name, signal_payload)
    SELECT id, 'signal', %(workflow_name)s, %(signal_name)s, %(payload)s::jsonb FROM target
    RETURNING instance_id
)
SELECT instance_id, pg_notify(%(channel)s, 'e' || %(workflow_name)s) FROM ev;

-- name: kill_workflow
-- Finish a live instance as failed without its executor; waits for an in-flight handler.
WITH target AS (
    SELECT id FROM workflow_instances
    WHERE workflow_name = %(workflow_name)s AND instance_name = %(instance_name)s
    FOR UPDATE
), gone AS (
    DELETE FROM workflow_instances i WHERE i.id = ANY(ARRAY(SELECT id FROM target))
    RETURNING i.id, i.workflow_name, i.instance_name, i.parameters, i.started_at
), recorded AS (
    INSERT INTO workflow_results
        (workflow_name, instance_name, parameters, status, error, started_at)
    SELECT workflow_name, instance_name, parameters, 'failed', %(error)s, started_at FROM gone
)
SELECT id, pg_notify(%(channel)s, 'f' || id) FROM gone;

-- name: fail_instance
-- Finish a live instance (by id) as failed, waiting for whoever holds it; used when the
-- database refused the instance's decision.
WITH target AS (
    SELECT id FROM workflow_instances WHERE id = %(id)s FOR UPDATE
), gone AS (
    DELETE FROM workflow_instances i WHERE i.id = ANY(ARRAY(SELECT id FROM target))
    RETURNING i.id, i.workflow_name, i.instance_name, i.parameters, i.started_at
), recorded AS (
    INSERT INTO workflow_results
        (workflow_name, instance_name, parameters, status, error, started_at)
    SELECT workflow_name, instance_name, parameters, 'failed', %(error)s, started_at FROM gone
)
SELECT workflow_name, instance_name, parameters, 'failed' AS status, NULL::jsonb AS result,
       %(error)s::text AS error, started_at, now() AS ended_at,
       pg_notify(%(channel)s, 'f' || id) AS notified
FROM gone;

-- name: get_live_instance
SELECT workflow_name, instance_name, status, parameters, payload, started_at
FROM workflow_instances
WHERE workflow_name = %(workflow_name)s AND instance_name = %(instance_name)s;

-- name: get_latest_result
SELECT workflow_name, instance_name, status, parameters, result, error, started_at, ended_at
FROM workflow_results
WHERE workflow_name = %(workflow_name)s AND instance_name = %(instance_name)s
ORDER BY id DESC
LIMIT 1;

-- name: list_instances
-- One row per pair: the live instance, else its latest finished run (the row marked latest).
SELECT workflow_name, instance_name, status, parameters, payload, NULL::jsonb AS result,
       NULL::text AS error, started_at, NULL::timestamptz AS ended_at
FROM workflow_instances
WHERE (%(workflow_name)s::text IS NULL OR workflow_name = %(workflow_name)s)
  AND (%(instance_name)s::text IS NULL OR instance_name = %(instance_name)s)
  AND %(include_live)s
UNION ALL
SELECT r.workflow_name, r.instance_name, r.status, r.parameters, NULL::jsonb, r.result,
       r.error, r.started_at, r.ended_at
FROM workflow_results r
WHERE r.latest
  AND (%(workflow_name)s::text IS NULL OR r.workflow_name = %(workflow_name)s)
  AND (%(instance_name)s::text IS NULL OR r.instance_name = %(instance_name)s)
  AND %(include_finished)s
  AND NOT EXISTS (
      SELECT 1 FROM workflow_instances i
      WHERE i.workflow_name = r.workflow_name AND i.instance_name = r.instance_name)
ORDER BY 1, 2;

-- name: list_page
-- One page of the listing, newest first: by (started_at, workflow_name, instance_name)
-- descending, strictly after the cursor's position (ts 'infinity' for the first page). Each
-- side reads at most one page from its index (workflow_instances_newest,
-- workflow_results_latest_newest), so a page costs the same at any depth.
WITH live AS (
    SELECT workflow_name, instance_name, status, parameters, payload, NULL::jsonb AS result,
           NULL::text AS error, started_at, NULL::timestamptz AS ended_at
    FROM workflow_instances
    WHERE %(include_live)s
      AND (started_at, workflow_name, instance_name) < (%(ts)s, %(wf)s, %(inst)s)
      AND (%(instance_name)s::text IS NULL OR instance_name = %(instance_name)s)
      AND status = ANY(%(statuses)s::text[])
    ORDER BY started_at DESC, workflow_name DESC, instance_name DESC
    LIMIT %(limit)s
), finished AS (
    SELECT r.workflow_name, r.instance_name, r.status, r.parameters, NULL::jsonb, r.result,
           r.error, r.started_at, r.ended_at
    FROM workflow_results r
    WHERE %(include_finished)s AND r.latest
      AND (r.started_at, r.workflow_name, r.instance_name) < (%(ts)s, %(wf)s, %(inst)s)
      AND (%(instance_name)s::text IS NULL OR r.instance_name = %(instance_name)s)
      AND r.status = ANY(%(statuses)s::text[])
      AND NOT EXISTS (
          SELECT 1 FROM workflow_instances i
          WHERE i.workflow_name = r.workflow_name AND i.instance_name = r.instance_name)
    ORDER BY r.started_at DESC, r.workflow_name DESC, r.instance_name DESC
    LIMIT %(limit)s
)
SELECT * FROM live
UNION ALL
SELECT * FROM finished
ORDER BY 8 DESC, 1 DESC, 2 DESC
LIMIT %(limit)s;

-- name: list_page_workflow
-- list_page for one workflow: the same order, read from the indexes that lead with
-- workflow_name (workflow_instances_workflow_newest, workflow_results_latest_workflow_newest).
-- The row comparisons name workflow_name first so that only those indexes match them: a
-- scan of the other index, filtering on the workflow, would cost as much as the history.
WITH live AS (
    SELECT workflow_name, instance_name, status, parameters, payload, NULL::jsonb AS result,
           NULL::text AS error, started_at, NULL::timestamptz AS ended_at
    FROM workflow_instances
    WHERE %(include_live)s AND workflow_name = %(workflow_name)s
      AND (workflow_name, started_at, instance_name) < (%(workflow_name)s, %(ts)s, %(inst)s)
      AND (%(instance_name)s::text IS NULL OR instance_name = %(instance_name)s)
      AND status = ANY(%(statuses)s::text[])
    ORDER BY workflow_name DESC, started_at DESC, instance_name DESC
    LIMIT %(limit)s
), finished AS (
    SELECT r.workflow_name, r.instance_name, r.status, r.parameters, NULL::jsonb, r.result,
           r.error, r.started_at, r.ended_at
    FROM workflow_results r
    WHERE %(include_finished)s AND r.latest AND r.workflow_name = %(workflow_name)s
      AND (r.workflow_name, r.started_at, r.instance_name)
          < (%(workflow_name)s, %(ts)s, %(inst)s)
      AND (%(instance_name)s::text IS NULL OR r.instance_name = %(instance_name)s)
      AND r.status = ANY(%(statuses)s::text[])
      AND NOT EXISTS (
          SELECT 1 FROM workflow_instances i
          WHERE i.workflow_name = r.workflow_name AND i.instance_name = r.instance_name)
    ORDER BY r.workflow_name DESC, r.started_at DESC, r.instance_name DESC
    LIMIT %(limit)s
)
SELECT * FROM live
UNION ALL
SELECT * FROM finished
ORDER BY 8 DESC, 2 DESC
LIMIT %(limit)s;

-- name: enqueue_workflows
-- Insert many live instances and their start events in one statement, skipping pairs that
-- are live (the caller removed duplicates). Returns the ordinals of the items not inserted,
-- and one NOTIFY per workflow name that got instances.
WITH items AS (
    SELECT * FROM unnest(%(workflow_names)s::text[], %(instance_names)s::text[],
                         %(parameters)s::text[])
        WITH ORDINALITY AS t(workflow_name, instance_name, parameters, ord)
), inserted AS (
    INSERT INTO workflow_instances (workflow_name, instance_name, parameters, trace_context)
    SELECT workflow_name, instance_name, parameters::jsonb, %(trace_context)s::text
    FROM items ORDER BY ord
    ON CONFLICT ON CONSTRAINT workflow_instances_name DO NOTHING
    RETURNING id, workflow_name, instance_name
), start_events AS (
    INSERT INTO workflow_events (instance_id, event_type, workflow_name)
    SELECT id, 'start', workflow_name FROM inserted ORDER BY id
)
SELECT items.ord AS ordinal, NULL::text AS notified
FROM items
WHERE (SELECT count(*) FROM inserted) < %(count)s  -- usually all went in: skip the join
  AND NOT EXISTS (
      SELECT 1 FROM inserted
      WHERE inserted.workflow_name = items.workflow_name
        AND inserted.instance_name = items.instance_name)
UNION ALL
SELECT NULL, pg_notify(%(channel)s, 'e' || w.workflow_name)::text
FROM (SELECT DISTINCT workflow_name FROM inserted) w;

-- name: not_live
-- Which of the given pairs have no live instance (the async client's waiters ask for all of
-- theirs at once).
SELECT p.workflow_name, p.instance_name
FROM unnest(%(workflow_names)s::text[], %(instance_names)s::text[])
    AS p(workflow_name, instance_name)
LEFT JOIN LATERAL (
    SELECT true AS live FROM workflow_instances i
    WHERE i.workflow_name = p.workflow_name AND i.instance_name = p.instance_name
    LIMIT 1
) i ON true
WHERE i.live IS NULL;

-- name: has_events
-- Looks for a pending event of each workflow from the process's floor (floors.py): one index
-- probe per name, in a LATERAL subquery with LIMIT 1 (as a plain EXISTS, a plan made for any
-- parameters hashed every pending event).
SELECT EXISTS (
    SELECT 1 FROM unnest(%(names)s::text[]) AS n(name)
    CROSS JOIN LATERAL (
        SELECT 1 FROM workflow_events e
        WHERE e.workflow_name = n.name AND e.instance_id >= %(floor)s
        LIMIT 1
    ) found
) AS pending;

-- name: lock_instances_with_events
-- Claim instances of the given workflows that have pending events, oldest instance first.
-- The row lock serialises the events of one instance across every process; SKIP LOCKED lets
-- others take the rest. The driver puts one of the two walks below where the pending marker
-- stands (events.py). Either walks pending events from the process's floor (floors.py): below
-- it are only entries of finished instances, which stay until VACUUM. It walks the pending
-- events and looks each instance up, never the other way round: the live instances between
-- the floor and the next pending event (those waiting for their tasks, a million behind a
-- large backlog) have no entry there, while a walk of the primary key would read every one of
-- them on every claim. The lookup locks inside its own subquery, which keeps it a nested loop
-- that stops at the limit.
-- The last row (id NULL) carries the new floor, when the mark passed in is ripe (every
-- transaction that wrote an instance up to mark_id has ended): the lowest live instance of
-- these workflows, capped at mark_id + 1; and a new mark: the highest instance id locked
-- here, with an xid taken after this snapshot.
-- The ids locked are also kept in a transaction-local setting, for fetch_events, which runs
-- next in the same pipeline.
WITH locked AS (
    SELECT i.id, i.workflow_name, i.instance_name, i.parameters, i.payload, i.status,
           i.enqueued_tasks, i.completed_tasks, i.started_at, i.trace_context
    FROM (/*pending*/) pending
    CROSS JOIN LATERAL (
        SELECT * FROM workflow_instances i
        WHERE i.id = pending.instance_id AND (i.workflow_name = ANY(%(names)s)) IS TRUE
        FOR NO KEY UPDATE OF i SKIP LOCKED
    ) i
    ORDER BY pending.instance_id
    LIMIT %(limit)s
), mark AS (
    SELECT max(id) AS mark_id,
           set_config('cereal.locked_instances', coalesce(string_agg(id::text, ','), ''), true)
               AS kept
    FROM locked
)
SELECT locked.*, NULL::bigint AS new_floor, NULL::bigint AS mark_id, NULL::bigint AS mark_xid
FROM locked
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       CASE WHEN %(mark_xid)s::bigint::text::xid8 <= pg_snapshot_xmin(pg_current_snapshot())
            THEN coalesce((
                SELECT i.id FROM workflow_instances i
                WHERE i.id BETWEEN %(floor)s AND %(mark_id)s
                  AND (i.workflow_name = ANY(%(names)s)) IS TRUE
                ORDER BY i.id
                LIMIT 1), %(mark_id)s::bigint + 1)
       END,
       mark.mark_id,
       CASE WHEN mark.mark_id IS NOT NULL THEN pg_current_xact_id()::text::bigint END
FROM mark
WHERE mark.kept IS NOT NULL;  -- always true: makes sure the setting is written

-- name: pending_of_one_workflow
-- The walk of a claim for one workflow: workflow_events_workflow, that workflow's pending
-- events in instance order. The events of other workflows are never read.
SELECT DISTINCT e.instance_id FROM workflow_events e
WHERE e.workflow_name = %(name)s AND e.instance_id >= %(floor)s
ORDER BY e.instance_id;

-- name: pending_of_each_workflow
-- The walk of a claim for several workflows: one walk of workflow_events_workflow per name
-- (the driver writes a pending_of_nth_workflow branch for each position in names), which
-- PostgreSQL merges in instance order as it reads (Merge Append), so a claim stops at its
-- limit and never reads the events of workflows it does not handle: a large backlog of a
-- workflow handled elsewhere costs it nothing.
SELECT DISTINCT u.instance_id FROM (/*branches*/) u
ORDER BY u.instance_id;

-- name: pending_of_nth_workflow
(SELECT e.instance_id FROM workflow_events e
 WHERE e.workflow_name = (%(names)s::text[])[/*n*/] AND e.instance_id >= %(floor)s
 ORDER BY e.instance_id)

-- name: pending_of_workflows
-- The walk of a claim for more workflows than the driver writes branches for:
-- workflow_events_instance, every pending event in instance order; the lookup skips the
-- instances of other workflows, so a large backlog of a workflow handled elsewhere is read
-- through on every claim.
SELECT DISTINCT e.instance_id FROM workflow_events e
WHERE e.instance_id >= %(floor)s
ORDER BY e.instance_id;

-- name: relock_instance
-- Hold on to an instance whose callback is still running after its batch-mates were
-- committed, unless another session holds it now. Whether somebody else handled its events
-- in between is asked by the next statement (event_still_pending).
SELECT i.id
FROM workflow_instances i
WHERE i.id = %(id)s
FOR NO KEY UPDATE OF i SKIP LOCKED;

-- name: event_still_pending
-- Run after relock_instance, so that its snapshot includes every commit made before the lock
-- was taken. (A condition inside the locking statement would be read from that statement's
-- earlier snapshot: a session that handled the event and committed just before the lock
-- would go unseen, and its tasks would be written a second time.)
SELECT EXISTS (SELECT 1 FROM workflow_events e WHERE e.id = %(event_id)s) AS pending;

-- name: fetch_events
-- The oldest pending events of each instance lock_instances_with_events locked, in order.
-- A statement of its own: its snapshot is taken after the locks, so it sees every event
-- committed by the previous holder of each instance (the locking statement's snapshot may
-- predate that commit).
SELECT e.id, e.instance_id, e.event_type, e.enqueued_at, e.task_name, e.task_parameters,
       e.task_status, e.task_error, e.task_result, e.task_attempts, e.task_route, e.signal_name,
       e.signal_payload
FROM unnest(string_to_array(nullif(current_setting('cereal.locked_instances', true), ''),
                            ',')::bigint[]) AS locked(id)
CROSS JOIN LATERAL (
    SELECT * FROM workflow_events ev
    WHERE ev.instance_id = locked.id
    ORDER BY ev.id
    LIMIT %(per_instance)s
) e
ORDER BY e.instance_id, e.id;

-- name: delete_events
DELETE FROM workflow_events WHERE id = ANY(%(ids)s::bigint[]);

-- name: update_instances
-- Store the state of instances that continue. Each row finds its values by its position in
-- ids (see the header).
UPDATE workflow_instances i
SET payload = ((%(payloads)s::text[])[array_position(%(ids)s::bigint[], i.id)])::jsonb,
    status = 'running',
    enqueued_tasks = (%(enqueued)s::int[])[array_position(%(ids)s::bigint[], i.id)],
    completed_tasks = (%(completed)s::int[])[array_position(%(ids)s::bigint[], i.id)],
    updated_at = now()
WHERE i.id = ANY(%(ids)s::bigint[]);

-- name: insert_tasks
-- Write the tasks of continuing instances; start_after uses the database clock.
INSERT INTO tasks (instance_id, task_name, parameters, start_after, trace_context, route)
SELECT t.instance_id, t.task_name, t.parameters::jsonb,
       coalesce(t.start_at, now() + make_interval(secs => t.delay)), t.trace_context, t.route
FROM unnest(%(instance_ids)s::bigint[], %(names)s::text[], %(parameters)s::text[],
            %(start_ats)s::timestamptz[], %(delays)s::float8[], %(trace_contexts)s::text[],
            %(routes)s::text[])
     AS t(instance_id, task_name, parameters, start_at, delay, trace_context, route);

-- name: insert_tasks_claiming
-- insert_tasks, claiming for the committing process (owner) the tasks it can start at once:
-- a task due now whose name is in claim_names is inserted as claim_tasks leaves a claimed
-- first attempt (running, heartbeat now, its policy's max_attempts and retry delay), at most
-- claim_limits of each name, in order, and only while no older task of that name is queued
-- and due (those go first; the look starts at the name's floor, as in claim_tasks, without
-- the full scans). The other tasks are queued and the claimers of their names
-- woken. Returns the claimed rows (the rows with a NULL id carry the wakeups).
WITH t AS (
    SELECT t.*, coalesce(t.start_at, now() + make_interval(secs => t.delay)) AS start_after
    FROM unnest(%(instance_ids)s::bigint[], %(names)s::text[], %(parameters)s::text[],
                %(start_ats)s::timestamptz[], %(delays)s::float8[], %(trace_contexts)s::text[],
                %(routes)s::text[])
         WITH ORDINALITY
         AS t(instance_id, task_name, parameters, start_at, delay, trace_context, route, ord)
), c AS (
    SELECT * FROM unnest(%(claim_names)s::text[], %(claim_limits)s::int[],
                         %(max_attempts)s::int[], %(retry_delays)s::float8[],
                         %(floors)s::timestamptz[])
         AS c(task_name, lim, max_attempts, retry_delay, floor)
    LEFT JOIN LATERAL (
        SELECT true AS due FROM tasks q
        WHERE q.task_name = c.task_name AND q.state = 'queued' AND q.start_after <= now()
          AND q.start_after >= coalesce(c.floor, '-infinity')
        LIMIT 1
    ) q ON true
    WHERE q.due IS NULL
), taken AS (
    SELECT ord, max_attempts, retry_delay
    FROM (
        SELECT t.ord, c.lim, c.max_attempts, c.retry_delay,
               row_number() OVER (PARTITION BY t.task_name ORDER BY t.ord) AS n
        FROM t JOIN c ON c.task_name = t.task_name
        WHERE t.start_after <= now()
    ) d
    WHERE n <= lim
), ins AS (
    INSERT INTO tasks (instance_id, task_name, parameters, start_after, trace_context, route,
                       state, claimed_by, heartbeat_at, max_attempts, retry_delay)
    SELECT t.instance_id, t.task_name, t.parameters::jsonb, t.start_after, t.trace_context,
           t.route,
           CASE WHEN taken.ord IS NULL THEN 'queued' ELSE 'running' END,
           CASE WHEN taken.ord IS NULL THEN NULL ELSE %(owner)s::text END,
           CASE WHEN taken.ord IS NULL THEN NULL ELSE now() END,
           coalesce(taken.max_attempts, 1), taken.retry_delay
    FROM t LEFT JOIN taken ON taken.ord = t.ord
    ORDER BY t.ord
    RETURNING id, instance_id, task_name, parameters, enqueued_at, attempt, max_attempts,
              trace_context, state, start_after
)
SELECT id, instance_id, task_name, parameters, enqueued_at, attempt, max_attempts,
       trace_context, start_after, NULL::text AS notified
FROM ins WHERE state = 'running'
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       pg_notify(%(channel)s, 't' || q.task_name)::text
FROM (SELECT DISTINCT task_name FROM ins WHERE state = 'queued') q;

-- name: finish_instances
-- Move finished instances to history; their tasks and events go with them (cascade). Each
-- row finds its outcome by its position k in ids (see the header).
WITH gone AS (
    DELETE FROM workflow_instances i
    WHERE i.id = ANY(%(ids)s::bigint[])
    RETURNING i.id, i.workflow_name, i.instance_name, i.parameters, i.started_at,
              array_position(%(ids)s::bigint[], i.id) AS k
), recorded AS (
    INSERT INTO workflow_results
        (workflow_name, instance_name, parameters, status, result, error, started_at)
    SELECT workflow_name, instance_name, parameters, (%(statuses)s::text[])[k],
           ((%(results)s::text[])[k])::jsonb, (%(errors)s::text[])[k], started_at
    FROM gone ORDER BY id
)
SELECT id, now() AS ended_at FROM gone;

-- name: notify
SELECT pg_notify(%(channel)s, payload) FROM unnest(%(payloads)s::text[]) AS p(payload);

-- name: claim_tasks
-- Claim up to lim due tasks of each name for this process, oldest due first. The last row
-- (id NULL) carries the seconds until the next queued task of these names becomes due.
-- Each row keeps its name's retry policy for this attempt: max_attempts, and the delay
-- min(initial * backoff ^ (attempt - 1), max_delay), compared in logarithms first so that
-- no power overflows. Each name's scan starts at its floor (NULL: from the lowest key), as
-- floors.py explains; claimed rows report their start_after so the process can move it.
-- The rows picked travel to the update as arrays in wanted's one row, not as a relation to
-- join by id (see the header).
WITH w AS (
    SELECT * FROM unnest(%(names)s::text[], %(limits)s::int[], %(max_attempts)s::int[],
                         %(initials)s::float8[], %(backoffs)s::float8[],
                         %(max_delays)s::float8[], %(floors)s::timestamptz[])
        AS w(name, lim, max_attempts, initial, backoff, max_delay, floor)
), wanted AS (
    SELECT array_agg(t.id) AS ids, array_agg(i.workflow_name) AS workflows,
           array_agg(i.instance_name) AS instances
    FROM w
    CROSS JOIN LATERAL (
        SELECT id, instance_id FROM tasks
        WHERE task_name = w.name AND state = 'queued' AND start_after <= now()
          AND start_after >= coalesce(w.floor, '-infinity')
        ORDER BY start_after, id
        LIMIT w.lim
        FOR UPDATE SKIP LOCKED
    ) t
    CROSS JOIN LATERAL (
        SELECT workflow_name, instance_name FROM workflow_instances
        WHERE id = t.instance_id
        LIMIT 1
    ) i
), claimed AS (
    UPDATE tasks t
    SET state = 'running', claimed_by = %(owner)s, heartbeat_at = now(),
        max_attempts = w.max_attempts,
        retry_delay = CASE
            WHEN t.attempt >= w.max_attempts THEN NULL
            WHEN w.initial = 0 OR w.max_delay = 0 THEN 0
            WHEN ln(w.initial) + (t.attempt - 1) * ln(w.backoff) >= ln(w.max_delay)
                THEN w.max_delay
            ELSE least(w.initial * power(w.backoff, t.attempt - 1), w.max_delay)
        END
    FROM wanted, w
    WHERE t.id = ANY(wanted.ids) AND w.name = t.task_name
    RETURNING t.id, t.instance_id, t.task_name, t.parameters, t.enqueued_at,
              wanted.workflows[array_position(wanted.ids, t.id)] AS workflow_name,
              wanted.instances[array_position(wanted.ids, t.id)] AS instance_name,
              t.attempt, t.max_attempts, t.trace_context, t.start_after
)
SELECT id, instance_id, task_name, parameters, enqueued_at, workflow_name, instance_name,
       attempt, max_attempts, trace_context, start_after, NULL::float8 AS next_due_in
FROM claimed
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       (SELECT extract(epoch FROM min(start_after) - now())::float8 FROM tasks
        WHERE task_name = ANY(%(names)s) AND state = 'queued' AND start_after > now());

-- name: hold_instances_of_tasks
-- The first statement of complete_tasks_held (events.py): lock, as a claim would, the live
-- instances of the given workflows that have tasks running for this owner among the finished
-- ones, skipping those another session holds. It takes no task row lock, and waits for nobody.
-- The ids locked go to two settings: cereal.quiet_instances for this transaction
-- (complete_tasks wakes nobody for their events) and cereal.held_instances for the session
-- (relock_held_instances reads it in the next transaction). The last row (id NULL) only makes
-- sure both are written.
WITH locked AS (
    SELECT i.id
    FROM (SELECT DISTINCT t.instance_id FROM tasks t
          WHERE t.id = ANY(%(ids)s::bigint[])
            AND t.state = 'running' AND t.claimed_by = %(owner)s) w
    CROSS JOIN LATERAL (
        SELECT i.id FROM workflow_instances i
        WHERE i.id = w.instance_id AND (i.workflow_name = ANY(%(names)s)) IS TRUE
        FOR NO KEY UPDATE OF i SKIP LOCKED
    ) i
), mark AS (
    SELECT set_config('cereal.held_instances', ids, false) AS held,
           set_config('cereal.quiet_instances', ids, true) AS quiet
    FROM (SELECT coalesce(string_agg(id::text, ','), '') AS ids FROM locked) l
)
SELECT locked.id FROM locked
UNION ALL
SELECT NULL FROM mark
WHERE mark.held IS NOT NULL AND mark.quiet IS NOT NULL;  -- always true: both are written

-- name: relock_held_instances
-- The second transaction of complete_tasks_held and enqueue_and_hold (events.py): lock
-- again the instances hold_instances_of_tasks locked (or enqueue_holding inserted) before the
-- commit, unless another session took one in between (it then handles the new events itself:
-- it locked after they were committed). The ids locked go to the transaction-local setting
-- fetch_events reads.
WITH locked AS (
    SELECT i.id, i.workflow_name, i.instance_name, i.parameters, i.payload, i.status,
           i.enqueued_tasks, i.completed_tasks, i.started_at, i.trace_context
    FROM unnest(string_to_array(nullif(current_setting('cereal.held_instances', true), ''),
                                ',')::bigint[]) AS h(id)
    CROSS JOIN LATERAL (
        SELECT * FROM workflow_instances i
        WHERE i.id = h.id
        FOR NO KEY UPDATE OF i SKIP LOCKED
    ) i
    ORDER BY i.id
), mark AS (
    SELECT set_config('cereal.locked_instances', coalesce(string_agg(id::text, ','), ''), true)
               AS kept
    FROM locked
)
SELECT locked.* FROM locked
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
FROM mark
WHERE mark.kept IS NOT NULL;  -- always true: makes sure the setting is written

-- name: lock_instances_of_tasks
-- Run first in the transactions that delete task rows and then insert events for their
-- instances (complete_tasks, reap_lost_tasks): the instances' key-share locks come before any
-- task row lock. Taken the other way round, the foreign-key check of the event insert waited
-- for a kill or a finishing decision that held the instance and was itself waiting, in its
-- cascade, for the task row: a deadlock.
SELECT i.id
FROM workflow_instances i
WHERE i.id = ANY(ARRAY(SELECT t.instance_id FROM tasks t WHERE t.id = ANY(%(ids)s::bigint[])))
ORDER BY i.id
FOR KEY SHARE OF i;

-- name: lock_instances_of_silent_tasks
-- lock_instances_of_tasks for reap_lost_tasks, for the tasks it is about to look at.
SELECT i.id
FROM workflow_instances i
WHERE i.id = ANY(ARRAY(
    SELECT t.instance_id FROM tasks t
    WHERE t.state = 'running' AND t.heartbeat_at < now() - make_interval(secs => %(timeout)s)))
ORDER BY i.id
FOR KEY SHARE OF i;

-- name: complete_tasks
-- Record finished tasks as task_complete events and wake the event handlers of their
-- workflows, in one statement. A task whose row is gone (its workflow finished, or it was
-- reported lost) is discarded: each task reports exactly once. The instances this
-- transaction listed in cereal.quiet_instances (hold_instances_of_tasks: it locks them again
-- right after the commit, to handle their events itself) wake nobody.
-- Each deleted row finds its outcome by its position k in ids (see the header).
WITH done AS (
    DELETE FROM tasks t
    WHERE t.id = ANY(%(ids)s::bigint[]) AND t.state = 'running' AND t.claimed_by = %(owner)s
    RETURNING t.id, t.instance_id, t.task_name, t.parameters, t.enqueued_at, t.attempt,
              t.route, array_position(%(ids)s::bigint[], t.id) AS k
), ev AS (
    INSERT INTO workflow_events (instance_id, event_type, workflow_name, task_id, task_name,
                                 task_parameters, task_enqueued_at, task_status, task_error,
                                 task_result, task_attempts, task_route)
    SELECT instance_id, 'task_complete', (%(workflows)s::text[])[k], id, task_name,
           parameters, enqueued_at, (%(statuses)s::text[])[k], (%(errors)s::text[])[k],
           ((%(results)s::text[])[k])::jsonb, attempt, route
    FROM done ORDER BY id
), quiet AS (
    SELECT string_to_array(nullif(current_setting('cereal.quiet_instances', true), ''),
                           ',')::bigint[] AS ids
)
SELECT done.id, CASE WHEN done.instance_id = ANY(quiet.ids) THEN NULL
                     ELSE pg_notify(%(channel)s, 'e' || (%(workflows)s::text[])[done.k]) END
FROM done CROSS JOIN quiet;

-- name: complete_tasks_retrying
-- complete_tasks for a batch where some outcomes ask for a retry: a row whose stored policy
-- has attempts left goes back to the queue as its next attempt, due after the delay stored
-- at claim, instead of becoming an event, and the claimers of its name are woken. Outcomes
-- are found by position, as in complete_tasks.
WITH requeued AS (
    UPDATE tasks t
    SET state = 'queued', claimed_by = NULL, heartbeat_at = NULL, attempt = t.attempt + 1,
        start_after = now() + make_interval(secs => t.retry_delay)
    WHERE t.id = ANY(%(ids)s::bigint[]) AND t.state = 'running' AND t.claimed_by = %(owner)s
      AND (%(retries)s::bool[])[array_position(%(ids)s::bigint[], t.id)]
      AND t.attempt < t.max_attempts
    RETURNING t.id, t.task_name
), done AS (
    DELETE FROM tasks t
    WHERE t.id = ANY(%(ids)s::bigint[]) AND t.state = 'running' AND t.claimed_by = %(owner)s
      AND NOT ((%(retries)s::bool[])[array_position(%(ids)s::bigint[], t.id)]
               AND t.attempt < t.max_attempts)
    RETURNING t.id, t.instance_id, t.task_name, t.parameters, t.enqueued_at, t.attempt,
              t.route, array_position(%(ids)s::bigint[], t.id) AS k
), ev AS (
    INSERT INTO workflow_events (instance_id, event_type, workflow_name, task_id, task_name,
                                 task_parameters, task_enqueued_at, task_status, task_error,
                                 task_result, task_attempts, task_route)
    SELECT instance_id, 'task_complete', (%(workflows)s::text[])[k], id, task_name,
           parameters, enqueued_at, (%(statuses)s::text[])[k], (%(errors)s::text[])[k],
           ((%(results)s::text[])[k])::jsonb, attempt, route
    FROM done ORDER BY id
)
SELECT id, pg_notify(%(channel)s, 'e' || (%(workflows)s::text[])[k]) FROM done
UNION ALL
SELECT id, pg_notify(%(channel)s, 't' || task_name) FROM requeued;

-- name: heartbeat_tasks
-- Prove that this process's running tasks are alive; rows missing from the answer are gone.
UPDATE tasks SET heartbeat_at = now()
WHERE id = ANY(%(ids)s) AND state = 'running' AND claimed_by = %(owner)s
RETURNING id;

-- name: release_tasks
-- Put claimed tasks that never started back in the queue (a stopping process).
WITH released AS (
    UPDATE tasks SET state = 'queued', claimed_by = NULL, heartbeat_at = NULL
    WHERE id = ANY(%(ids)s) AND state = 'running' AND claimed_by = %(owner)s
    RETURNING task_name
)
SELECT DISTINCT task_name FROM released;

-- name: release_unknown_tasks
-- Claims this owner never learned of (their COMMIT went through while its connection was
-- lost): running for it, not among the tasks it knows, and never heartbeated since the claim.
-- Back to the queue as the same attempt, long before the lost-task reaper would report them.
-- The heartbeat index finds them (every task the owner knows was heartbeated just now).
WITH released AS (
    UPDATE tasks SET state = 'queued', claimed_by = NULL, heartbeat_at = NULL
    WHERE state = 'running' AND heartbeat_at < now() - make_interval(secs => %(older_than)s)
      AND claimed_by = %(owner)s AND id <> ALL(%(known)s::bigint[])
    RETURNING task_name
)
SELECT task_name, count(*) AS released FROM released GROUP BY task_name;

-- name: reap_lost_tasks
-- Handle running tasks that went silent, exactly once: those whose stored policy has
-- attempts left go back to the queue as their next attempt, due after the delay stored at
-- claim; the others are reported lost. Only tasks of the instances that
-- lock_instances_of_silent_tasks locked (instances) are handled.
WITH silent AS (
    SELECT id FROM tasks
    WHERE state = 'running' AND heartbeat_at < now() - make_interval(secs => %(timeout)s)
      AND instance_id = ANY(%(instances)s::bigint[])
    ORDER BY heartbeat_at
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
), requeued AS (
    UPDATE tasks t
    SET state = 'queued', claimed_by = NULL, heartbeat_at = NULL, attempt = t.attempt + 1,
        start_after = now() + make_interval(secs => t.retry_delay)
    WHERE t.id = ANY(ARRAY(SELECT id FROM silent))
      AND t.attempt < t.max_attempts
    RETURNING t.task_name
), lost AS (
    DELETE FROM tasks t
    WHERE t.id = ANY(ARRAY(SELECT id FROM silent))
      AND t.attempt >= t.max_attempts
    RETURNING t.id, t.instance_id, t.task_name, t.parameters, t.enqueued_at, t.attempt,
              t.route
), ev AS (
    INSERT INTO workflow_events (instance_id, event_type, workflow_name, task_id, task_name,
                                 task_parameters, task_enqueued_at, task_status, task_error,
                                 task_attempts, task_route)
    SELECT lost.instance_id, 'task_complete', i.workflow_name, lost.id, lost.task_name,
           lost.parameters, lost.enqueued_at, 'lost', %(error)s, lost.attempt, lost.route
    FROM lost CROSS JOIN LATERAL (
        SELECT workflow_name FROM workflow_instances WHERE id = lost.instance_id LIMIT 1) i
    ORDER BY lost.id
    RETURNING workflow_name
)
-- One row per task handled (the caller counts them), with the payload of its wakeup.
SELECT 'e' || workflow_name AS wakeup FROM ev
UNION ALL
SELECT 't' || task_name FROM requeued;

-- name: warm_up_allowed
-- Whether this session may run the warm-up's writes: the tables exist, the role may write
-- them, and the server and session are not read-only. (Trying and failing would put an error
-- in the server's log for every connection a read-only role opens.)
SELECT coalesce(
           has_table_privilege(to_regclass('workflow_instances'), 'INSERT, DELETE')
           AND has_table_privilege(to_regclass('workflow_events'), 'INSERT')
           AND has_table_privilege(to_regclass('tasks'), 'INSERT')
           AND has_table_privilege(to_regclass('workflow_results'), 'INSERT'),
           false)
       AND NOT pg_is_in_recovery()
       AND current_setting('transaction_read_only') = 'off' AS allowed;

-- name: warm_up_writes
-- Run by each new pooled connection inside a transaction that is rolled back (connections.py):
-- the writes of a workflow's life, under a name no caller can use (longer than names may be),
-- so that the backend has built what it keeps for them before the connection is lent: the
-- foreign-key checks of events and tasks, the statement trigger of workflow_results, and the
-- sequences. Without it, the first workflows a manager runs wait for that on each connection.
WITH instance AS (
    INSERT INTO workflow_instances (workflow_name, instance_name)
    VALUES (%(name)s, %(name)s)
    RETURNING id
), event AS (
    INSERT INTO workflow_events (instance_id, event_type, workflow_name)
    SELECT id, 'start', %(name)s FROM instance
), task AS (
    INSERT INTO tasks (instance_id, task_name) SELECT id, %(name)s FROM instance
), run AS (
    INSERT INTO workflow_results (workflow_name, instance_name, status, started_at)
    VALUES (%(name)s, %(name)s, 'completed', now())
)
SELECT id FROM instance;

-- name: warm_up_cascade
-- The second statement of the warm-up: the cascade that deletes a finished instance's rows.
DELETE FROM workflow_instances WHERE id = %(id)s;

-- name: db_now
SELECT now() AS now;

-- name: insert_schedule
INSERT INTO workflow_schedules
    (workflow_name, instance_name, parameters, recurrence, enabled, next_due_at)
VALUES (%(workflow_name)s, %(instance_name)s, %(parameters)s::jsonb, %(recurrence)s,
        %(enabled)s, %(next_due_at)s)
ON CONFLICT ON CONSTRAINT workflow_schedules_name DO NOTHING
RETURNING id;

-- name: lock_schedule
SELECT id, parameters, recurrence, enabled, next_due_at
FROM workflow_schedules
WHERE workflow_name = %(workflow_name)s AND instance_name = %(instance_name)s
FOR UPDATE;

-- name: update_schedule
UPDATE workflow_schedules
SET parameters = %(parameters)s::jsonb, recurrence = %(recurrence)s, enabled = %(enabled)s,
    next_due_at = %(next_due_at)s, updated_at = now()
WHERE id = %(id)s;

-- name: delete_schedule
DELETE FROM workflow_schedules
WHERE workflow_name = %(workflow_name)s AND instance_name = %(instance_name)s
RETURNING id;

-- name: select_schedules
-- Schedules with the start and end of their latest finished run, and the database's clock.
SELECT s.workflow_name, s.instance_name, s.parameters, s.recurrence, s.enabled,
       s.next_due_at, s.last_enqueued_at, r.started_at AS last_start, r.ended_at AS last_end,
       clock_timestamp() AS read_at
FROM workflow_schedules s
LEFT JOIN LATERAL (
    SELECT started_at, ended_at FROM workflow_results wr
    WHERE wr.workflow_name = s.workflow_name AND wr.instance_name = s.instance_name
    ORDER BY wr.id DESC
    LIMIT 1
) r ON true
WHERE (%(workflow_name)s::text IS NULL OR s.workflow_name = %(workflow_name)s)
  AND (%(instance_name)s::text IS NULL OR s.instance_name = %(instance_name)s)
ORDER BY s.workflow_name, s.instance_name;

-- name: lock_due_schedule
-- The most overdue enabled schedule nobody else is handling, with the database's clock.
SELECT id, workflow_name, instance_name, parameters, recurrence, next_due_at AS due_at,
       now() AS now
FROM workflow_schedules
WHERE enabled AND next_due_at <= now()
ORDER BY next_due_at, id
LIMIT 1
FOR UPDATE SKIP LOCKED;

-- name: schedule_ran
UPDATE workflow_schedules
SET next_due_at = %(next_due_at)s, enabled = %(enabled)s,
    last_enqueued_at = CASE WHEN %(enqueued)s THEN now() ELSE last_enqueued_at END,
    updated_at = now()
WHERE id = %(id)s;

-- name: disable_schedule
UPDATE workflow_schedules SET enabled = false, updated_at = now() WHERE id = %(id)s;

-- name: next_schedule_in
-- Seconds until the next enabled schedule is due (negative when overdue).
SELECT extract(epoch FROM min(next_due_at) - now())::float8 AS seconds
FROM workflow_schedules WHERE enabled;

-- name: lock_queue_vacuum
-- One process per schema vacuums the queue tables at a time (a session lock: VACUUM runs
-- outside transactions).
SELECT pg_try_advisory_lock(%(lock_ns)s, hashtext(%(lock_key)s)) AS locked;

-- name: unlock_queue_vacuum
SELECT pg_advisory_unlock(%(lock_ns)s, hashtext(%(lock_key)s)) AS unlocked;

-- name: queue_tables_to_vacuum
-- The tables of this schema that need upkeep, from the cumulative statistics (which trail
-- the last second or so of writes): VACUUM for queue tables with at least min_dead dead
-- rows, ANALYZE for any table changed by at least min_changed rows and a fifth of its size
-- since its statistics were taken. Without statistics (a new schema, autovacuum off or not
-- yet there) the planner guesses that a workflow name matches a few rows: it plans claims
-- to read and sort every live instance of the workflow instead of walking from the floor,
-- and a page of one workflow's runs to read and sort all of them (30 ms against 1.6 ms at
-- 300,000 runs). History is only analysed here: vacuuming it is autovacuum's work.
SELECT relname, vacuum_due, analyze_due
FROM (
    SELECT relname, n_dead_tup,
           relname <> 'workflow_results' AND n_dead_tup >= %(min_dead)s AS vacuum_due,
           n_mod_since_analyze >= greatest(%(min_changed)s, n_live_tup / 5) AS analyze_due
    FROM pg_stat_user_tables
    WHERE schemaname = %(schema)s
      AND relname IN ('workflow_instances', 'workflow_events', 'tasks', 'workflow_results')
) queue
WHERE vacuum_due OR analyze_due
ORDER BY n_dead_tup DESC;

-- name: prune_history
-- Delete finished runs older than max_age seconds or beyond the newest max_runs, at most
-- 10000 (PRUNE_BATCH) a call, by one process at a time (the others skip this round). Each rule reads its
-- own index from the oldest end (workflow_results_ended, the primary key) and stops at the
-- first run it keeps, so a call costs what it deletes, not the size of history.
WITH pruner AS (
    SELECT pg_try_advisory_xact_lock(%(lock_ns)s, hashtext(%(lock_key)s)) AS ok
), boundary AS (
    SELECT id FROM workflow_results
    WHERE %(max_runs)s::bigint IS NOT NULL
    ORDER BY id DESC OFFSET %(max_runs)s LIMIT 1
), expired AS (
    SELECT id FROM workflow_results
    WHERE (SELECT ok FROM pruner) AND %(max_age)s::float8 IS NOT NULL
      AND ended_at < now() - make_interval(secs => %(max_age)s::float8)
    ORDER BY ended_at
    LIMIT 10000
), excess AS (
    SELECT id FROM workflow_results
    WHERE (SELECT ok FROM pruner) AND id <= (SELECT id FROM boundary)
    ORDER BY id
    LIMIT 10000
), pruned AS (
    DELETE FROM workflow_results
    WHERE id IN (SELECT id FROM expired UNION SELECT id FROM excess LIMIT 10000)
    RETURNING 1
)
SELECT (SELECT ok FROM pruner) AS locked, count(*) AS pruned FROM pruned;
