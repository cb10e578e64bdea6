-- The console reads notifications two ways (issue 13): the rejected ones, newest first (a
-- few among millions applied: a partial index holds just them), and those of one order, for
-- its timeline.
CREATE INDEX notifications_rejected ON notifications (id) WHERE verdict = 'rejected';
CREATE INDEX notifications_by_order ON notifications (merchant, out_trade_no, id);
