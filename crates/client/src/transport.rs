//! The plain HTTP client that the discovery client uses to talk to the
//! registries: one hyper-util connection pool, Basic credentials, a deadline
//! per request, and a list of servers tried in order from the one that last
//! answered, so a dead registry costs one failed attempt, not one per call.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Why no server answered.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// No server of the list gave an answer; the last failure is named.
    #[error("no server answered (last: {last})")]
    NoneAnswered {
        /// The last server's failure.
        last: String,
    },
}

/// Which of a list of servers to try first: the one that answered last, then the
/// others in their configured order (so a registry of this zone comes before the
/// others again once the preferred one fails). Shared by the config client's fetcher
/// and the registry client.
#[derive(Debug, Default)]
pub(crate) struct Rotation {
    preferred: AtomicUsize,
}

impl Rotation {
    /// The indices of `count` servers in the order to try them.
    pub fn order(&self, count: usize) -> impl Iterator<Item = usize> {
        let preferred = self.preferred.load(Ordering::Relaxed).min(count.saturating_sub(1));
        std::iter::once(preferred)
            .filter(move |_| count > 0)
            .chain((0..count).filter(move |&i| i != preferred))
    }

    /// The server tried first now.
    pub fn preferred(&self, count: usize) -> Option<usize> {
        self.order(count).next()
    }

    /// Server `index` answered: it goes first from now on.
    pub fn answered(&self, index: usize) {
        self.preferred.store(index, Ordering::Relaxed);
    }
}

/// Servers tried in order, starting from the one that last answered.
#[derive(Clone, Debug)]
pub(crate) struct Servers {
    urls: Arc<[String]>,
    rotation: Arc<Rotation>,
    client: Client<HttpConnector, Full<Bytes>>,
    authorization: Option<HeaderValue>,
    timeout: Duration,
}

impl Servers {
    pub fn new(urls: Vec<String>, username: Option<&str>, password: Option<&str>, timeout: Duration) -> Servers {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let authorization = username.and_then(|user| {
            rtalpha_runtime::auth::basic_authorization(&format!("{user}:{}", password.unwrap_or_default()))
        });
        Servers {
            urls: urls
                .into_iter()
                .map(|url| url.trim_end_matches('/').to_owned())
                .collect(),
            rotation: Arc::new(Rotation::default()),
            client: Client::builder(TokioExecutor::new()).build(connector),
            authorization,
            timeout,
        }
    }

    /// The server tried first now.
    pub fn current(&self) -> Option<&str> {
        self.rotation
            .preferred(self.urls.len())
            .map(|at| self.urls[at].as_str())
    }

