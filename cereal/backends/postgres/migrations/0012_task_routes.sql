-- A task may carry a route: an opaque tag its workflow gave it, returned with its result. The
-- chain and parallel patterns route a result to the sub-workflow that enqueued the task with
-- it, without touching the task's parameters or keeping a table in the instance's payload.
ALTER TABLE tasks ADD COLUMN route text;

ALTER TABLE workflow_events ADD COLUMN task_route text;
