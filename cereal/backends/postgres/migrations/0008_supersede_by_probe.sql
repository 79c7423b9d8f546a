-- Marking the previous latest run of each pair must cost one index probe per new run,
-- whatever the size of history. PL/pgSQL plans this statement once per session, on its
-- first call, when history may be empty or its statistics old; the first version of the
-- function, planned that way, sorted the whole table for a merge join on every call, or
-- read every run of the workflow once per new run. Now each new run looks up its pair's
-- newest older run (the only one that can still be marked latest) in the order of
-- workflow_results_name, and the function's settings take sequential scans, bitmap scans
-- and sorts off the table, which leaves that probe and a primary-key lookup as the only
-- plans, and JIT, which an inflated row estimate would turn on for every call. (The update
-- does not repeat "latest" in its own condition: that would let it read a partial index of
-- latest runs from end to end instead of looking the ids up.)
CREATE OR REPLACE FUNCTION workflow_results_supersede() RETURNS trigger
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_sort = off SET jit = off
AS $$
BEGIN
    UPDATE workflow_results SET latest = false
    WHERE id = ANY (ARRAY(
        SELECT prev.id
        FROM new_runs n
        CROSS JOIN LATERAL (
            SELECT r.id, r.latest FROM workflow_results r
            WHERE r.workflow_name = n.workflow_name AND r.instance_name = n.instance_name
              AND r.id < n.id
            ORDER BY r.workflow_name, r.instance_name, r.id DESC
            LIMIT 1
        ) prev
        WHERE prev.latest));
    RETURN NULL;
END
$$;
