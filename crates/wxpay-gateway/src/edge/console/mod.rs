//! `/console`: the operator console, server-rendered HTML on the same store as the API.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /console` | an overview: orders and refunds by status, the outbox backlog |
//! | `GET`, `POST /console/login` | sign-in (form fields `password` and `csrf`) |
//! | `POST /console/logout` | sign-out (form field `csrf`) |
//! | `GET /console/orders?q=&status=&merchant=&from=&to=&cursor=` | orders, newest first |
//! | `GET /console/orders/{out_trade_no}?merchant=` | one order, its timeline and refunds |
//! | `POST /console/orders/{out_trade_no}/refund?merchant=` | a refund, reviewed then confirmed |
//! | `GET /console/outbox`, `POST /console/outbox/{id}/retry` | events not delivered yet |
//! | `GET /console/rejections` | notifications refused (forged, unreadable, misdirected) |
//! | `GET /console/reconciliations` | the runs of `wxpay reconcile` and the daily one |
//!
//! Every page but sign-in needs a session ([`session`]); every `POST` carries the session's
//! CSRF token, and the session cookie is `SameSite=Strict` besides. Pages load nothing but
//! themselves (a CSP header says so) and are never cached.

mod page;
mod session;
pub(crate) mod state;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use wxpay_protocol::Fen;

use self::page::{LANG_COOKIE, Lang, Speak, beijing, cookie, frame, yuan};
use self::session::{LOGIN_COOKIE, SESSION_COOKIE, Session};
use self::state::Console;
use crate::edge::app::App;
use crate::edge::body::{Path, Peer, Query};
use crate::edge::html::{SELF_CONTAINED, esc, percent};
use crate::service::error::ServiceError;
use crate::service::numbers::Numbers;
use crate::service::orders::OrderDetail;
use crate::service::reconcile::Day;
use crate::service::refunds::RefundRequest;
use crate::store::{Daily, Delivery, NoticesOf, Order, OrderFilter, OrderStatus, RefundStatus};
use crate::time::Millis;

/// Orders on one page of the list.
const PAGE: u32 = 50;

/// The console's routes; with no console configured, every `/console` path says so (404).
pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/console", get(overview))
        .route("/console/", get(overview))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/orders", get(orders))
        .route("/console/orders/{out_trade_no}", get(order))
        .route("/console/orders/{out_trade_no}/refund", post(refund))
        .route("/console/outbox", get(outbox))
        .route("/console/rejections", get(rejections))
        .route("/console/reconciliations", get(reconciliations))
        .route("/console/outbox/{id}/retry", post(retry))
}

/// A console page, with the headers every page has.
fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, SELF_CONTAINED),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "same-origin"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response()
}

/// What every page needs: the console (or the answer that there is none), the language (and
/// the cookie that remembers a language just chosen).
struct Context {
    console: Arc<Console>,
    lang: Lang,
    remember: Option<HeaderValue>,
    now: i64,
    /// This page's path and query without `lang`, for the language switch.
    here: String,
}

impl FromRequestParts<App> for Context {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Context, Response> {
        let query = parts.uri.query().unwrap_or("");
        let chosen = query.split('&').find_map(|pair| pair.strip_prefix("lang="));
        let rest: Vec<&str> = query
            .split('&')
            .filter(|pair| !pair.is_empty() && !pair.starts_with("lang="))
            .collect();
        let here = if rest.is_empty() {
            parts.uri.path().to_owned()
        } else {
            format!("{}?{}", parts.uri.path(), rest.join("&"))
        };
        let headers = &parts.headers;
        let Some(console) = app.console.clone() else {
            return Err(html(
                StatusCode::NOT_FOUND,
                "<!doctype html><meta charset=\"utf-8\"><title>console off</title>\
                 <p>The console is off: set <code>[console] password_hash</code> \
                 (made by <code>wxpay console hash-password</code>) to turn it on.</p>"
                    .to_owned(),
            ));
        };
        let lang = page::lang_of(chosen, headers);
        let remember = chosen
            .and_then(Lang::parse)
            .map(|l| console.cookie(LANG_COOKIE, l.code(), 365 * 86_400));
        Ok(Context {
            now: app.now().unix_secs(),
            console,
            lang,
            remember,
            here,
        })
    }
}

/// A page's context with its signed-in operator; without a session, the browser is sent to
/// sign in.
struct SignedIn {
    cx: Context,
    session: Session,
}

impl FromRequestParts<App> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<SignedIn, Response> {
        let cx = Context::from_request_parts(parts, app).await?;
        match cx.console.session(&parts.headers, cx.now) {
            Some(session) => Ok(SignedIn { cx, session }),
            None => Err(redirect("/console/login")),
        }
    }
}

impl SignedIn {
    /// A page in the console's frame, with the navigation and the sign-out form.
    fn page(&self, status: StatusCode, title: &str, body: &str) -> Response {
        let csrf = self.cx.console.keys.csrf(&self.session);
        self.cx
            .page(status, frame(self.cx.lang, title, Some(&csrf), &self.cx.here, body))
    }

    /// A page for an error on our side; the details go to the log only.
    fn server_error(&self, e: &ServiceError) -> Response {
        tracing::error!(error = %e, "console page failed");
        self.page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "500",
            "<p class=\"error\">internal error</p>",
        )
    }
}

impl Context {
    /// A page, remembering a language just chosen.
    fn page(&self, status: StatusCode, body: String) -> Response {
        let mut r = html(status, body);
        if let Some(c) = &self.remember {
            r.headers_mut().append(header::SET_COOKIE, c.clone());
        }
        r
    }
}

