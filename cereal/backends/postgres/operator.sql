-- Read-only statements for operators (the CLI and dashboards), loaded by operator_views.py.

-- name: list_tasks
-- Queued and running tasks of live instances, oldest first, with the age of the last heartbeat.
SELECT t.id, t.task_name, i.workflow_name, i.instance_name, t.state, t.parameters,
       t.enqueued_at, t.start_after, t.claimed_by,
       CASE WHEN t.state = 'running' AND t.heartbeat_at IS NOT NULL
            THEN extract(epoch FROM now() - t.heartbeat_at)::float8 END AS heartbeat_age,
       t.attempt, t.max_attempts
FROM tasks t
JOIN workflow_instances i ON i.id = t.instance_id
WHERE (%(task_name)s::text IS NULL OR t.task_name = %(task_name)s)
  AND (%(workflow_name)s::text IS NULL OR i.workflow_name = %(workflow_name)s)
  AND (%(instance_name)s::text IS NULL OR i.instance_name = %(instance_name)s)
ORDER BY t.enqueued_at, t.id
LIMIT %(limit)s;

-- name: schema_exists
SELECT to_regclass(format('%%I.schema_migrations', %(schema)s::text)) IS NOT NULL;

-- name: ping
SELECT 1;
