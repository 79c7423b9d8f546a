-- Trace context (the propagator's carrier as JSON text: W3C traceparent/tracestate) stored at
-- enqueue, so callbacks and tasks run in any process join the trace the enqueue ran in.
-- Both columns stay NULL unless tracing is on. History does not keep them: a trace ends with
-- its run.
ALTER TABLE workflow_instances ADD COLUMN trace_context text;
ALTER TABLE tasks ADD COLUMN trace_context text;
