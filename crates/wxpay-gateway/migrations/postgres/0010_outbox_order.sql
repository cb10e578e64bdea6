-- The events of one order are delivered in the order they were written (issue 14): an event
-- is claimed only when no earlier event of its order waits. PostgreSQL has no rowid, so the
-- outbox gets a sequence: an order's transitions are serialised by its row lock, so a later
-- event of an order always takes a larger number. Rows already there are numbered in no
-- particular order, which matters only for events still waiting during the upgrade.
ALTER TABLE outbox ADD COLUMN seq BIGSERIAL;
CREATE INDEX outbox_waiting_by_order ON outbox (order_id, seq) WHERE delivered_at IS NULL;
