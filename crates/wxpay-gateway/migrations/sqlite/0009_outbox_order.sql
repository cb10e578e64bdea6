-- The events of one order are delivered in the order they were written (issue 14): an event
-- is claimed only when no earlier event of its order waits, earlier meaning a smaller rowid.
-- This index holds exactly the waiting events, by order, with their rowids.
CREATE INDEX outbox_waiting_by_order ON outbox (order_id) WHERE delivered_at IS NULL;
