//! Orders: created (stored first, then sent to WeChat Pay), synced with WeChat Pay's answer
//! (a paid order is never downgraded), closed (`ORDERPAID` makes an order paid, never closed),
//! and the payer's openid from a login code.

use wxpay_protocol::{Fen, OutTradeNo};

use crate::provider::{PayParams, PaymentState, PaymentTerms, Provider, ProviderError, Refusal};
use crate::service::breaker::Admission;
use crate::service::error::{Conflict, ServiceError};
use crate::service::numbers::Numbers;
use crate::service::state::Service;
use crate::store::{
    Created, Event, NewOrder, Order, OrderFilter, OrderStatus, Payment, PaymentOutcome, Refund, Source, Upstream,
};
use crate::time::Millis;

/// What a backend asks for when it creates an order.
#[derive(Debug)]
pub(crate) struct OrderRequest {
    pub(crate) merchant: Option<String>,
    pub(crate) description: String,
    pub(crate) amount_fen: u64,
    pub(crate) openid: String,
    pub(crate) out_trade_no: Option<String>,
    pub(crate) attach: Option<String>,
    pub(crate) expires_in_secs: Option<u64>,
    pub(crate) client_ip: Option<String>,
}

/// An order WeChat Pay has, with the parameters the mini program pays it with.
#[derive(Debug)]
pub(crate) struct Placed {
    pub(crate) order: Order,
    pub(crate) pay_params: PayParams,
    /// Whether this request placed it (else it repeats one that did).
    pub(crate) new: bool,
}

/// The openid of a payer and, when the mini program has one, the unionid.
#[derive(Debug)]
pub(crate) struct Payer {
    pub(crate) openid: String,
    pub(crate) unionid: Option<String>,
}

/// An order with its history and refunds.
#[derive(Debug)]
pub(crate) struct OrderDetail {
    pub(crate) order: Order,
    pub(crate) events: Vec<Event>,
    pub(crate) refunds: Vec<Refund>,
}

/// The currency of every order: the gateway sends none, and WeChat Pay's default is CNY.
/// (When orders carry a currency, this becomes a column compared in the payment verdict.)
pub(crate) const ORDER_CURRENCY: &str = "CNY";

/// The currency WeChat Pay reports for a payment (CNY when absent) when it is not the
/// order's: such a payment is refused like one of another amount.
pub(crate) fn foreign_currency(currency: Option<&str>) -> Option<&str> {
    currency.filter(|c| *c != ORDER_CURRENCY)
}

/// `timeStamp` of `wx.requestPayment`: the system's time in seconds, as WeChat Pay's servers
/// keep it (not the gateway's clock, which tests move).
fn pay_time() -> u64 {
    u64::try_from(crate::time::now_ms().div_euclid(1000)).unwrap_or(0)
}

/// What makes an order for WeChat Pay, from the stored order (or the one about to be).
fn terms<'a>(
    out_trade_no: &'a OutTradeNo,
    amount: Fen,
    description: &'a str,
    client_ip: &'a str,
    openid: &'a str,
    attach: Option<&'a str>,
    expires_at: Millis,
) -> PaymentTerms<'a> {
    PaymentTerms {
        description,
        out_trade_no,
        amount,
        client_ip,
        openid,
        attach,
        expires_at,
    }
}

impl Service {
    /// `jscode2session`: the payer's openid (never the session key).
    pub(crate) async fn openid(&self, merchant: Option<&str>, code: &str) -> Result<Payer, ServiceError> {
        let provider = self.merchant(merchant)?;
        let config = provider.merchant();
        if config.app_secret.is_none() {
            return Err(ServiceError::Invalid(format!(
                "merchant {:?} has no app_secret configured",
                config.name
            )));
        }
        use crate::provider::sns::LoginError;
        match self.inner.sns.code2session(config, code).await {
            Ok(s) => Ok(Payer {
                openid: s.openid,
                unionid: s.unionid,
            }),
            Err(e @ (LoginError::CodeRefused { .. } | LoginError::InvalidCode(_))) => {
                Err(ServiceError::Invalid(e.to_string()))
            }
            Err(e @ LoginError::Refused(_)) => Err(ServiceError::Rejected(e.to_string())),
            Err(e @ LoginError::Unavailable(_)) => Err(ServiceError::Unavailable(e.to_string())),
        }
    }

