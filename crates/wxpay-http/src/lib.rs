//! Serving HTTP/1 to clients that cannot be trusted to behave: WeChat Pay's notifications and
//! the business backend's calls arrive on the same port as anybody's slow or idle connection.
//!
//! `axum::serve` sets no timers, so a client that sends half a header, or half a body, or
//! nothing at all after its last request, holds a connection (and a task, a socket and its
//! buffers) for ever. [`serve`] and [`serve_with`] run an axum [`Router`] over hyper's HTTP/1
//! with four limits ([`Limits`]):
//!
//! - the **header**: from the first byte of a request to the end of its header;
//! - the **body**: from the end of the header to the end of the body (a timed-out body is
//!   answered `408 Request Timeout` and the connection closed);
//! - **idle**: a connection with no request in progress and nothing read or written for this
//!   long is closed (keep-alive between requests, or a client that never reads its answer); a
//!   new connection's first header is due within the header timeout;
//! - **connections**: at most this many at once; the next one waits in the listen backlog
//!   until one ends.
//!
//! A handler's own running time is not limited here: it is the handler's business. On
//! shutdown the server stops accepting, lets requests in progress finish, closes idle
//! connections, and returns when every connection has ended. Each request carries the peer's
//! address as [`axum::extract::ConnectInfo`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{Extensions, Request, Response, StatusCode, header};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;
use tower::ServiceExt;

/// The limits a server puts on its clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// From the first byte of a request to the end of its header.
    pub header_read_timeout: Duration,
    /// From the end of a request's header to the end of its body.
    pub body_read_timeout: Duration,
    /// How long a connection may stay open with no request in progress and no traffic.
    pub idle_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for Limits {
    /// 10 s for a header, 30 s for a body, 60 s idle, 10,000 connections.
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then lets the requests in
/// progress finish.
///
/// # Errors
/// None today: a failed `accept` (too many open files) is logged and retried. The result
/// leaves room for errors of setting up.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    serve_with(listener, router, limits, shutdown, |stream| async move {
        Ok((stream, Extensions::new()))
    })
    .await
}

/// [`serve`] with a step between accepting a TCP connection and speaking HTTP on it (a TLS
/// handshake), which gives the stream to serve and extensions added to each of its requests
/// (what the handshake learnt, such as the client's certificate). The step must finish within
/// the header timeout.
///
/// # Errors
/// As [`serve`].
pub async fn serve_with<A, F, Io>(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
    accept: A,
) -> std::io::Result<()>
where
    A: Fn(TcpStream) -> F + Send + Sync + 'static,
    F: Future<Output = std::io::Result<(Io, Extensions)>> + Send + 'static,
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let accept = Arc::new(accept);
    let max = limits.max_connections.clamp(1, u32::MAX as usize);
    let slots = Arc::new(Semaphore::new(max));
    let (stop, stopping) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was taken:
                    // pause rather than spin, and go on.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let accept = accept.clone();
        let router = router.clone();
        let stopping = stopping.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let prepared = tokio::time::timeout(limits.header_read_timeout, accept(stream)).await;
            let Ok(Ok((io, extensions))) = prepared else {
                return;
            };
            connection(io, extensions, peer, router, limits, stopping).await;
        });
    }
    // New connections are refused at once rather than left waiting in the backlog.
    drop(listener);
    let _ = stop.send(true);
    // Every connection holds a slot until it ends: having them all back means all ended.
    let _ = slots.acquire_many(max as u32).await;
    Ok(())
}

/// Where a connection stands, for its watchdog.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// No request in progress; the last traffic was at this instant.
    Idle(Instant),
    /// A request's header is arriving; its first byte came at this instant.
    Header(Instant),
    /// This many requests are being handled.
    Handling(u32),
}

/// A connection's state, shared by its stream, its service and its watchdog.
struct Conn {
    phase: Mutex<Phase>,
    /// Wakes the watchdog when its deadline moves sooner: a header starts (sooner than the idle
    /// deadline it sleeps towards), or handling ends (it had none).
    sooner: Notify,
    /// Set when a request body ran out of time, to answer 408.
    body_timed_out: AtomicBool,
}

