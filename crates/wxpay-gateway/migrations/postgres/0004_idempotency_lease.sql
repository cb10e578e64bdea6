-- An idempotency key in progress belongs to the request that claimed it for a lease only:
-- after that a retry with the same body takes it over (the first request's process died or
-- could not record its answer). Keys are forgotten a day after they were made.
ALTER TABLE idempotency_keys ADD COLUMN claimed_at BIGINT;
UPDATE idempotency_keys SET claimed_at = created_at;
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
