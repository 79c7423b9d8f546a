-- Live workflow instances: one row per (workflow_name, instance_name) while it runs.
CREATE TABLE workflow_instances (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_name   text NOT NULL,
    instance_name   text NOT NULL,
    parameters      jsonb,
    payload         jsonb,
    status          text NOT NULL DEFAULT 'starting' CHECK (status IN ('starting', 'running')),
    enqueued_tasks  integer NOT NULL DEFAULT 0,
    completed_tasks integer NOT NULL DEFAULT 0,
    started_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT workflow_instances_name UNIQUE (workflow_name, instance_name)
);

-- The event queue. Task results travel inside their task_complete event.
CREATE TABLE workflow_events (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id      bigint NOT NULL REFERENCES workflow_instances (id) ON DELETE CASCADE,
    event_type       text NOT NULL CHECK (event_type IN ('start', 'task_complete', 'cancel')),
    enqueued_at      timestamptz NOT NULL DEFAULT now(),
    task_id          bigint,
    task_name        text,
    task_parameters  jsonb,
    task_enqueued_at timestamptz,
    task_status      text CHECK (task_status IN ('success', 'failed', 'lost')),
    task_error       text,
    task_result      jsonb
);
-- Event dequeue: the next events of a locked instance, in id order.
CREATE INDEX workflow_events_instance ON workflow_events (instance_id, id);

-- Queued and running tasks. A finished task is deleted and becomes a task_complete event.
CREATE TABLE tasks (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id  bigint NOT NULL REFERENCES workflow_instances (id) ON DELETE CASCADE,
    task_name    text NOT NULL,
    parameters   jsonb,
    state        text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running')),
    enqueued_at  timestamptz NOT NULL DEFAULT now(),
    start_after  timestamptz NOT NULL DEFAULT now(),
    claimed_by   text,
    heartbeat_at timestamptz
);
-- Task dequeue by name, oldest due first.
CREATE INDEX tasks_queued ON tasks (task_name, start_after, id) WHERE state = 'queued';
-- Lost-task detection.
CREATE INDEX tasks_running ON tasks (heartbeat_at) WHERE state = 'running';
-- Cascade deletes when an instance finishes.
CREATE INDEX tasks_instance ON tasks (instance_id);

-- History: one row per finished run.
CREATE TABLE workflow_results (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_name text NOT NULL,
    instance_name text NOT NULL,
    parameters    jsonb,
    status        text NOT NULL CHECK (status IN ('completed', 'failed')),
    result        jsonb,
    error         text,
    started_at    timestamptz NOT NULL,
    ended_at      timestamptz NOT NULL DEFAULT now()
);
-- Latest run of a pair (get, list, schedules' last run).
CREATE INDEX workflow_results_name ON workflow_results (workflow_name, instance_name, id DESC);
-- Retention by age.
CREATE INDEX workflow_results_ended ON workflow_results (ended_at);