async fn login_page(cx: Context, headers: HeaderMap) -> Response {
    if cx.console.session(&headers, cx.now).is_some() {
        return redirect("/console");
    }
    login_form(&cx, StatusCode::OK, None)
}

/// The sign-in page, with a fresh login cookie and the form token that goes with it.
fn login_form(cx: &Context, status: StatusCode, error: Option<&str>) -> Response {
    let w = cx.lang.words();
    let nonce = crate::util::random_hex::<16>();
    let token = cx.console.keys.login_token(&nonce);
    let error = error.map_or(String::new(), |e| {
        format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e))
    });
    let body = format!(
        "{error}<form method=\"post\" action=\"/console/login\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{token}\">\
         <label>{password}<input type=\"password\" name=\"password\" autocomplete=\"current-password\" required autofocus></label>\
         <p><button>{sign_in}</button></p></form>",
        password = w.password,
        sign_in = w.sign_in,
    );
    let mut r = cx.page(status, frame(cx.lang, w.sign_in, None, &cx.here, &body));
    r.headers_mut()
        .append(header::SET_COOKIE, cx.console.cookie(LOGIN_COOKIE, &nonce, 3600));
    r
}

#[derive(Deserialize)]
struct LoginForm {
    password: String,
    csrf: String,
}

async fn login(
    cx: Context,
    peer: Peer,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let w = cx.lang.words();
    let Ok(Form(form)) = form else {
        return login_form(&cx, StatusCode::BAD_REQUEST, Some(w.form_expired));
    };
    // The form must come from a sign-in page this browser was given: a page elsewhere cannot
    // sign a browser in to an account of the attacker's choosing.
    let login_cookie = cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    if !cx.console.keys.login_token_matches(login_cookie, &form.csrf) {
        return login_form(&cx, StatusCode::FORBIDDEN, Some(w.form_expired));
    }
    let ip = peer.0.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
    // Two checks at most at once; more attempts are turned away rather than queued, so that
    // a flood of sign-ins cannot hold the connections the payment API needs. An attempt
    // turned away is not counted against its address: a flood from elsewhere must not lock
    // the operator out.
    let Ok(_permit) = cx.console.checking.try_acquire() else {
        return login_form(&cx, StatusCode::SERVICE_UNAVAILABLE, Some(w.busy));
    };
    if cx.console.attempts.begin(ip, cx.now).is_err() {
        tracing::warn!(%ip, "console sign-in refused: too many failures from this address");
        return login_form(&cx, StatusCode::TOO_MANY_REQUESTS, Some(w.locked_out));
    }
    let hash = cx.console.password_hash.clone();
    let password = form.password;
    let matches = tokio::task::spawn_blocking(move || session::password_matches(&hash, &password))
        .await
        .unwrap_or(false);
    if !matches {
        tracing::warn!(%ip, "console sign-in failed: wrong password");
        return login_form(&cx, StatusCode::UNAUTHORIZED, Some(w.wrong_password));
    }
    cx.console.attempts.succeeded(ip);
    tracing::info!(%ip, "console sign-in");
    let mut id = [0u8; 16];
    crate::util::random_bytes(&mut id);
    let value = cx.console.keys.issue(cx.now, cx.console.ttl, &id);
    let max_age = i64::try_from(cx.console.ttl.as_secs()).unwrap_or(i64::MAX);
    let mut r = redirect("/console");
    r.headers_mut()
        .append(header::SET_COOKIE, cx.console.cookie(SESSION_COOKIE, &value, max_age));
    r.headers_mut()
        .append(header::SET_COOKIE, cx.console.cookie(LOGIN_COOKIE, "", 0));
    r
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(
    SignedIn { cx, session }: SignedIn,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let token = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if !cx.console.keys.csrf_matches(&session, &token) {
        tracing::warn!("console action refused: no valid CSRF token");
        let body = format!("<p class=\"error\">{}</p>", cx.lang.words().form_expired);
        return cx.page(StatusCode::FORBIDDEN, frame(cx.lang, "403", None, &cx.here, &body));
    }
    cx.console.revoked.revoke(&session, cx.now);
    let mut r = redirect("/console/login");
    r.headers_mut()
        .append(header::SET_COOKIE, cx.console.cookie(SESSION_COOKIE, "", 0));
    r
}

async fn overview(State(app): State<App>, me: SignedIn) -> Response {
    let w = me.cx.lang.words();
    // The counts by status, as the metrics' task last read them (counting a million orders
    // takes tens of milliseconds); read here only before that task's first reading.
    let stats = match app.metrics().gauges() {
        Some((stats, _)) => stats,
        None => match app.store().stats(app.now()).await {
            Ok(s) => s,
            Err(e) => return me.server_error(&ServiceError::Store(e)),
        },
    };
    let cards = |rows: &[(String, i64)], link: bool| -> String {
        rows.iter()
            .map(|(status, n)| {
                // `link`: an order status, a link to those orders; else a refund status.
                let name = esc(if link {
                    w.status(status)
                } else {
                    w.refund_status(status)
                });
                let label = if link {
                    format!(
                        "<a href=\"/console/orders?status={}\">{name}</a>",
                        esc(&percent(status))
                    )
                } else {
                    name
                };
                format!("<div class=\"card\">{label}<b>{n}</b></div>")
            })
            .collect()
    };
    let oldest = stats.outbox_oldest_age_ms.map_or(String::new(), |ms| {
        format!(" ({} {} s)", w.oldest_undelivered, ms / 1000)
    });
    // Today and the 29 days before it, in Beijing.
    let now = app.now();
    let today = Day::containing(now);
    let first = today.after(-29);
    let days = {
        // One reader at a time; the others wait for its figures rather than sum them again.
        let mut kept = me.cx.console.daily.lock().await;
        match &*kept {
            Some((read_at, from, days)) if *from == first.start_ms() && now.ms_since(*read_at) < DAILY_FRESH_MS => {
                days.clone()
            }
            _ => match app.store().daily(first.start_ms(), today.end_ms()).await {
                Ok(days) => {
                    *kept = Some((now, first.start_ms(), days.clone()));
                    days
                }
                Err(e) => return me.server_error(&ServiceError::Store(e)),
            },
        }
    };
    let dashboard = dashboard(w, &days, &first);
    let body = format!(
        "{dashboard}<h2>{orders}</h2><div class=\"cards\">{o}</div><h2>{refunds}</h2><div class=\"cards\">{r}</div>\
         <h2><a href=\"/console/outbox\">{backlog}</a></h2><p><b>{n}</b>{oldest}</p>",
        orders = w.orders,
        refunds = w.refunds,
        o = cards(&stats.orders_by_status, true),
        r = cards(&stats.refunds_by_status, false),
        backlog = w.outbox_backlog,
        n = stats.outbox_backlog,
    );
    me.page(StatusCode::OK, w.overview, &body)
}

/// Today's figures and the last 30 days' (Beijing days from `first`), with a bar chart of the
/// amount paid each day drawn as inline SVG (markup, so the page still loads nothing).
fn dashboard(w: &page::Words, days: &[Daily], first: &Day) -> String {
    let first_day = first.number();
    let mut by_day = vec![Daily::default(); 30];
    for d in days {
        if let Some(slot) = usize::try_from(d.day - first_day).ok().and_then(|i| by_day.get_mut(i)) {
            *slot = d.clone();
        }
    }
    let total = by_day.iter().fold(Daily::default(), |mut t, d| {
        t.orders += d.orders;
        t.paid += d.paid;
        t.paid_fen += d.paid_fen;
        t.refunded_fen += d.refunded_fen;
        t.rejected += d.rejected;
        t
    });
    let money = |fen: i64| yuan(Fen::new(u64::try_from(fen).unwrap_or(0)).unwrap_or(Fen::ZERO));
    let cards = |d: &Daily| {
        let conversion = if d.orders > 0 {
            format!("{:.1} %", d.paid as f64 * 100.0 / d.orders as f64)
        } else {
            "–".to_owned()
        };
        [
            (w.orders, d.orders.to_string()),
            (w.paid_orders, d.paid.to_string()),
            (w.conversion, conversion),
            (w.paid_amount, money(d.paid_fen)),
            (w.refunded, money(d.refunded_fen)),
            (w.rejections, d.rejected.to_string()),
        ]
        .iter()
        .map(|(label, value)| format!("<div class=\"card\">{label}<b>{value}</b></div>"))
        .collect::<String>()
    };
    let date = |i: i64| first.after(i).date;
    let top = by_day.iter().map(|d| d.paid_fen).max().unwrap_or(0).max(1);
    let bars: String = by_day
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let h = d.paid_fen * 100 / top;
            format!(
                "<rect x=\"{x}\" y=\"{y}\" width=\"18\" height=\"{h}\" fill=\"#07c160\"><title>{date} {paid}</title></rect>",
                x = i * 20,
                y = 100 - h,
                date = date(i as i64),
                paid = money(d.paid_fen),
            )
        })
        .collect();
    format!(
        "<h2>{today}</h2><div class=\"cards\">{today_cards}</div>\
         <h2>{last30}</h2><div class=\"cards\">{total_cards}</div>\
         <svg viewBox=\"0 0 600 100\" width=\"600\" height=\"100\" role=\"img\" aria-label=\"{chart}\"><rect width=\"600\" height=\"100\" fill=\"#f6f8fa\"/>{bars}</svg>\
         <p class=\"muted\">{chart}: {from} – {to}</p>",
        today = w.today,
        today_cards = cards(&by_day[29]),
        last30 = w.last_30_days,
        total_cards = cards(&total),
        chart = w.paid_per_day,
        from = date(0),
        to = date(29),
    )
}

