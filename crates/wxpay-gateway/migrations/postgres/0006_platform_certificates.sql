-- Platform certificates downloaded from WeChat Pay (APIv3), kept so that a restarted gateway
-- verifies answers and notifications before WeChat Pay answers again. A row is trusted only
-- when its mac (HMAC-SHA256 of the PEM keyed with the merchant's APIv3 key) verifies, as the
-- download itself was trusted for its encryption with that key; not_after is the earlier of
-- the certificate's own expiry and the one WeChat Pay listed.
CREATE TABLE platform_certificates (
    merchant TEXT NOT NULL,
    serial_no TEXT NOT NULL,
    pem TEXT NOT NULL,
    mac TEXT NOT NULL,
    not_after BIGINT NOT NULL,
    fetched_at BIGINT NOT NULL,
    PRIMARY KEY (merchant, serial_no)
);
