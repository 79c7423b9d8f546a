-- Read-only statements behind the dashboard and the metrics. Each
-- starts with a "-- name:" line; the connection's search_path points at the cereal schema.
-- Columns added by later migrations are read through to_jsonb(row) so that these views work
-- on every schema version.

-- name: overview
-- Every dashboard count in one statement (one snapshot, one round trip). A running task is
-- stale when its heartbeat is older than stale_after seconds; an enabled schedule is overdue
-- when its next run is due (the scheduler has not run it yet).
SELECT
    now(),
    (SELECT coalesce(json_agg(json_build_array(workflow_name, status, n)), '[]'::json)
     FROM (SELECT workflow_name, status, count(*) AS n
           FROM workflow_instances GROUP BY workflow_name, status) live),
    (SELECT coalesce(json_agg(json_build_array(workflow_name, status, n)), '[]'::json)
     FROM (SELECT workflow_name, status, count(*) AS n
           FROM workflow_results GROUP BY workflow_name, status) finished),
    (SELECT coalesce(json_agg(json_build_array(task_name, queued, running, oldest, stale)
                              ORDER BY task_name), '[]'::json)
     FROM (SELECT task_name,
                  count(*) FILTER (WHERE state = 'queued') AS queued,
                  count(*) FILTER (WHERE state = 'running') AS running,
                  extract(epoch FROM now() - min(start_after)
                      FILTER (WHERE state = 'queued' AND start_after <= now()))::float8 AS oldest,
                  count(*) FILTER (WHERE state = 'running' AND heartbeat_at
                      < now() - make_interval(secs => %(stale_after)s::float8)) AS stale
           FROM tasks GROUP BY task_name) per_task),
    (SELECT count(*) FROM workflow_schedules),
    (SELECT count(*) FROM workflow_schedules
     WHERE enabled AND next_due_at <= now());

-- name: recent_failures
-- The newest failed runs (partial index workflow_results_failed).
SELECT workflow_name, instance_name, status, parameters, result, error, started_at, ended_at
FROM workflow_results
WHERE status = 'failed'
ORDER BY id DESC
LIMIT %(limit)s;

-- name: timeline_instance
-- The live instance of a pair, with the database's clock.
SELECT now(), i.id, i.enqueued_tasks, i.completed_tasks, i.updated_at
FROM (SELECT 1) one
LEFT JOIN workflow_instances i
    ON i.workflow_name = %(workflow_name)s AND i.instance_name = %(instance_name)s;

-- name: timeline_events
-- Pending events of the live instance, oldest first.
SELECT e.id, e.event_type, e.enqueued_at, e.task_name, e.task_status, e.task_error,
       to_jsonb(e) ->> 'signal_name'
FROM workflow_events e
WHERE e.instance_id = %(instance_id)s
ORDER BY e.id
LIMIT %(limit)s;

-- name: timeline_tasks
-- Queued and running tasks of the live instance, oldest first.
SELECT t.id, t.task_name, t.state, t.parameters, t.enqueued_at, t.start_after, t.claimed_by,
       extract(epoch FROM now() - t.heartbeat_at)::float8, t.attempt, t.max_attempts
FROM tasks t
WHERE t.instance_id = %(instance_id)s
ORDER BY t.id
LIMIT %(limit)s;

-- name: timeline_runs
-- Finished runs of the pair kept in history, newest first.
SELECT workflow_name, instance_name, status, parameters, result, error, started_at, ended_at
FROM workflow_results
WHERE workflow_name = %(workflow_name)s AND instance_name = %(instance_name)s
ORDER BY id DESC
LIMIT %(limit)s;