/// The query of the orders page, as a form sends it (empty fields included).
#[derive(Deserialize, Default)]
struct OrdersQuery {
    q: Option<String>,
    status: Option<String>,
    merchant: Option<String>,
    from: Option<String>,
    to: Option<String>,
    cursor: Option<i64>,
}

/// A field of a form: `None` when left empty.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

async fn orders(State(app): State<App>, me: SignedIn, Query(q): Query<OrdersQuery>) -> Response {
    let w = me.cx.lang.words();
    let mut error = None;
    let mut filter = OrderFilter {
        status: given(&q.status).and_then(OrderStatus::parse),
        merchant: given(&q.merchant).map(str::to_owned),
        search: given(&q.q).map(str::to_owned),
        ..OrderFilter::default()
    };
    // A date is a whole day in Beijing: from its first moment, to the first of the next.
    let day = |v: &Option<String>, error: &mut Option<&str>| {
        let d = given(v).map(Day::parse)?;
        d.map_err(|_| *error = Some(w.bad_date)).ok()
    };
    filter.created_from = day(&q.from, &mut error).map(|d| d.start_ms());
    filter.created_before = day(&q.to, &mut error).map(|d| d.end_ms());
    let list = match app.list_orders(filter, PAGE + 1, q.cursor).await {
        Ok(l) => l,
        Err(e) => return me.server_error(&e),
    };
    let more = list.len() > PAGE as usize;
    let shown = &list[..list.len().min(PAGE as usize)];

    let mut body = String::new();
    let option = |value: &str, label: &str, current: Option<&str>| {
        let selected = if current == Some(value) { " selected" } else { "" };
        format!("<option value=\"{}\"{selected}>{}</option>", esc(value), esc(label))
    };
    let statuses: String = std::iter::once(option("", w.any_status, given(&q.status)))
        .chain(
            OrderStatus::ALL
                .iter()
                .map(|s| option(s.as_str(), w.status(s.as_str()), given(&q.status))),
        )
        .collect();
    let merchants: String = std::iter::once(option("", w.any_merchant, given(&q.merchant)))
        .chain(
            app.config()
                .merchants
                .iter()
                .map(|m| option(&m.name, &m.name, given(&q.merchant))),
        )
        .collect();
    let field = |v: &Option<String>| esc(given(v).unwrap_or(""));
    body.push_str(&format!(
        "<form class=\"filters\" method=\"get\" action=\"/console/orders\">\
         <label>{search}<input type=\"search\" name=\"q\" value=\"{qv}\" placeholder=\"{hint}\" size=\"36\"></label>\
         <label>{status}<select name=\"status\">{statuses}</select></label>\
         <label>{merchant}<select name=\"merchant\">{merchants}</select></label>\
         <label>{from}<input type=\"date\" name=\"from\" value=\"{fv}\"></label>\
         <label>{to}<input type=\"date\" name=\"to\" value=\"{tv}\"></label>\
         <button>{filter}</button></form>",
        search = w.search,
        hint = w.search_hint,
        qv = field(&q.q),
        status = w.status,
        merchant = w.merchant,
        from = w.from,
        to = w.to,
        fv = field(&q.from),
        tv = field(&q.to),
        filter = w.filter,
    ));
    if let Some(e) = error {
        body.push_str(&format!("<p class=\"error\">{e}</p>"));
    }
    if shown.is_empty() {
        body.push_str(&format!("<p>{}</p>", w.no_orders));
    } else {
        body.push_str(&format!(
            "<table><tr><th>{created}</th><th>out_trade_no</th><th>{merchant}</th><th>{amount}</th>\
             <th>{refunded}</th><th>{status}</th><th>transaction_id</th></tr>",
            created = w.created,
            merchant = w.merchant,
            amount = w.amount,
            refunded = w.refunded,
            status = w.status,
        ));
        for o in shown {
            let no = o.out_trade_no.as_str();
            body.push_str(&format!(
                "<tr><td>{created}</td><td><a href=\"{link}\"><code>{no}</code></a></td>\
                 <td>{merchant}</td><td class=\"n\">{amount}</td><td class=\"n\">{refunded}</td>\
                 <td><span class=\"st {st}\">{status}</span></td><td><code>{tx}</code></td></tr>",
                created = beijing(o.created_at),
                link = esc(&order_path(no, &o.merchant, "")),
                no = esc(no),
                merchant = esc(&o.merchant),
                amount = yuan(o.amount_fen),
                refunded = if o.refunded_fen.get() > 0 {
                    yuan(o.refunded_fen)
                } else {
                    String::new()
                },
                st = o.status.as_str(),
                status = w.status(o.status.as_str()),
                tx = esc(o.transaction_id.as_deref().unwrap_or("")),
            ));
        }
        body.push_str("</table>");
    }
    if more {
        if let Some(last) = shown.last() {
            let mut next: Vec<(&str, &str)> = Vec::new();
            for (k, v) in [
                ("q", &q.q),
                ("status", &q.status),
                ("merchant", &q.merchant),
                ("from", &q.from),
                ("to", &q.to),
            ] {
                if let Some(v) = given(v) {
                    next.push((k, v));
                }
            }
            let cursor = last.id.to_string();
            next.push(("cursor", &cursor));
            let query: String = next
                .iter()
                .map(|(k, v)| format!("{k}={}", percent(v)))
                .collect::<Vec<_>>()
                .join("&amp;");
            body.push_str(&format!(
                "<p><a href=\"/console/orders?{query}\">{} →</a></p>",
                w.next_page
            ));
        }
    }
    me.page(StatusCode::OK, w.orders, &body)
}

