-- The dashboard's and the metrics' counts of finished runs per workflow and status: an
-- index-only scan instead of reading every history row.
CREATE INDEX workflow_results_counts ON workflow_results (workflow_name, status);
-- The dashboard's recent failures: the newest failed runs without scanning the history.
CREATE INDEX workflow_results_failed ON workflow_results (id) WHERE status = 'failed';
