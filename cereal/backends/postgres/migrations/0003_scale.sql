-- Keep costs flat as live instances and history grow: paged listings walk indexes in
-- "newest first" order, and history knows which run of each pair is the latest one.

-- The latest finished run of each (workflow_name, instance_name) is the one with the highest
-- id. Marking it lets a listing read one row per pair from a partial index instead of
-- sorting the whole history (DISTINCT ON) on every call.
ALTER TABLE workflow_results ADD COLUMN latest boolean NOT NULL DEFAULT true;

UPDATE workflow_results r SET latest = false
WHERE EXISTS (
    SELECT 1 FROM workflow_results newer
    WHERE newer.workflow_name = r.workflow_name AND newer.instance_name = r.instance_name
      AND newer.id > r.id);

-- Whatever statement records runs (finishing a batch, kill, a future path), the previous
-- latest run of each pair it recorded stops being the latest. One call per statement; each
-- new row costs one probe of workflow_results_name.
CREATE FUNCTION workflow_results_supersede() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE workflow_results SET latest = false
    WHERE id = ANY (ARRAY(
        SELECT prev.id
        FROM new_runs n
        CROSS JOIN LATERAL (
            SELECT r.id FROM workflow_results r
            WHERE r.workflow_name = n.workflow_name AND r.instance_name = n.instance_name
              AND r.id < n.id AND r.latest
        ) prev))
      AND latest;
    RETURN NULL;
END
$$;

CREATE TRIGGER workflow_results_supersede
    AFTER INSERT ON workflow_results
    REFERENCING NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION workflow_results_supersede();

-- Paged listings, newest first: ordered by (started_at, workflow_name, instance_name)
-- descending. The pair is unique among listed rows and does not change when a live
-- instance finishes (its run keeps started_at), so a cursor stays valid across that move.
CREATE INDEX workflow_instances_newest
    ON workflow_instances (started_at, workflow_name, instance_name);
CREATE INDEX workflow_instances_workflow_newest
    ON workflow_instances (workflow_name, started_at, instance_name);
CREATE INDEX workflow_results_latest_newest
    ON workflow_results (started_at, workflow_name, instance_name) WHERE latest;
CREATE INDEX workflow_results_latest_workflow_newest
    ON workflow_results (workflow_name, started_at, instance_name) WHERE latest;

-- Live instances are updated after every callback (payload, status, counters: no indexed
-- column), and events and tasks are inserted and deleted all day. Free space in each page
-- keeps those updates HOT (no index writes), and vacuuming these small, hot queue tables
-- after a fixed number of changes, rather than a fraction of their size, keeps dead
-- tuples from piling up under a large backlog.
ALTER TABLE workflow_instances SET (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0.0,
    autovacuum_vacuum_insert_threshold = 20000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 1
);
ALTER TABLE workflow_events SET (
    autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0.0,
    autovacuum_vacuum_insert_threshold = 20000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 1
);
ALTER TABLE tasks SET (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0.0,
    autovacuum_vacuum_insert_threshold = 20000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 1
);
-- History is append-mostly and large: vacuum it for its inserts (visibility map, for
-- index-only scans) and its pruned rows at a small fraction of its size.
ALTER TABLE workflow_results SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.01
);