#[derive(Deserialize, Default)]
struct OrderQuery {
    merchant: Option<String>,
}

async fn order(
    State(app): State<App>,
    me: SignedIn,
    Path(out_trade_no): Path<String>,
    Query(q): Query<OrderQuery>,
) -> Response {
    let w = me.cx.lang.words();
    let detail = match app.order_detail(given(&q.merchant), out_trade_no.clone(), false).await {
        Ok(d) => d,
        Err(ServiceError::NotFound(_) | ServiceError::Invalid(_)) => {
            let body = format!("<p>{}</p>", w.not_found);
            return me.page(StatusCode::NOT_FOUND, &out_trade_no, &body);
        }
        Err(e) => return me.server_error(&e),
    };
    let o = &detail.order;
    let when = |t: Option<Millis>| t.map(beijing).unwrap_or_default();
    let mut body = format!(
        "<dl><dt>{status}</dt><dd><span class=\"st {st}\">{status_name}</span></dd>\
         <dt>{merchant}</dt><dd>{m}</dd><dt>{amount}</dt><dd>{a}</dd><dt>{refunded}</dt><dd>{r}</dd>\
         <dt>{description}</dt><dd>{d}</dd><dt>openid</dt><dd><code>{openid}</code></dd>\
         <dt>transaction_id</dt><dd><code>{tx}</code></dd><dt>prepay_id</dt><dd><code>{prepay}</code></dd>\
         <dt>{created}</dt><dd>{c}</dd><dt>{expires}</dt><dd>{e}</dd><dt>{paid}</dt><dd>{p}</dd>\
         <dt>{closed}</dt><dd>{cl}</dd>{upstream}</dl>",
        status = w.status,
        st = o.status.as_str(),
        status_name = w.status(o.status.as_str()),
        merchant = w.merchant,
        m = esc(&o.merchant),
        amount = w.amount,
        a = yuan(o.amount_fen),
        refunded = w.refunded,
        r = yuan(o.refunded_fen),
        description = w.description,
        d = esc(&o.description),
        openid = esc(&o.openid),
        tx = esc(o.transaction_id.as_deref().unwrap_or("")),
        prepay = esc(o.prepay_id.as_deref().unwrap_or("")),
        created = w.created,
        c = beijing(o.created_at),
        expires = w.expires_at,
        e = beijing(o.expires_at),
        paid = w.paid_at,
        p = when(o.paid_at),
        closed = w.closed_at,
        cl = when(o.closed_at),
        upstream = o.upstream_error.as_deref().map_or(String::new(), |e| format!(
            "<dt>{}</dt><dd class=\"error\">{}</dd>",
            w.upstream_error,
            esc(e)
        )),
    );
    body.push_str(&format!(
        "<h2>{timeline}</h2><table><tr><th>{when}</th><th>{what}</th><th>{details}</th></tr>",
        timeline = w.timeline,
        when = w.when,
        what = w.what,
        details = w.details,
    ));
    // The order's events and every notification that named it, in the order they happened.
    // Its calls to WeChat Pay are among its events, but for the checks that changed nothing,
    // which it counts and keeps the last of; its webhook deliveries are in the outbox.
    let store = app.store();
    let of_order = NoticesOf::Order {
        merchant: o.merchant.clone(),
        out_trade_no: o.out_trade_no.as_str().to_owned(),
    };
    let (notices, deliveries, checks) = match tokio::try_join!(
        store.notifications(of_order, TIMELINE_NOTICES),
        store.deliveries(o.id),
        store.checks(o.id)
    ) {
        Ok(found) => found,
        Err(e) => return me.server_error(&ServiceError::Store(e)),
    };
    let mut rows: Vec<(Millis, String, String)> = detail
        .events
        .iter()
        .map(|e| {
            (
                e.at,
                esc(w.event(&e.kind)),
                format!("<code>{}</code>", esc(&e.detail.to_string())),
            )
        })
        .collect();
    rows.extend(deliveries.iter().map(|d| delivery_row(w, d)));
    if let Some(last) = &checks.last {
        rows.push((
            last.at,
            w.checked.to_owned(),
            format!(
                "{} {} · {}: <code>{}</code>",
                checks.checks,
                w.times,
                w.last_answer,
                esc(&last.said)
            ),
        ));
    }
    rows.extend(notices.iter().map(|n| {
        let verdict = format!(
            "<span class=\"st {v}\">{name}</span>",
            v = esc(&n.verdict),
            name = esc(w.verdict(&n.verdict))
        );
        let reason = n.reason.as_deref().map_or(String::new(), |r| format!(" {}", esc(r)));
        (
            n.received_at,
            format!("{} ({})", w.notification, esc(w.notice_kind(&n.kind))),
            format!("{verdict}{reason}"),
        )
    }));
    rows.sort_by_key(|(at, ..)| *at);
    for (at, what, details) in rows {
        body.push_str(&format!(
            "<tr><td>{}</td><td>{what}</td><td>{details}</td></tr>",
            beijing(at)
        ));
    }
    body.push_str("</table>");
    body.push_str(&format!("<h2>{}</h2>", w.refunds));
    if detail.refunds.is_empty() {
        body.push_str(&format!("<p>{}</p>", w.no_refunds));
    } else {
        body.push_str(&format!(
            "<table><tr><th>out_refund_no</th><th>{amount}</th><th>{status}</th><th>{created}</th><th>refund_id</th></tr>",
            amount = w.amount,
            status = w.status,
            created = w.created,
        ));
        for r in &detail.refunds {
            body.push_str(&format!(
                "<tr><td><code>{}</code></td><td class=\"n\">{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                esc(r.out_refund_no.as_str()),
                yuan(r.amount_fen),
                w.refund_status(r.status.as_str()),
                beijing(r.created_at),
                esc(r.refund_id.as_deref().unwrap_or("")),
            ));
        }
        body.push_str("</table>");
    }
    if let (OrderStatus::Pending, Some(prepay), true) = (o.status, &o.prepay_id, me.cx.console.simulator_checkout) {
        // In the demo the simulator plays WeChat: its checkout pays or fails this order, or
        // pays it with a fault in the notification.
        body.push_str(&format!(
            "<p><a href=\"/simulator/checkout/{}?lang={}\">{}</a></p>",
            esc(&percent(prepay)),
            me.cx.lang.code(),
            w.simulator_checkout
        ));
    }
    let left = refundable(&detail);
    if left > 0 {
        body.push_str(&format!(
            "<h3>{refund}</h3><form method=\"post\" action=\"{action}\" class=\"filters\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"step\" value=\"review\">\
             <label>{amount} (¥, ≤ {left})<input name=\"amount\" inputmode=\"decimal\" required size=\"10\"></label>\
             <label>{reason}<input name=\"reason\" maxlength=\"80\" size=\"30\"></label><button>{next}</button></form>",
            refund = w.refund,
            action = esc(&refund_path(o)),
            csrf = esc(&me.cx.console.keys.csrf(&me.session)),
            amount = w.amount,
            left = Fen::new(left).map(|f| f.to_yuan()).unwrap_or_default(),
            reason = w.reason,
            next = w.review,
        ));
    }
    me.page(StatusCode::OK, &out_trade_no, &body)
}