impl Conn {
    /// A connection just accepted: its first request's header is due within the header
    /// timeout, so that a client connecting and sending nothing holds a slot for that long
    /// only, not for the idle timeout.
    fn new() -> Conn {
        Conn {
            phase: Mutex::new(Phase::Header(Instant::now())),
            sooner: Notify::new(),
            body_timed_out: AtomicBool::new(false),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Phase) -> T) -> T {
        f(&mut self.phase.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn read_some(&self) {
        let started = self.with(|p| match p {
            Phase::Idle(_) => {
                *p = Phase::Header(Instant::now());
                true
            }
            _ => false,
        });
        if started {
            self.sooner.notify_one();
        }
    }

    fn wrote_some(&self) {
        self.with(|p| {
            if let Phase::Idle(at) = p {
                *at = Instant::now();
            }
        });
    }

    fn request_started(&self) {
        self.with(|p| {
            *p = match *p {
                Phase::Handling(n) => Phase::Handling(n + 1),
                _ => Phase::Handling(1),
            }
        });
    }

    fn request_finished(&self) {
        self.with(|p| {
            *p = match *p {
                Phase::Handling(n) if n > 1 => Phase::Handling(n - 1),
                _ => Phase::Idle(Instant::now()),
            }
        });
        self.sooner.notify_one();
    }

    /// When the connection is to be closed if nothing changes; `None` while handling.
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        match self.with(|p| *p) {
            Phase::Idle(at) => Some(at + limits.idle_timeout),
            Phase::Header(at) => Some(at + limits.header_read_timeout),
            Phase::Handling(_) => None,
        }
    }
}

/// Marks a request finished when its handling ends, however it ends.
struct Handling(Arc<Conn>);

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// Serves one connection until it ends, the client breaks a limit, or shutdown has let its
/// request in progress finish.
async fn connection<Io>(
    io: Io,
    extensions: Extensions,
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    mut stopping: watch::Receiver<bool>,
) where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::new(Conn::new());
    let watched = Watched {
        inner: io,
        conn: state.clone(),
    };
    let service_state = state.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        service_state.request_started();
        let handling = Handling(service_state.clone());
        let mut req = req.map(|body| {
            axum::body::Body::new(DeadlineBody {
                inner: body,
                deadline: Box::pin(tokio::time::sleep(limits.body_read_timeout)),
                conn: service_state.clone(),
            })
        });
        req.extensions_mut().extend(extensions.clone());
        req.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move {
            let conn = handling.0.clone();
            let response = router
                .oneshot(req)
                .await
                .unwrap_or_else(|never: Infallible| match never {});
            drop(handling);
            if conn.body_timed_out.load(Ordering::Relaxed) {
                // The router answered a body that broke off; the client is told why, with
                // what the router's middleware added (its request id, security headers).
                return Ok::<_, Infallible>(request_timeout(response.headers()));
            }
            Ok(response)
        }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(watched), service);
    let mut served = std::pin::pin!(served);
    let mut draining = *stopping.borrow();
    if draining {
        served.as_mut().graceful_shutdown();
    }
    loop {
        let deadline = state.deadline(&limits);
        tokio::select! {
            _ = served.as_mut() => return,
            changed = stopping.changed(), if !draining => {
                if changed.is_err() || *stopping.borrow() {
                    draining = true;
                    served.as_mut().graceful_shutdown();
                }
            }
            () = state.sooner.notified() => {}
            () = sleep_until(deadline) => {
                if state.deadline(&limits).is_some_and(|d| d <= Instant::now()) {
                    // Dropping the connection closes the socket.
                    tracing::debug!(%peer, "connection closed: a header, idle or write limit was reached");
                    return;
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// `408 Request Timeout`, closing the connection, with the headers of the router's own
/// answer but those describing its body. The router's `x-request-id`, when it set a plain one,
/// is also in the body as `request_id`, as in the gateway's other errors.
fn request_timeout(router_headers: &header::HeaderMap) -> Response<axum::body::Body> {
    let request_id = router_headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    let body = match request_id {
        Some(id) => format!(
            "{{\"error\":{{\"code\":\"request_timeout\",\"message\":\"the request body did not arrive in time\",\"request_id\":\"{id}\"}}}}"
        ),
        None => "{\"error\":{\"code\":\"request_timeout\",\"message\":\"the request body did not arrive in time\"}}"
            .to_owned(),
    };
    let mut r = Response::new(axum::body::Body::from(body));
    *r.status_mut() = StatusCode::REQUEST_TIMEOUT;
    let headers = r.headers_mut();
    for (name, value) in router_headers {
        if ![
            header::CONTENT_TYPE,
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
            header::CONTENT_ENCODING,
        ]
        .contains(name)
        {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    r
}

/// The stream, telling the connection's state when bytes come and go.
struct Watched<Io> {
    inner: Io,
    conn: Arc<Conn>,
}

impl<Io: AsyncRead + Unpin> AsyncRead for Watched<Io> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.read_some();
        }
        polled
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Watched<Io> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.wrote_some();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.wrote_some();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The request body did not arrive within the body timeout.
#[derive(Debug)]
struct BodyTimeout;

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive in time")
    }
}

impl std::error::Error for BodyTimeout {}

/// A request body that fails once its deadline has passed.
struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    conn: Arc<Conn>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.conn.body_timed_out.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const QUICK: Limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        body_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(600),
        max_connections: 4,
    };

    async fn start(
        limits: Limits,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let router = Router::new()
            .route("/", get(|| async { "ok" }))
            .route("/echo", post(|body: Bytes| async move { body }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(800)).await;
                    "done"
                }),
            )
            .route(
                "/peer",
                get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }),
            )
            // As the gateway's middleware does: the request's id on its answer.
            .layer(axum::middleware::from_fn(
                |req: axum::extract::Request, next: axum::middleware::Next| async move {
                    let id = req.headers().get("x-request-id").cloned();
                    let mut r = next.run(req).await;
                    if let Some(id) = id {
                        r.headers_mut().insert("x-request-id", id);
                    }
                    r
                },
            ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve(listener, router, limits, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        (addr, tx, task)
    }

    /// Reads until the peer closes; the bytes read.
    async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        out
    }

    #[tokio::test]
    async fn a_header_that_never_ends_is_cut_off_at_the_header_timeout() {
        let (addr, _stop, _) = start(QUICK).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        let started = std::time::Instant::now();
        let closed = tokio::time::timeout(Duration::from_secs(5), read_to_close(&mut s)).await;
        assert!(closed.is_ok(), "the connection is still open after 5 s");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(250), "closed too early: {waited:?}");
    }

    #[tokio::test]
    async fn a_body_that_never_ends_is_answered_408_and_closed() {
        let (addr, _stop, _) = start(QUICK).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhalf")
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), read_to_close(&mut s))
            .await
            .expect("closed within 5 s");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    }

    #[tokio::test]
    async fn the_408_keeps_the_routers_request_id_in_its_header_and_body() {
        let (addr, _stop, _) = start(QUICK).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Request-Id: req-42\r\nContent-Length: 100\r\n\r\nhalf")
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), read_to_close(&mut s))
            .await
            .expect("closed within 5 s");
        let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 408"), "{text}");
        assert!(text.contains("\r\nx-request-id: req-42\r\n"), "{text}");
        assert!(text.contains("\"request_id\":\"req-42\""), "{text}");
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
        assert_eq!(text.matches("content-type:").count(), 1, "{text}");
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_and_a_busy_one_is_not() {
        let (addr, _stop, _) = start(QUICK).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        // A handler may take longer than every limit: it is not cut off.
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("done"), "{text}");
        // Then nothing: the connection is closed after the idle timeout.
        let started = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(5), read_to_close(&mut s))
            .await
            .expect("closed within 5 s");
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn connections_beyond_the_bound_wait_until_one_ends() {
        let (addr, _stop, _) = start(QUICK).await;
        let mut held = Vec::new();
        for _ in 0..QUICK.max_connections {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf).await.unwrap();
            held.push(s);
        }
        // The next one is taken by the kernel's backlog but not served while all are busy.
        let mut extra = TcpStream::connect(addr).await.unwrap();
        extra.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 256];
        let early = tokio::time::timeout(Duration::from_millis(200), extra.read(&mut buf)).await;
        assert!(early.is_err(), "served beyond the bound");
        drop(held.pop());
        let n = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf))
            .await
            .expect("served once a connection ended")
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn shutdown_lets_the_request_in_progress_finish_then_returns() {
        let (addr, stop, task) = start(Limits::default()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(()).unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), read_to_close(&mut s))
            .await
            .expect("answered and closed");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("done"), "{text}");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("serve returns once every connection ended")
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "no longer accepting");
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
        let (addr, _stop, _) = start(Limits {
            idle_timeout: Duration::from_secs(30),
            ..QUICK
        })
        .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(5), read_to_close(&mut s)).await;
        assert!(
            closed.is_ok(),
            "a silent connection held its slot past the header timeout"
        );
    }

    #[tokio::test]
    async fn handlers_see_the_peer_address() {
        let (addr, _stop, _) = start(QUICK).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&read_to_close(&mut s).await).into_owned();
        assert!(text.ends_with("127.0.0.1"), "{text}");
    }
}