    /// Creates an order: checked, stored, then sent to WeChat Pay. The same request again
    /// (the same number and parameters) finishes what the first one started.
    pub(crate) async fn create_order(&self, req: OrderRequest, numbers: &Numbers) -> Result<Placed, ServiceError> {
        let provider = self.merchant(req.merchant.as_deref())?;
        let config = provider.merchant();
        let now = self.now();
        let amount = Fen::new(req.amount_fen).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        if amount == Fen::ZERO {
            return Err(ServiceError::Invalid("amount_fen must be at least 1".into()));
        }
        let out_trade_no = match &req.out_trade_no {
            Some(n) => OutTradeNo::new(n.clone()).map_err(|e| ServiceError::Invalid(e.to_string()))?,
            None => OutTradeNo::new(numbers.number('W', now))?,
        };
        let ttl = req
            .expires_in_secs
            .map_or(self.inner.config.default_order_ttl.as_secs(), |s| s);
        if !(60..=7 * 24 * 3600).contains(&ttl) {
            return Err(ServiceError::Invalid(
                "expires_in_secs must be between 60 and 604800".into(),
            ));
        }
        let client_ip = req.client_ip.clone().unwrap_or_else(|| "127.0.0.1".to_owned());
        // The parameters that make an order: the same number with others is a conflict.
        let request_hash = crate::util::sha256_hex(
            serde_json::json!([
                config.name,
                out_trade_no.as_str(),
                req.description,
                req.amount_fen,
                req.openid,
                req.attach,
                client_ip,
                ttl
            ])
            .to_string()
            .as_bytes(),
        );
        let expires_at = now + std::time::Duration::from_secs(ttl);
        // Check everything WeChat Pay would refuse before anything is stored.
        provider
            .check_payment(&terms(
                &out_trade_no,
                amount,
                &req.description,
                &client_ip,
                &req.openid,
                req.attach.as_deref(),
                expires_at,
            ))
            .map_err(ServiceError::Invalid)?;
        // While WeChat Pay keeps failing this merchant's orders, a new one is refused at once
        // rather than stored and left waiting out the timeouts. A number the client names
        // that is stored already goes on: it may need no call at all (a retry of a placed
        // order), and if it does, the permit below decides.
        let breaker = self.breaker(provider);
        if let Some(until) = breaker.refused_until(now) {
            let known = match &req.out_trade_no {
                Some(n) => {
                    let n = OutTradeNo::new(n.clone()).map_err(|e| ServiceError::Invalid(e.to_string()))?;
                    self.inner.store.order(config.name.clone(), n).await?.is_some()
                }
                None => false,
            };
            if !known {
                return Err(breaker_refusal(&config.name, until, now));
            }
        }
        let new = NewOrder {
            merchant: config.name.clone(),
            out_trade_no,
            appid: config.appid.to_string(),
            mch_id: config.mch_id.to_string(),
            description: req.description,
            amount_fen: amount,
            openid: req.openid,
            attach: req.attach,
            client_ip,
            expires_at,
            first_check_at: self.first_check_at(now),
            request_hash: request_hash.clone(),
            now,
        };

        let order = match self.inner.store.create_order(new).await? {
            Created::New(o) => o,
            Created::Existing(o) if o.request_hash != request_hash => {
                return Err(ServiceError::conflict(
                    Conflict::OutTradeNoTaken,
                    format!("order {} exists with other parameters", o.out_trade_no),
                ));
            }
            Created::Existing(o) => match o.status {
                // The same order again (a retry): finish what the first request started.
                OrderStatus::Pending
                    if o.upstream == Upstream::Created && o.prepay_at.is_some_and(|t| now.ms_since(t) < 7_000_000) =>
                {
                    return self.placed(provider, o, false);
                }
                OrderStatus::Pending => o,
                status => {
                    return Err(ServiceError::conflict(
                        Conflict::OrderNotPending,
                        format!("order {} is {status}", o.out_trade_no),
                    ));
                }
            },
        };
        let terms = terms(
            &order.out_trade_no,
            order.amount_fen,
            &order.description,
            &order.client_ip,
            &order.openid,
            order.attach.as_deref(),
            order.expires_at,
        );
        let permit = match breaker.admit(self.now()) {
            Admission::Go(permit) => permit,
            Admission::Refused { until } => return Err(breaker_refusal(&config.name, until, self.now())),
        };
        let placed = provider.create_payment(&terms).await;
        match &placed {
            Err(e) if e.is_outage() => {
                if permit.failed(self.now()) {
                    tracing::error!(merchant = ?config.name, "WeChat Pay keeps failing orders: new orders are refused for a while (circuit breaker open)");
                }
            }
            _ => permit.answered(),
        }
        match placed {
            Ok(prepay_id) => {
                let order = self.inner.store.set_prepay(order.id, prepay_id, self.now()).await?;
                self.placed(provider, order, true)
            }
            Err(e) if e.refusal() == Some(Refusal::OrderPaid) => {
                let order = self.sync(provider, order).await?;
                Err(ServiceError::conflict(
                    Conflict::OrderPaid,
                    format!("order {} is already paid", order.out_trade_no),
                ))
            }
            // WeChat Pay has an order of this number and closed it (at its time_expire, say,
            // when it was placed before or its creation got no answer): the query settles the
            // order as WeChat Pay has it.
            Err(e) if e.refusal() == Some(Refusal::OrderClosed) => {
                let order = self.sync(provider, order).await?;
                match order.status {
                    // The refusal and the query disagree: nothing is settled, and the answer
                    // is not one to keep under an Idempotency-Key.
                    OrderStatus::Pending => Err(ServiceError::Unavailable(format!(
                        "{e}, but orderquery does not say closed: the order stays pending, repeat the request later"
                    ))),
                    OrderStatus::Paid | OrderStatus::Refunded => Err(ServiceError::conflict(
                        Conflict::OrderPaid,
                        format!("order {} is already paid", order.out_trade_no),
                    )),
                    status => Err(ServiceError::conflict(
                        Conflict::OrderNotPending,
                        format!("order {} is {status}", order.out_trade_no),
                    )),
                }
            }
            // No answer, or "not now" (a rate limit or a brief block: `FREQUENCY_LIMITED`,
            // APIv3's 429 and 503), which the circuit breaker counts as an outage too: the order
            // stays pending with the error recorded, so that the same request later goes
            // through instead of meeting a failed order.
            Err(e) if e.is_outage() => {
                let (recorded, message) = match &e {
                    ProviderError::NoAnswer(m) => (
                        m.clone(),
                        format!(
                            "WeChat Pay did not answer ({m}); the order is recorded as pending, repeat the request to try again"
                        ),
                    ),
                    later => (
                        later.to_string(),
                        format!("{later}: the order is recorded as pending, repeat the request later"),
                    ),
                };
                self.inner
                    .store
                    .set_upstream_failure(order.id, false, recorded, self.now())
                    .await?;
                Err(ServiceError::Unavailable(message))
            }
            // Any other refusal of a placed order asked again refuses the new prepay_id, not
            // the order: WeChat Pay still has it as it was, and the checks settle it.
            Err(e) if order.upstream == Upstream::Created => Err(ServiceError::Rejected(format!(
                "{e}: WeChat Pay refused a fresh prepay_id; the order stays pending (the earlier pay parameters work until their prepay_id expires; repeat later with another Idempotency-Key)"
            ))),
            Err(e) => {
                self.inner
                    .store
                    .set_upstream_failure(order.id, true, e.to_string(), self.now())
                    .await?;
                Err(ServiceError::Rejected(e.to_string()))
            }
        }
    }