/// A webhook delivery on an order's timeline: when it was taken, or how it is going.
fn delivery_row(w: &page::Words, d: &Delivery) -> (Millis, String, String) {
    let what = format!("{} <code>{}</code>", w.webhook, esc(&d.event_type));
    match d.delivered_at {
        Some(at) => (
            at,
            what,
            format!(
                "<span class=\"st paid\">{}</span> {}: {}",
                w.delivered, w.attempts, d.attempts
            ),
        ),
        None => {
            let error = d.last_error.as_deref().map_or(String::new(), |e| {
                format!(" · {}: <span class=\"error\">{}</span>", w.last_error, esc(e))
            });
            (
                d.created_at,
                what,
                format!(
                    "<span class=\"st pending\">{}</span> {}: {}{error} · {}: {}",
                    w.not_delivered,
                    w.attempts,
                    d.attempts,
                    w.next_attempt,
                    beijing(d.next_attempt_at)
                ),
            )
        }
    }
}

/// What is left to refund of an order, in fen: none unless it is paid, and a pending refund
/// has its amount reserved already.
fn refundable(detail: &OrderDetail) -> u64 {
    if detail.order.status != OrderStatus::Paid {
        return 0;
    }
    let reserved: u64 = detail
        .refunds
        .iter()
        .filter(|r| r.status != RefundStatus::Failed)
        .map(|r| r.amount_fen.get())
        .sum();
    detail.order.amount_fen.get().saturating_sub(reserved)
}

