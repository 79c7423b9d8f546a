-- Signals: named messages for a live instance, queued as events so they reach on_signal in
-- order with its other events. The payload is the JSON value sent with the signal.
ALTER TABLE workflow_events DROP CONSTRAINT workflow_events_event_type_check;
ALTER TABLE workflow_events ADD CONSTRAINT workflow_events_event_type_check
    CHECK (event_type IN ('start', 'task_complete', 'cancel', 'signal'));
ALTER TABLE workflow_events ADD COLUMN signal_name text;
ALTER TABLE workflow_events ADD COLUMN signal_payload jsonb;