    /// A placed order with freshly signed pay parameters.
    fn placed(&self, provider: &dyn Provider, order: Order, new: bool) -> Result<Placed, ServiceError> {
        let prepay = order
            .prepay_id
            .as_deref()
            .ok_or_else(|| ServiceError::Internal("an order without prepay_id".into()))?;
        let pay_params = provider
            .pay_params(prepay, pay_time(), &crate::provider::nonce())
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        Ok(Placed { order, pay_params, new })
    }

    /// Asks WeChat Pay about an order and applies what it says: paid, closed, failed. A paid
    /// order is never downgraded.
    pub(crate) async fn sync(&self, provider: &dyn Provider, order: Order) -> Result<Order, ServiceError> {
        match provider.query_payment(&order.out_trade_no).await {
            Ok(state) => self.apply_state(order, &state).await,
            Err(e) if e.refusal() == Some(Refusal::OrderNotExist) => Ok(order),
            Err(e) => Err(ServiceError::upstream("orderquery", e)),
        }
    }

    /// Applies what WeChat Pay verifiably says of an order.
    pub(crate) async fn apply_state(&self, order: Order, state: &PaymentState) -> Result<Order, ServiceError> {
        let store = &self.inner.store;
        let now = self.now();
        match state {
            PaymentState::Paid {
                transaction_id,
                amount,
                paid_at,
                currency,
                ..
            } => {
                if let Some(reported) = foreign_currency(currency.as_deref()) {
                    tracing::error!(out_trade_no = ?order.out_trade_no, fee_type = ?reported, "orderquery says paid in another currency; the order is left as it is");
                    return Ok(order);
                }
                let payment = Payment {
                    merchant: order.merchant.clone(),
                    out_trade_no: order.out_trade_no.clone(),
                    transaction_id: transaction_id.clone(),
                    amount_fen: *amount,
                    paid_at: paid_at.unwrap_or(now),
                    source: Source::Query,
                    now,
                };
                match store.apply_payment(payment, None).await? {
                    PaymentOutcome::Applied(o) | PaymentOutcome::AlreadyPaid(o) => Ok(o),
                    other => {
                        tracing::error!(out_trade_no = ?order.out_trade_no, verdict = %other.verdict(), "orderquery says paid, but it does not fit the order");
                        Ok(order)
                    }
                }
            }
            _ => {
                let pending = order.status == OrderStatus::Pending;
                let ended = match state {
                    PaymentState::Closed if pending => {
                        store
                            .close_order(order.id, "WeChat Pay reports the order closed".into(), now)
                            .await?
                    }
                    PaymentState::Failed if pending => {
                        store
                            .fail_order(order.id, "WeChat Pay reports PAYERROR".into(), now)
                            .await?
                    }
                    // NOTPAY and the rest: nothing to change.
                    _ => None,
                };
                // An order the store did not end (it was paid, meanwhile or before, and a
                // paid order is never downgraded) is read as it is now.
                match ended {
                    Some(o) => Ok(o),
                    None => self.not_downgraded(order, state).await,
                }
            }
        }
    }

