-- Refunds and reconciliation, PostgreSQL.
--
-- `refund_reserved_fen` is what the order's refunds that have not failed add up to. A new
-- refund raises it in the same transaction that inserts the refund, and the CHECK makes the
-- database itself refuse a sum above the order's amount, whatever the application does.
ALTER TABLE orders ADD COLUMN refund_reserved_fen BIGINT NOT NULL DEFAULT 0
    CHECK (refund_reserved_fen >= refunded_fen AND refund_reserved_fen <= amount_fen);
CREATE INDEX orders_paid_on ON orders (merchant, paid_at) WHERE paid_at IS NOT NULL;

CREATE TABLE refunds (
    id              BIGSERIAL PRIMARY KEY,
    order_id        BIGINT  NOT NULL REFERENCES orders (id),
    merchant        TEXT    NOT NULL,
    out_trade_no    TEXT    NOT NULL,
    out_refund_no   TEXT    NOT NULL,
    amount_fen      BIGINT  NOT NULL CHECK (amount_fen > 0),
    reason          TEXT,
    status          TEXT    NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    upstream        TEXT    NOT NULL CHECK (upstream IN ('new', 'created', 'rejected', 'unknown')),
    upstream_error  TEXT,
    refund_id       TEXT    UNIQUE,
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL,
    accepted_at     BIGINT,
    settled_at      BIGINT,
    next_check_at   BIGINT,
    checks          INTEGER NOT NULL DEFAULT 0,
    request_hash    TEXT    NOT NULL,
    UNIQUE (merchant, out_refund_no)
);
CREATE INDEX refunds_by_order ON refunds (order_id, id);
CREATE INDEX refunds_due ON refunds (next_check_at) WHERE status = 'pending';
CREATE INDEX refunds_accepted_on ON refunds (merchant, accepted_at) WHERE accepted_at IS NOT NULL;

CREATE TABLE reconciliations (
    id           BIGSERIAL PRIMARY KEY,
    merchant     TEXT    NOT NULL,
    bill_date    TEXT    NOT NULL,
    kind         TEXT    NOT NULL CHECK (kind IN ('command', 'daily')),
    started_at   BIGINT  NOT NULL,
    finished_at  BIGINT,
    balanced     INTEGER,
    differences  INTEGER,
    repaired     INTEGER,
    report       TEXT
);
CREATE INDEX reconciliations_by_day ON reconciliations (merchant, bill_date, id);
-- One daily run per merchant and day, even with several gateways sharing the database.
CREATE UNIQUE INDEX reconciliations_daily_once ON reconciliations (merchant, bill_date) WHERE kind = 'daily';