/// The console page of the order `no` of `merchant` (percent-encoded; escape it for HTML),
/// with `then` (`/refund`, or nothing) after the number.
fn order_path(no: &str, merchant: &str, then: &str) -> String {
    format!("/console/orders/{}{then}?merchant={}", percent(no), percent(merchant))
}

/// Where an order's refund form posts.
fn refund_path(o: &Order) -> String {
    order_path(o.out_trade_no.as_str(), &o.merchant, "/refund")
}

/// The refund form: first reviewed (`step=review`), then confirmed (`step=confirm`) with the
/// refund number the review made, so that a confirmation sent twice is one refund.
#[derive(Deserialize)]
struct RefundForm {
    csrf: String,
    step: String,
    amount: String,
    #[serde(default)]
    reason: String,
    out_refund_no: Option<String>,
    /// The review's token of what it showed (the confirmation only).
    review: Option<String>,
}

async fn refund(
    State(app): State<App>,
    mut me: SignedIn,
    Path(out_trade_no): Path<String>,
    Query(q): Query<OrderQuery>,
    form: Result<Form<RefundForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let w = me.cx.lang.words();
    let Ok(Form(form)) = form else {
        return me.page(
            StatusCode::BAD_REQUEST,
            w.refund,
            &format!("<p class=\"error\">{}</p>", w.form_expired),
        );
    };
    if !me.cx.console.keys.csrf_matches(&me.session, &form.csrf) {
        tracing::warn!("console action refused: no valid CSRF token");
        return me.page(
            StatusCode::FORBIDDEN,
            w.refund,
            &format!("<p class=\"error\">{}</p>", w.form_expired),
        );
    }
    let detail = match app.order_detail(given(&q.merchant), out_trade_no.clone(), false).await {
        Ok(d) => d,
        Err(ServiceError::NotFound(_) | ServiceError::Invalid(_)) => {
            return me.page(StatusCode::NOT_FOUND, &out_trade_no, &format!("<p>{}</p>", w.not_found));
        }
        Err(e) => return me.server_error(&e),
    };
    let left = refundable(&detail);
    let order = detail.order;
    let back = order_path(order.out_trade_no.as_str(), &order.merchant, "");
    // A page answering this POST switches language back to the order, not to the POST's path.
    me.cx.here = back.clone();
    let refused = |status: StatusCode, why: &str| {
        let body = format!(
            "<p class=\"error\" role=\"alert\">{}</p><p><a href=\"{}\">← {}</a></p>",
            esc(why),
            esc(&back),
            esc(order.out_trade_no.as_str())
        );
        me.page(status, w.refund, &body)
    };
    let amount = match Fen::from_yuan(form.amount.trim()) {
        Ok(a) if a.get() > 0 => a,
        _ => return refused(StatusCode::UNPROCESSABLE_ENTITY, w.bad_amount),
    };
    let reason = form.reason.trim();
    // The review and its confirmation are one refund: the confirmation must carry what was
    // reviewed (this session, this order, amount, reason and number), so that neither a
    // changed field nor a confirmation made up without a review goes through.
    let reviewed = |number: &str| {
        [
            order.merchant.as_str(),
            order.out_trade_no.as_str(),
            &amount.get().to_string(),
            reason,
            number,
        ]
        .join("\n")
    };
    match (form.step.as_str(), form.out_refund_no) {
        ("review", _) => {
            if amount.get() > left {
                let why = format!("{} {}", w.more_than_left, yuan(Fen::new(left).unwrap_or(Fen::ZERO)));
                return refused(StatusCode::CONFLICT, &why);
            }
            let number = Numbers::random().number('R', app.now());
            let review = me.cx.console.keys.review_token(&me.session, &reviewed(&number));
            let body = format!(
                "<p>{question}</p><dl><dt>out_trade_no</dt><dd><code>{no}</code></dd><dt>{amount_word}</dt><dd><b>{amount}</b> / {paid} ({left_word} {left})</dd>\
                 <dt>{reason_word}</dt><dd>{reason}</dd><dt>out_refund_no</dt><dd><code>{number}</code></dd></dl>\
                 <form method=\"post\" action=\"{action}\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <input type=\"hidden\" name=\"step\" value=\"confirm\"><input type=\"hidden\" name=\"amount\" value=\"{yuan}\">\
                 <input type=\"hidden\" name=\"reason\" value=\"{reason}\"><input type=\"hidden\" name=\"out_refund_no\" value=\"{number}\">\
                 <input type=\"hidden\" name=\"review\" value=\"{review}\">\
                 <button>{confirm}</button> <a href=\"{back}\">{cancel}</a></form>",
                question = w.confirm_refund,
                no = esc(order.out_trade_no.as_str()),
                amount_word = w.amount,
                amount = yuan(amount),
                paid = yuan(order.amount_fen),
                left_word = w.left,
                left = yuan(Fen::new(left).unwrap_or(Fen::ZERO)),
                reason_word = w.reason,
                reason = esc(reason),
                number = esc(&number),
                action = esc(&refund_path(&order)),
                csrf = esc(&form.csrf),
                yuan = amount.to_yuan(),
                confirm = w.confirm,
                back = esc(&back),
                cancel = w.cancel,
            );
            me.page(StatusCode::OK, w.refund, &body)
        }
        ("confirm", Some(number)) => {
            let presented = form.review.as_deref().unwrap_or("");
            if !me
                .cx
                .console
                .keys
                .review_token_matches(&me.session, &reviewed(&number), presented)
            {
                tracing::warn!("console refund refused: the confirmation is not the reviewed refund");
                return refused(StatusCode::FORBIDDEN, w.form_expired);
            }
            let req = RefundRequest {
                merchant: Some(order.merchant.clone()),
                amount_fen: amount.get(),
                out_refund_no: Some(number.clone()),
                reason: (!reason.is_empty()).then(|| reason.to_owned()),
            };
            match app.create_refund(out_trade_no, req, &Numbers::random()).await {
                Ok(_) | Err(ServiceError::Unavailable(_)) => {
                    // Unavailable: the refund is stored and will be sent again; the order page
                    // shows it pending.
                    tracing::info!(out_refund_no = %number, amount_fen = amount.get(), "console refund");
                    redirect(&back)
                }
                Err(e @ (ServiceError::Invalid(_) | ServiceError::Conflict { .. } | ServiceError::Rejected(_))) => {
                    refused(StatusCode::CONFLICT, &e.to_string())
                }
                Err(ServiceError::NotConfigured(m)) => refused(StatusCode::SERVICE_UNAVAILABLE, &m),
                Err(e) => me.server_error(&e),
            }
        }
        _ => refused(StatusCode::BAD_REQUEST, w.form_expired),
    }
}

