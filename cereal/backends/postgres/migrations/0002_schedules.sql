-- Recurring schedules: each enqueues (workflow_name, instance_name) at every occurrence.
CREATE TABLE workflow_schedules (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_name    text NOT NULL,
    instance_name    text NOT NULL,
    parameters       jsonb,
    recurrence       text NOT NULL,
    enabled          boolean NOT NULL DEFAULT true,
    next_due_at      timestamptz,
    last_enqueued_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT workflow_schedules_name UNIQUE (workflow_name, instance_name),
    CONSTRAINT workflow_schedules_due_when_enabled CHECK (NOT enabled OR next_due_at IS NOT NULL)
);
-- The scheduler's due query and its sleep computation.
CREATE INDEX workflow_schedules_due ON workflow_schedules (next_due_at, id) WHERE enabled;
