//! Fetching the Environment from one of several config servers: each URL is tried in
//! turn, the one that answered last first (so a dead first URL costs a timeout once, not
//! on every refresh), each request bounded by the timeout.

use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, HeaderValue, USER_AGENT};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::ConfigClientSettings;
use super::environment::Environment;
use crate::transport::Rotation;

/// The largest Environment accepted.
const MAX_ENVIRONMENT_BYTES: usize = 16 * 1024 * 1024;

/// Why one config server gave no Environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// No connection, or it broke before the answer.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// An answer other than 200.
    #[error("answered {status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The error body's message, or the body.
        message: String,
    },
    /// A 200 whose body is not an Environment.
    #[error("answered with something that is not an Environment: {0}")]
    NotAnEnvironment(String),
}

impl EndpointError {
    /// Whether asking again later may succeed: not for a refusal (401, 403, 404 for an
    /// unknown label) or an answer that is not an Environment, which will not change by
    /// waiting.
    pub fn is_retryable(&self) -> bool {
        match self {
            EndpointError::Unreachable(_) | EndpointError::Timeout(_) => true,
            EndpointError::Status { status, .. } => !(400..500).contains(status) || matches!(status, 408 | 429),
            EndpointError::NotAnEnvironment(_) => false,
        }
    }
}

/// No config server gave an Environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no config server answered: {}", describe(.failures))]
pub struct FetchError {
    /// Each URL tried (without credentials), with what went wrong, in the order tried.
    pub failures: Vec<(String, EndpointError)>,
}

impl FetchError {
    /// Whether any of the failures may go away by asking again.
    pub fn is_retryable(&self) -> bool {
        self.failures.iter().any(|(_, err)| err.is_retryable())
    }
}

fn describe(failures: &[(String, EndpointError)]) -> String {
    let parts: Vec<String> = failures.iter().map(|(uri, err)| format!("{uri} {err}")).collect();
    parts.join("; ")
}

/// One config server URL, with its credentials taken out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// `http://host:port[/prefix]`, without a trailing slash or credentials.
    pub base: String,
    /// `user:password` from the URL.
    credentials: Option<String>,
}

impl Endpoint {
    /// Reads `http://[user:password@]host[:port][/prefix]`.
    pub(crate) fn parse(uri: &str) -> Result<Endpoint, String> {
        let uri = uri.trim();
        if uri.starts_with("https://") {
            return Err("https is not supported by this client yet; use http:// (on a private network or behind a local TLS proxy)".to_owned());
        }
        let Some(rest) = uri.strip_prefix("http://") else {
            return Err("expected an http:// URL".to_owned());
        };
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let (credentials, host) = match authority.rsplit_once('@') {
            Some((user_info, host)) => (Some(percent_decode(user_info)), host),
            None => (None, authority),
        };
        if host.is_empty() {
            return Err("no host".to_owned());
        }
        let path = path.trim_end_matches('/');
        let base = if path.is_empty() {
            format!("http://{host}")
        } else {
            format!("http://{host}/{path}")
        };
        base.parse::<Uri>().map_err(|err| err.to_string())?;
        Ok(Endpoint { base, credentials })
    }
}

/// An Environment and the URL that answered it.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    pub environment: Environment,
    /// The base URL, without credentials.
    pub uri: String,
}

/// Asks the config servers for this application's Environment.
pub(crate) struct Fetcher {
    client: Client<HttpConnector, Empty<Bytes>>,
    endpoints: Vec<Endpoint>,
    /// `/{name}/{profiles}[/{label}]`, encoded.
    path: String,
    /// From `username` and `password`, for endpoints without credentials of their own.
    authorization: Option<HeaderValue>,
    timeout: Duration,
    /// The endpoint that answered last, tried first.
    rotation: Rotation,
}

