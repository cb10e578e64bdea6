-- What an operator needs to investigate a rejected notification, within a bounded budget:
-- who sent it and a digest of the whole body (of which only the first KiB is kept).
ALTER TABLE notifications ADD COLUMN peer TEXT;
ALTER TABLE notifications ADD COLUMN body_sha256 TEXT;
