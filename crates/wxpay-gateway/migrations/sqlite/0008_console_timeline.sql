-- An order's console timeline (issue 13) shows its webhook deliveries: its outbox events,
-- found by order.
CREATE INDEX outbox_by_order ON outbox (order_id);
-- It also shows the last call to WeChat Pay that changed nothing (a query answered NOTPAY, a
-- close that failed). The order keeps that one call, beside its count of checks, rather than
-- one event per check: an unpaid order is checked every few minutes for hours, and a close
-- that keeps failing is tried again every 30 s.
ALTER TABLE orders ADD COLUMN last_call_at INTEGER;
ALTER TABLE orders ADD COLUMN last_call TEXT;
