-- Payments in batches: one call, one transaction and one commit (one WAL flush) for many
-- verified payments. Items are applied in the order given (the caller sorts them by order
-- number, so that concurrent batches lock orders in the same order and cannot deadlock),
-- each exactly as a single payment: the order's row lock, the verdict, the conditional
-- update, its event, its outbox row, and the notification record with the verdict.
CREATE FUNCTION wxpay_apply_payments(
    p_merchant TEXT[], p_out_trade_no TEXT[], p_amount BIGINT[], p_transaction_id TEXT[], p_paid_at BIGINT[],
    p_now BIGINT[], p_source TEXT[], p_event_id TEXT[],
    p_record BOOLEAN[], p_received_at BIGINT[], p_kind TEXT[], p_n_merchant TEXT[], p_n_out_trade_no TEXT[],
    p_n_transaction_id TEXT[], p_reason TEXT[], p_body TEXT[])
RETURNS TABLE (
    r_idx INTEGER, r_verdict TEXT, r_was TEXT,
    id BIGINT, merchant TEXT, out_trade_no TEXT, appid TEXT, mch_id TEXT, description TEXT, amount_fen BIGINT,
    refunded_fen BIGINT, openid TEXT, attach TEXT, client_ip TEXT, status TEXT, upstream TEXT, upstream_error TEXT,
    prepay_id TEXT, prepay_at BIGINT, transaction_id TEXT, created_at BIGINT, updated_at BIGINT, expires_at BIGINT,
    paid_at BIGINT, closed_at BIGINT, request_hash TEXT)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    o orders%ROWTYPE;
    v TEXT;
    w TEXT;
BEGIN
    FOR i IN 1 .. COALESCE(array_length(p_merchant, 1), 0) LOOP
        w := NULL;
        SELECT * INTO o FROM orders
        WHERE orders.merchant = p_merchant[i] AND orders.out_trade_no = p_out_trade_no[i] FOR UPDATE;
        IF NOT FOUND THEN
            v := 'unknown_order';
        ELSIF o.amount_fen <> p_amount[i] THEN
            v := 'amount_mismatch';
        ELSIF o.status IN ('paid', 'refunded') THEN
            v := CASE WHEN o.transaction_id = p_transaction_id[i] THEN 'duplicate' ELSE 'transaction_conflict' END;
        ELSIF EXISTS (SELECT 1 FROM orders WHERE orders.transaction_id = p_transaction_id[i]) THEN
            v := 'transaction_conflict';
        ELSE
            v := 'applied';
            w := o.status;
            UPDATE orders SET status = 'paid', transaction_id = p_transaction_id[i], paid_at = p_paid_at[i],
                updated_at = p_now[i], next_check_at = NULL
            WHERE orders.id = o.id
            RETURNING * INTO o;
            INSERT INTO order_events (order_id, at, kind, detail)
            VALUES (o.id, p_now[i], 'paid', jsonb_strip_nulls(jsonb_build_object('source', p_source[i],
                'transaction_id', p_transaction_id[i],
                'anomaly', CASE WHEN w <> 'pending' THEN 'paid after being ' || w END))::TEXT);
            INSERT INTO outbox (id, order_id, type, payload, created_at, next_attempt_at)
            VALUES (p_event_id[i], o.id, 'order.paid', jsonb_build_object('id', p_event_id[i], 'type', 'order.paid',
                'created_at', wxpay_rfc3339(p_now[i]), 'data', jsonb_build_object('merchant', o.merchant,
                'out_trade_no', o.out_trade_no, 'status', o.status, 'amount_fen', o.amount_fen,
                'refunded_fen', o.refunded_fen, 'transaction_id', o.transaction_id,
                'paid_at', wxpay_rfc3339(o.paid_at), 'attach', o.attach))::TEXT, p_now[i], p_now[i]);
        END IF;
        IF p_record[i] THEN
            INSERT INTO notifications (received_at, kind, merchant, out_trade_no, transaction_id, verdict, reason, body)
            VALUES (p_received_at[i], p_kind[i], p_n_merchant[i], p_n_out_trade_no[i], p_n_transaction_id[i], v,
                p_reason[i], p_body[i]);
        END IF;
        RETURN QUERY SELECT i, v, w, o.id, o.merchant, o.out_trade_no, o.appid, o.mch_id, o.description, o.amount_fen,
            o.refunded_fen, o.openid, o.attach, o.client_ip, o.status, o.upstream, o.upstream_error, o.prepay_id,
            o.prepay_at, o.transaction_id, o.created_at, o.updated_at, o.expires_at, o.paid_at, o.closed_at,
            o.request_hash;
    END LOOP;
END
$$;
