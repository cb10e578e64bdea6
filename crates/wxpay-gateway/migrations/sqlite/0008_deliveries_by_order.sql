-- The console shows an order's webhook deliveries on its timeline (issue 13): its outbox
-- events, found by order.
CREATE INDEX outbox_by_order ON outbox (order_id);
