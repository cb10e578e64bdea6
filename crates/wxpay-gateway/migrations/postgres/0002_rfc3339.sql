-- Unix milliseconds as RFC 3339 in UTC with milliseconds, as the gateway writes them
-- (2026-11-27T03:04:05.678Z), so that single-statement state changes can build event
-- payloads inside the database.
CREATE FUNCTION wxpay_rfc3339(ms BIGINT) RETURNS TEXT
LANGUAGE SQL IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT to_char((to_timestamp(ms / 1000) + (ms % 1000) * INTERVAL '1 millisecond') AT TIME ZONE 'UTC',
                   'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$;
