//! The client that posts notifications.
//!
//! Plain `http://` notify URLs (local gateways, load runs) go through a lean HTTP/1.1 client
//! with a small keep-alive pool per host: a notification is one request on a warm
//! connection. `https://` URLs go through reqwest with rustls, which brings certificate
//! verification. The lean path exists because at load the general-purpose client cost more
//! CPU than the whole `unifiedorder` it follows.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Uri;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST, USER_AGENT};
use hyper_util::rt::TokioIo;

/// The answer to a notification.
pub(crate) struct Answer {
    pub status: u16,
    pub body: Bytes,
}

/// The largest answer read; WeChat Pay's reply is under a hundred bytes.
const MAX_ANSWER: usize = 64 * 1024;
const AGENT: &str = "Mozilla/4.0 (wxpay-simulator)";

pub(crate) struct NotifyClient {
    idle: Mutex<HashMap<String, Vec<SendRequest<Full<Bytes>>>>>,
    max_idle: usize,
    timeout: Duration,
    tls: reqwest::Client,
}

impl NotifyClient {
    pub(crate) fn new(timeout: Duration, max_idle: usize) -> Result<NotifyClient, String> {
        let tls = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(AGENT)
            .build()
            .map_err(|e| format!("notification client: {e}"))?;
        Ok(NotifyClient {
            idle: Mutex::new(HashMap::new()),
            max_idle: max_idle.max(1),
            timeout,
            tls,
        })
    }

    /// Posts `body` (of `content_type`, with `headers`) to `url` and reads the answer, within
    /// the timeout.
    pub(crate) async fn post(
        &self,
        url: &str,
        content_type: &'static str,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<Answer, String> {
        if url.starts_with("http://") {
            tokio::time::timeout(self.timeout, self.post_plain(url, content_type, headers, body))
                .await
                .map_err(|_| format!("no answer within {} ms", self.timeout.as_millis()))?
        } else {
            let mut request = self.tls.post(url).header(CONTENT_TYPE, content_type);
            for (name, value) in headers {
                request = request.header(*name, value.as_str());
            }
            let resp = request.body(body).send().await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let body = resp.bytes().await.map_err(|e| e.to_string())?;
            Ok(Answer { status, body })
        }
    }

    async fn post_plain(
        &self,
        url: &str,
        content_type: &'static str,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<Answer, String> {
        let uri: Uri = url.parse().map_err(|e| format!("bad notify_url: {e}"))?;
        let authority = uri.authority().ok_or("notify_url has no host")?.as_str().to_owned();
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let request = |body: Bytes| {
            let mut request = hyper::Request::post(path.as_str())
                .header(HOST, authority.as_str())
                .header(CONTENT_TYPE, content_type)
                .header(USER_AGENT, AGENT);
            for (name, value) in headers {
                request = request.header(*name, value.as_str());
            }
            request.body(Full::new(body)).map_err(|e| e.to_string())
        };
        // A pooled connection may have been closed by the server since; one fresh try then.
        if let Some(mut sender) = self.take_idle(&authority) {
            if sender.ready().await.is_ok() {
                if let Ok(resp) = sender.send_request(request(body.clone())?).await {
                    return self.finish(resp, authority, sender).await;
                }
            }
        }
        let mut sender = connect(&authority).await?;
        let resp = sender.send_request(request(body)?).await.map_err(|e| e.to_string())?;
        self.finish(resp, authority, sender).await
    }

    async fn finish(
        &self,
        resp: hyper::Response<hyper::body::Incoming>,
        authority: String,
        sender: SendRequest<Full<Bytes>>,
    ) -> Result<Answer, String> {
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        self.put_idle(authority, sender);
        Ok(Answer { status, body })
    }

    fn take_idle(&self, authority: &str) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(authority)?;
        while let Some(s) = list.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn put_idle(&self, authority: String, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: a client inventing hosts must not grow this without end.
        if idle.len() >= 1024 && !idle.contains_key(&authority) {
            return;
        }
        let list = idle.entry(authority).or_default();
        if list.len() < self.max_idle {
            list.push(sender);
        }
    }
}

async fn connect(authority: &str) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}
