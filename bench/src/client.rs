//! One keep-alive HTTP/1.1 connection, for the seeder and the propagation probe.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long any single request may take before the harness gives up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The `host:port` of a base URL such as `http://127.0.0.1:8761`.
pub fn authority(base: &str) -> anyhow::Result<String> {
    let uri: Uri = base.parse().with_context(|| format!("`{base}` is not a URL"))?;
    if uri.scheme_str() != Some("http") {
        bail!("`{base}`: only http:// URLs are supported");
    }
    uri.authority()
        .map(|authority| authority.to_string())
        .with_context(|| format!("`{base}` has no host"))
}

/// A connection that sends one request at a time.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
}

impl Connection {
    /// Connects to `authority` (`host:port`).
    pub async fn open(authority: &str) -> anyhow::Result<Self> {
        let stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(authority))
            .await
            .with_context(|| format!("connecting to {authority} timed out"))?
            .with_context(|| format!("cannot connect to {authority}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        // The connection task ends when the sender is dropped or the peer hangs up.
        tokio::spawn(connection);
        Ok(Connection {
            sender,
            authority: authority.to_owned(),
        })
    }

    /// Sends a request and returns the response with its body still streaming.
    pub async fn start(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> anyhow::Result<Response<Incoming>> {
        self.start_with(method, path, body, &[]).await
    }

    /// [`Connection::start`] with extra request headers.
    pub async fn start_with(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Response<Incoming>> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request.body(Full::new(body.unwrap_or_default()))?;
        self.sender.ready().await.context("connection closed")?;
        tokio::time::timeout(REQUEST_TIMEOUT, self.sender.send_request(request))
            .await
            .with_context(|| format!("{path}: no answer within {REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("{path}: request failed"))
    }

    /// Sends a request and reads the whole answer.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let response = self.start(method, path, body).await?;
        let status = response.status();
        let body = tokio::time::timeout(REQUEST_TIMEOUT, response.into_body().collect())
            .await
            .with_context(|| format!("{path}: body not read within {REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("{path}: reading the body"))?
            .to_bytes();
        Ok((status, body))
    }
}
