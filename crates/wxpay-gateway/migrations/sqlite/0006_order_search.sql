-- The console's order search (issue 13) at a million orders: by number across merchants (the
-- unique index leads with the merchant), by payer, and by creation time. None of these
-- columns changes after the order is stored, so a notification updates none of them.
CREATE INDEX orders_by_number ON orders (out_trade_no);
CREATE INDEX orders_by_openid ON orders (openid, id);
CREATE INDEX orders_by_created ON orders (created_at);
