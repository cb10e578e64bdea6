-- wxpay gateway schema, SQLite. Money is integer fen; times are Unix milliseconds.
CREATE TABLE orders (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    merchant        TEXT    NOT NULL,
    out_trade_no    TEXT    NOT NULL,
    appid           TEXT    NOT NULL,
    mch_id          TEXT    NOT NULL,
    description     TEXT    NOT NULL,
    amount_fen      INTEGER NOT NULL CHECK (amount_fen > 0),
    refunded_fen    INTEGER NOT NULL DEFAULT 0 CHECK (refunded_fen >= 0 AND refunded_fen <= amount_fen),
    openid          TEXT    NOT NULL,
    attach          TEXT,
    client_ip       TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('pending', 'paid', 'closed', 'failed', 'refunded')),
    upstream        TEXT    NOT NULL CHECK (upstream IN ('new', 'created', 'rejected', 'unknown')),
    upstream_error  TEXT,
    prepay_id       TEXT,
    prepay_at       INTEGER,
    transaction_id  TEXT    UNIQUE,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    paid_at         INTEGER,
    closed_at       INTEGER,
    next_check_at   INTEGER,
    checks          INTEGER NOT NULL DEFAULT 0,
    request_hash    TEXT    NOT NULL,
    UNIQUE (merchant, out_trade_no)
);
CREATE INDEX orders_by_status ON orders (status, id);
CREATE INDEX orders_due ON orders (next_check_at) WHERE status = 'pending';

CREATE TABLE order_events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id  INTEGER NOT NULL REFERENCES orders (id),
    at        INTEGER NOT NULL,
    kind      TEXT    NOT NULL,
    detail    TEXT    NOT NULL
);
CREATE INDEX order_events_by_order ON order_events (order_id, id);

CREATE TABLE notifications (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at     INTEGER NOT NULL,
    kind            TEXT    NOT NULL,
    merchant        TEXT,
    out_trade_no    TEXT,
    transaction_id  TEXT,
    verdict         TEXT    NOT NULL,
    reason          TEXT,
    body            TEXT    NOT NULL
);

CREATE TABLE idempotency_keys (
    scope         TEXT    NOT NULL,
    key           TEXT    NOT NULL,
    request_hash  TEXT    NOT NULL,
    status        INTEGER,
    response      TEXT,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
);

CREATE TABLE outbox (
    id               TEXT    PRIMARY KEY,
    order_id         INTEGER REFERENCES orders (id),
    type             TEXT    NOT NULL,
    payload          TEXT    NOT NULL,
    created_at       INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    delivered_at     INTEGER,
    last_error       TEXT
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE delivered_at IS NULL;
