-- Paged listings of failed runs (status=failed), newest first, read one page from these
-- instead of sorting every failed run in history (workflow_results_failed is in id order).
-- Only latest failed runs are in them: one run in a hundred is a small index.
CREATE INDEX workflow_results_failed_newest
    ON workflow_results (started_at, workflow_name, instance_name)
    WHERE latest AND status = 'failed';
CREATE INDEX workflow_results_failed_workflow_newest
    ON workflow_results (workflow_name, started_at, instance_name)
    WHERE latest AND status = 'failed';