    /// The order as it is stored now, after an answer that did not pay it. The store never
    /// takes a paid order back; if it was paid meanwhile (a notification overtook the query)
    /// or before, WeChat Pay's answer contradicts a verified payment, which is worth a
    /// warning: a stale answer, or a payment that WeChat Pay no longer has.
    async fn not_downgraded(&self, order: Order, state: &PaymentState) -> Result<Order, ServiceError> {
        let current = self
            .inner
            .store
            .order(order.merchant.clone(), order.out_trade_no.clone())
            .await?
            .unwrap_or(order);
        if matches!(current.status, OrderStatus::Paid | OrderStatus::Refunded) {
            tracing::warn!(
                out_trade_no = ?current.out_trade_no,
                transaction_id = ?current.transaction_id,
                status = %current.status,
                reported = state.as_str(),
                "orderquery contradicts a recorded payment; the order stays paid"
            );
        }
        Ok(current)
    }

    /// The order a request names, with its merchant's provider (see
    /// [`Service::find_under`]: without a merchant name, it is looked for under each).
    pub(crate) async fn find_order(
        &self,
        merchant: Option<&str>,
        out_trade_no: String,
    ) -> Result<(&dyn Provider, Order), ServiceError> {
        // A number that breaks the rules of out_trade_no was never stored.
        let Ok(number) = OutTradeNo::new(out_trade_no.as_str()) else {
            return Err(ServiceError::NotFound(format!("no order {out_trade_no}")));
        };
        let store = &self.inner.store;
        self.find_under(merchant, &format!("order {out_trade_no}"), |name| {
            store.order(name, number.clone())
        })
        .await
    }

