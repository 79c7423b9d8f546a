-- VACUUM does not give the queue tables' empty trailing pages back to the file system. A
-- queue drains to empty and fills up again all day: truncating it after each drain takes an
-- ACCESS EXCLUSIVE lock that stalls every claim, and leaves a table of a page or two, on which
-- PostgreSQL plans the foreign-key checks of the next burst's inserts (and keeps those plans
-- for the session) as sequential scans: a bulk enqueue of 10,000 then read the whole table
-- once per row, 10 times slower. The pages are reused by the next burst.
ALTER TABLE workflow_instances SET (vacuum_truncate = false);
ALTER TABLE workflow_events SET (vacuum_truncate = false);
ALTER TABLE tasks SET (vacuum_truncate = false);