/// Notifications shown on an order's timeline at most (a storm of duplicates is summed up by
/// its newest ones).
const TIMELINE_NOTICES: u32 = 50;

/// How long the dashboard's figures are shown before they are read again, in ms.
const DAILY_FRESH_MS: i64 = 60_000;

/// Reconciliation runs listed at most.
const RECONCILIATIONS_PAGE: u32 = 100;

/// Rejected notifications listed at most.
const REJECTIONS_PAGE: u32 = 200;

/// Events listed on the outbox page at most.
const OUTBOX_PAGE: u32 = 200;

async fn outbox(State(app): State<App>, me: SignedIn) -> Response {
    let w = me.cx.lang.words();
    let events = match app.store().undelivered(OUTBOX_PAGE).await {
        Ok(e) => e,
        Err(e) => return me.server_error(&ServiceError::Store(e)),
    };
    let mut body = format!("<p>{}</p>", w.outbox_explained);
    if app.config().webhook.is_none() {
        body.push_str(&format!("<p class=\"error\">{}</p>", w.no_webhook));
    }
    if events.is_empty() {
        body.push_str(&format!("<p>{}</p>", w.outbox_empty));
    } else {
        body.push_str(&format!(
            "<table><tr><th>{created}</th><th>{what}</th><th>out_trade_no</th><th>{attempts}</th>\
             <th>{next}</th><th>{error}</th><th></th></tr>",
            created = w.created,
            what = w.what,
            attempts = w.attempts,
            next = w.next_attempt,
            error = w.last_error,
        ));
        let csrf = me.cx.console.keys.csrf(&me.session);
        for e in &events {
            let order = match (&e.out_trade_no, &e.merchant) {
                (Some(no), Some(m)) => {
                    format!(
                        "<a href=\"{}\"><code>{}</code></a>",
                        esc(&order_path(no, m, "")),
                        esc(no)
                    )
                }
                _ => String::new(),
            };
            body.push_str(&format!(
                "<tr><td>{created}</td><td>{kind}</td><td>{order}</td><td class=\"n\">{attempts}</td><td>{next}</td>\
                 <td class=\"error\">{error}</td><td><form method=\"post\" action=\"/console/outbox/{id_url}/retry\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button>{retry}</button></form></td></tr>",
                created = beijing(e.created_at),
                kind = esc(&e.event_type),
                attempts = e.attempts,
                next = beijing(e.next_attempt_at),
                error = esc(e.last_error.as_deref().unwrap_or("")),
                id_url = esc(&percent(&e.id)),
                csrf = esc(&csrf),
                retry = w.retry_now,
            ));
        }
        body.push_str("</table>");
    }
    me.page(StatusCode::OK, w.outbox, &body)
}