    /// An order with its history and refunds; with `sync`, a pending order is first synced
    /// with WeChat Pay.
    pub(crate) async fn order_detail(
        &self,
        merchant: Option<&str>,
        out_trade_no: String,
        sync: bool,
    ) -> Result<OrderDetail, ServiceError> {
        let store = &self.inner.store;
        let (provider, mut order) = self.find_order(merchant, out_trade_no).await?;
        if sync && order.status == OrderStatus::Pending {
            order = self.sync(provider, order).await?;
        }
        let (events, refunds) = tokio::try_join!(store.events(order.id), store.refunds_of(order.id))?;
        Ok(OrderDetail { order, events, refunds })
    }

    /// The orders `filter` lets through, newest first, `limit` of them before the cursor.
    pub(crate) async fn list_orders(
        &self,
        filter: OrderFilter,
        limit: u32,
        cursor: Option<i64>,
    ) -> Result<Vec<Order>, ServiceError> {
        Ok(self.inner.store.list_orders(filter, limit, cursor).await?)
    }

    /// Closes the order a request names.
    pub(crate) async fn close_order(
        &self,
        merchant: Option<&str>,
        out_trade_no: String,
    ) -> Result<Order, ServiceError> {
        let (provider, order) = self.find_order(merchant, out_trade_no).await?;
        self.close(provider, order).await
    }

    /// Closes an order with WeChat Pay and records it; `ORDERPAID` makes it paid, never closed.
    pub(crate) async fn close(&self, provider: &dyn Provider, order: Order) -> Result<Order, ServiceError> {
        let store = &self.inner.store;
        match order.status {
            OrderStatus::Closed => return Ok(order),
            OrderStatus::Pending => {}
            status => {
                return Err(ServiceError::conflict(
                    if status == OrderStatus::Paid {
                        Conflict::OrderPaid
                    } else {
                        Conflict::OrderNotPending
                    },
                    format!("order {} is {status} and cannot be closed", order.out_trade_no),
                ));
            }
        }
        let why = match provider.close_payment(&order.out_trade_no).await {
            Ok(()) => "closed with WeChat Pay",
            Err(e) => match e.refusal() {
                Some(Refusal::OrderClosed) => "closed with WeChat Pay",
                // Never reached WeChat Pay: nothing to close there.
                Some(Refusal::OrderNotExist) if order.upstream != Upstream::Created => "WeChat Pay never had the order",
                Some(Refusal::OrderPaid) => {
                    let order = self.sync(provider, order).await?;
                    return Err(ServiceError::conflict(
                        Conflict::OrderPaid,
                        format!("order {} was paid and cannot be closed", order.out_trade_no),
                    ));
                }
                _ => return Err(ServiceError::upstream("closeorder", e)),
            },
        };
        Ok(store
            .close_order(order.id, why.into(), self.now())
            .await?
            .unwrap_or(order))
    }
}

/// Why an order is refused while the circuit breaker of its merchant is open.
fn breaker_refusal(merchant: &str, until: Millis, now: Millis) -> ServiceError {
    ServiceError::Unavailable(format!(
        "WeChat Pay failed the last orders of merchant {merchant}; new orders are refused for {} s, then one is tried",
        (until.ms_since(now) + 999) / 1000
    ))
}
