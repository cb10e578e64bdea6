-- An idempotency key in progress belongs to the request that claimed it (`owner`, a random
-- token) while that request keeps renewing `claimed_at`. A key left unrenewed for a lease
-- (its request's process died, or could not record its answer) is taken over by a retry
-- with the same body; the first owner's late answer is then refused by the owner check.
-- Keys are forgotten a day after they were made.
ALTER TABLE idempotency_keys ADD COLUMN claimed_at INTEGER;
ALTER TABLE idempotency_keys ADD COLUMN owner TEXT;
UPDATE idempotency_keys SET claimed_at = created_at;
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