async fn retry(
    State(app): State<App>,
    me: SignedIn,
    Path(id): Path<String>,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let w = me.cx.lang.words();
    let token = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if !me.cx.console.keys.csrf_matches(&me.session, &token) {
        tracing::warn!("console action refused: no valid CSRF token");
        return me.page(
            StatusCode::FORBIDDEN,
            w.outbox,
            &format!("<p class=\"error\">{}</p>", w.form_expired),
        );
    }
    let now = app.now();
    match app
        .store()
        .deliver_now(id.clone(), now, now + app.config().jobs.lease)
        .await
    {
        // The background work delivers it at its next round, within a second or so.
        Ok(true) => {
            tracing::info!(event = %id, "console: event to be delivered now");
            redirect("/console/outbox")
        }
        Ok(false) => me.page(StatusCode::NOT_FOUND, w.outbox, &format!("<p>{}</p>", w.outbox_gone)),
        Err(e) => me.server_error(&ServiceError::Store(e)),
    }
}

async fn rejections(State(app): State<App>, me: SignedIn) -> Response {
    let w = me.cx.lang.words();
    let notices = match app.store().notifications(NoticesOf::Rejected, REJECTIONS_PAGE).await {
        Ok(n) => n,
        Err(e) => return me.server_error(&ServiceError::Store(e)),
    };
    let mut body = format!("<p>{}</p>", w.rejections_explained);
    if notices.is_empty() {
        body.push_str(&format!("<p>{}</p>", w.rejections_empty));
    } else {
        body.push_str(&format!(
            "<table><tr><th>{when}</th><th>{what}</th><th>{merchant}</th><th>out_trade_no</th><th>{peer}</th>\
             <th>{why}</th></tr>",
            when = w.when,
            what = w.what,
            merchant = w.merchant,
            peer = w.peer,
            why = w.why,
        ));
        for n in &notices {
            body.push_str(&format!(
                "<tr><td>{when}</td><td>{kind}</td><td>{merchant}</td><td><code>{no}</code></td><td><code>{peer}</code></td>\
                 <td class=\"error\">{reason}<details><summary>{body_word}</summary><code>{body}</code>\
                 <p>SHA-256 <code>{sha}</code></p></details></td></tr>",
                when = beijing(n.received_at),
                kind = esc(w.notice_kind(&n.kind)),
                merchant = esc(n.merchant.as_deref().unwrap_or("")),
                no = esc(n.out_trade_no.as_deref().unwrap_or("")),
                peer = esc(n.peer.as_deref().unwrap_or("")),
                reason = esc(n.reason.as_deref().unwrap_or("")),
                body_word = w.body,
                body = esc(&n.body),
                sha = esc(n.body_sha256.as_deref().unwrap_or("")),
            ));
        }
        body.push_str("</table>");
    }
    me.page(StatusCode::OK, w.rejections, &body)
}

async fn reconciliations(State(app): State<App>, me: SignedIn) -> Response {
    let w = me.cx.lang.words();
    let runs = match app.store().reconciliations(RECONCILIATIONS_PAGE).await {
        Ok(r) => r,
        Err(e) => return me.server_error(&ServiceError::Store(e)),
    };
    let mut body = format!("<p>{}</p>", w.reconciliations_explained);
    if runs.is_empty() {
        body.push_str(&format!("<p>{}</p>", w.reconciliations_empty));
    } else {
        body.push_str(&format!(
            "<table><tr><th>{day}</th><th>{merchant}</th><th>{kind}</th><th>{started}</th><th>{outcome}</th>\
             <th>{left}</th><th>{repaired}</th></tr>",
            day = w.bill_date,
            merchant = w.merchant,
            kind = w.what,
            started = w.when,
            outcome = w.status,
            left = w.differences,
            repaired = w.repaired,
        ));
        for r in &runs {
            let outcome = match r.balanced {
                Some(true) => format!("<span class=\"st paid\">{}</span>", w.balanced),
                Some(false) => format!("<span class=\"st failed\">{}</span>", w.unbalanced),
                None => format!("<span class=\"st\">{}</span>", w.running),
            };
            let report = r.report.as_deref().map_or(String::new(), |report| {
                format!(
                    "<details><summary>{}</summary><code>{}</code></details>",
                    w.details,
                    esc(&crate::util::clip(report, 4096))
                )
            });
            body.push_str(&format!(
                "<tr><td>{day}</td><td>{merchant}</td><td>{kind}</td><td>{started}</td><td>{outcome}{report}</td>\
                 <td class=\"n\">{left}</td><td class=\"n\">{repaired}</td></tr>",
                day = esc(&r.bill_date),
                merchant = esc(&r.merchant),
                kind = esc(&r.kind),
                started = beijing(r.started_at),
                left = r.differences.map_or(String::new(), |n| n.to_string()),
                repaired = r.repaired.map_or(String::new(), |n| n.to_string()),
            ));
        }
        body.push_str("</table>");
    }
    me.page(StatusCode::OK, w.reconciliations, &body)
}
