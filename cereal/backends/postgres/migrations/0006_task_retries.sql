-- Task retries. A claim stores what a retry of that attempt needs in the row (how many
-- attempts the policy allows and the delay after this one), so that whichever process
-- records the outcome, or reaps the attempt as lost, can queue the next attempt without
-- knowing the policy. Columns with constant defaults: no table rewrite.
ALTER TABLE tasks
    ADD COLUMN attempt      integer NOT NULL DEFAULT 1,
    ADD COLUMN max_attempts integer NOT NULL DEFAULT 1,
    ADD COLUMN retry_delay  float8;

-- Attempts made, carried to TaskResult.attempts (NULL for events of other kinds).
ALTER TABLE workflow_events ADD COLUMN task_attempts integer;
