-- The dashboard's recent failures: the newest failed runs without scanning the history.
CREATE INDEX workflow_results_failed ON workflow_results (id) WHERE status = 'failed';
