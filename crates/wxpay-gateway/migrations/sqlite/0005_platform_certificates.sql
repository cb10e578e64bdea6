-- Platform certificates downloaded from WeChat Pay (APIv3), kept so that a restarted gateway
-- verifies answers and notifications before WeChat Pay answers again.
CREATE TABLE platform_certificates (
    merchant TEXT NOT NULL,
    serial_no TEXT NOT NULL,
    pem TEXT NOT NULL,
    not_after INTEGER NOT NULL,
    fetched_at INTEGER NOT NULL,
    PRIMARY KEY (merchant, serial_no)
);
