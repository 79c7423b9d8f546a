-- Marking the previous latest run of each pair must cost one index probe per new run,
-- whatever the size of history. The first version of this function let the planner join
-- the new runs to all of history; its cached plan (made for the first, large statement)
-- sorted the whole table on every call. The LIMIT keeps each lookup a separate probe of
-- workflow_results_name for the pair's newest older run, which is the only one that can
-- still be marked latest. The plan is cached with the row count of the first statement, so
-- a large first insert would otherwise make every later call pay for JIT compilation.
CREATE OR REPLACE FUNCTION workflow_results_supersede() RETURNS trigger
LANGUAGE plpgsql SET jit = off AS $$
BEGIN
    UPDATE workflow_results SET latest = false
    WHERE id = ANY (ARRAY(
        SELECT prev.id
        FROM new_runs n
        CROSS JOIN LATERAL (
            SELECT r.id, r.latest FROM workflow_results r
            WHERE r.workflow_name = n.workflow_name AND r.instance_name = n.instance_name
              AND r.id < n.id
            ORDER BY r.id DESC
            LIMIT 1
        ) prev
        WHERE prev.latest))
      AND latest;
    RETURN NULL;
END
$$;