    /// Sends a request to each server in turn until one answers with anything
    /// but a 5xx; that server is tried first next time.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), TransportError> {
        let mut last = "no server configured".to_owned();
        for at in self.rotation.order(self.urls.len()) {
            let url = format!("{}{path}", self.urls[at]);
            match self.send_to(method.clone(), &url, body.clone()).await {
                Ok((status, bytes)) if !status.is_server_error() => {
                    self.rotation.answered(at);
                    return Ok((status, bytes));
                }
                Ok((status, _)) => last = format!("{url}: answered {status}"),
                Err(problem) => last = format!("{url}: {problem}"),
            }
        }
        Err(TransportError::NoneAnswered { last })
    }

    /// Opens a streaming GET on the preferred server (an event stream).
    pub async fn open_stream(&self, path: &str, last_event_id: Option<u64>) -> Result<(String, Incoming), String> {
        let Some(base) = self.current() else {
            return Err("no server configured".to_owned());
        };
        let url = format!("{base}{path}");
        let mut request = self.request(Method::GET, &url, None)?;
        request
            .headers_mut()
            .insert(header::ACCEPT, header::HeaderValue::from_static("text/event-stream"));
        if let Some(id) = last_event_id {
            request.headers_mut().insert("last-event-id", id.into());
        }
        let response = tokio::time::timeout(self.timeout, self.client.request(request))
            .await
            .map_err(|_| format!("{url}: no answer within {:?}", self.timeout))?
            .map_err(|err| format!("{url}: {err}"))?;
        if !response.status().is_success() {
            return Err(format!("{url}: answered {}", response.status()));
        }
        Ok((url, response.into_body()))
    }

    /// Moves on to the next server (after the preferred one failed outside
    /// [`send`](Self::send), as a stream does).
    pub fn skip_current(&self) {
        let count = self.urls.len();
        if let Some(next) = self.rotation.order(count).nth(1) {
            self.rotation.answered(next);
        }
    }

    fn request(&self, method: Method, url: &str, body: Option<Vec<u8>>) -> Result<Request<Full<Bytes>>, String> {
        let mut builder = Request::builder().method(method).uri(url);
        if let Some(authorization) = &self.authorization {
            builder = builder.header(header::AUTHORIZATION, authorization.clone());
        }
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        builder
            .header(header::ACCEPT, "application/json")
            .body(Full::new(body.map(Bytes::from).unwrap_or_default()))
            .map_err(|err| format!("{url}: {err}"))
    }

    async fn send_to(&self, method: Method, url: &str, body: Option<Vec<u8>>) -> Result<(StatusCode, Bytes), String> {
        let request = self.request(method, url, body)?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|err| err.to_string())?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|err| err.to_string())?
                .to_bytes();
            Ok::<_, String>((status, bytes))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
    }
}

/// Reads server-sent events from a body: `(event, id, data)` per event.
pub(crate) struct EventStream {
    body: Incoming,
    buffer: String,
}

/// One server-sent event.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ServerEvent {
    pub event: String,
    pub id: Option<u64>,
    pub data: String,
}

impl EventStream {
    pub fn new(body: Incoming) -> EventStream {
        EventStream {
            body,
            buffer: String::new(),
        }
    }

    /// The next event; `None` when the stream ended or broke.
    pub async fn next(&mut self) -> Option<ServerEvent> {
        loop {
            if let Some(event) = self.take_event() {
                return Some(event);
            }
            let frame = self.body.frame().await?.ok()?;
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }

    fn take_event(&mut self) -> Option<ServerEvent> {
        loop {
            let end = self.buffer.find("\n\n")?;
            let block: String = self.buffer.drain(..end + 2).collect();
            let event = parse_event(&block);
            // Comment-only blocks (keep-alives) carry nothing.
            if !event.event.is_empty() || !event.data.is_empty() {
                return Some(event);
            }
        }
    }
}

fn parse_event(block: &str) -> ServerEvent {
    let mut event = ServerEvent::default();
    for line in block.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event.event = value.to_owned(),
            "id" => event.id = value.parse().ok(),
            "data" => {
                if !event.data.is_empty() {
                    event.data.push('\n');
                }
                event.data.push_str(value);
            }
            _ => {}
        }
    }
    if event.event.is_empty() && !event.data.is_empty() {
        event.event = "message".to_owned();
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_that_answered_last_goes_first_then_the_configured_order() {
        let rotation = Rotation::default();
        assert_eq!(rotation.order(3).collect::<Vec<_>>(), [0, 1, 2]);
        rotation.answered(2);
        assert_eq!(rotation.order(3).collect::<Vec<_>>(), [2, 0, 1]);
        assert_eq!(rotation.order(0).count(), 0);
        assert_eq!(
            rotation.preferred(2),
            Some(1),
            "an index past a shorter list is clamped"
        );
    }

    #[test]
    fn an_event_block_yields_its_fields() {
        let event = parse_event("event: change\nid: 13\ndata: {\"index\":13}\n\n");
        assert_eq!(
            event,
            ServerEvent {
                event: "change".into(),
                id: Some(13),
                data: "{\"index\":13}".into()
            }
        );
        assert_eq!(parse_event(": keep-alive\n\n"), ServerEvent::default());
    }
}