impl Fetcher {
    /// A fetcher for valid settings.
    pub(crate) fn new(settings: &ConfigClientSettings) -> Result<Fetcher, String> {
        let endpoints = settings
            .uris
            .iter()
            .map(|uri| Endpoint::parse(uri).map_err(|problem| format!("`{uri}`: {problem}")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut path = format!(
            "/{}/{}",
            encode_segment(&settings.name),
            settings
                .profiles
                .iter()
                .map(|profile| encode_segment(profile))
                .collect::<Vec<_>>()
                .join(",")
        );
        if let Some(label) = &settings.label {
            // Spring's `(_)` stands for `/` in a label (`feature/x` → `feature(_)x`).
            path.push('/');
            path.push_str(&encode_segment(&label.replace('/', "(_)")));
        }
        let authorization = match (&settings.username, &settings.password) {
            (Some(user), Some(password)) => Some(basic(&format!("{user}:{password}"))?),
            _ => None,
        };
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(settings.timeout));
        Ok(Fetcher {
            client: Client::builder(TokioExecutor::new()).build(connector),
            endpoints,
            path,
            authorization,
            timeout: settings.timeout,
            rotation: Rotation::default(),
        })
    }

    /// One round: each endpoint in turn, the preferred one first, until one answers.
    pub(crate) async fn fetch(&self) -> Result<Fetched, FetchError> {
        let mut failures = Vec::new();
        for index in self.rotation.order(self.endpoints.len()) {
            let endpoint = &self.endpoints[index];
            match tokio::time::timeout(self.timeout, self.fetch_from(endpoint)).await {
                Ok(Ok(environment)) => {
                    self.rotation.answered(index);
                    return Ok(Fetched {
                        environment,
                        uri: endpoint.base.clone(),
                    });
                }
                Ok(Err(err)) => failures.push((endpoint.base.clone(), err)),
                Err(_) => failures.push((endpoint.base.clone(), EndpointError::Timeout(self.timeout))),
            }
            tracing::debug!(uri = %endpoint.base, error = %failures[failures.len() - 1].1, "config server did not answer; trying the next");
        }
        Err(FetchError { failures })
    }

    async fn fetch_from(&self, endpoint: &Endpoint) -> Result<Environment, EndpointError> {
        let authorization = match &endpoint.credentials {
            Some(credentials) => Some(basic(credentials).map_err(EndpointError::Unreachable)?),
            None => self.authorization.clone(),
        };
        let mut request = Request::get(format!("{}{}", endpoint.base, self.path))
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("rtalpha-client/", env!("CARGO_PKG_VERSION")));
        if let Some(authorization) = authorization {
            request = request.header(AUTHORIZATION, authorization);
        }
        let request = request
            .body(Empty::new())
            .map_err(|err| EndpointError::Unreachable(err.to_string()))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|err| EndpointError::Unreachable(error_chain(&err)))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ENVIRONMENT_BYTES)
            .collect()
            .await
            .map_err(|err| EndpointError::Unreachable(format!("reading the answer: {err}")))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(EndpointError::Status {
                status: status.as_u16(),
                message: error_message(&body),
            });
        }
        serde_json::from_slice(&body).map_err(|err| EndpointError::NotAnEnvironment(err.to_string()))
    }
}

/// The `message` of the platform's (and Spring's) JSON error body, or the body itself.
fn error_message(body: &[u8]) -> String {
    let parsed: Option<String> = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|json| json.get("message").and_then(|m| m.as_str()).map(str::to_owned));
    parsed.unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        text.chars().take(200).collect()
    })
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn basic(credentials: &str) -> Result<HeaderValue, String> {
    rtalpha_runtime::auth::basic_authorization(credentials).ok_or_else(|| "credentials that cannot be sent".to_owned())
}

/// Percent-encodes everything but RFC 3986's unreserved characters and `(`, `)`, which
/// Spring's label syntax uses.
fn encode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~()".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match decoded {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials_and_trailing_slashes() {
        let endpoint = Endpoint::parse("http://user:p%40ss@config.example:8888/prefix/").expect("valid");
        assert_eq!(endpoint.base, "http://config.example:8888/prefix");
        assert_eq!(endpoint.credentials.as_deref(), Some("user:p@ss"));
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:8888").expect("valid").base,
            "http://127.0.0.1:8888"
        );
        assert!(Endpoint::parse("https://x").unwrap_err().contains("https"));
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("http:///path").is_err());
    }

    #[test]
    fn the_path_names_application_profiles_and_label() {
        let settings = ConfigClientSettings {
            name: "user service".into(),
            profiles: vec!["dev".into(), "db".into()],
            label: Some("feature/x".into()),
            ..ConfigClientSettings::default()
        };
        let fetcher = Fetcher::new(&settings).expect("fetcher");
        assert_eq!(fetcher.path, "/user%20service/dev,db/feature(_)x");
        let plain = Fetcher::new(&ConfigClientSettings::default()).expect("fetcher");
        assert_eq!(plain.path, "/application/default");
    }

    #[test]
    fn refusals_are_not_retried_but_outages_are() {
        let status = |status| EndpointError::Status {
            status,
            message: String::new(),
        };
        assert!(!status(404).is_retryable());
        assert!(!status(401).is_retryable());
        assert!(status(429).is_retryable());
        assert!(status(503).is_retryable());
        assert!(EndpointError::Timeout(Duration::from_secs(1)).is_retryable());
        assert!(!EndpointError::NotAnEnvironment(String::new()).is_retryable());
        let mixed = FetchError {
            failures: vec![
                ("a".into(), status(404)),
                ("b".into(), EndpointError::Unreachable("refused".into())),
            ],
        };
        assert!(mixed.is_retryable(), "another server may come back");
        assert!(mixed.to_string().contains("a answered 404"), "{mixed}");
    }
}
