//! HTTP Basic authentication, the same for every server that asks for it.

use axum::response::{IntoResponse, Response};
use base64::Engine;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue};

use crate::ApiError;

/// A user name and password that requests must present.
#[derive(Clone)]
pub struct BasicAuth {
    expected: Vec<u8>,
    realm: HeaderValue,
    server: &'static str,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl BasicAuth {
    /// Credentials for `server` (named in the 401's message and realm).
    pub fn new(username: &str, password: &str, server: &'static str) -> Self {
        let realm = HeaderValue::from_str(&format!("Basic realm=\"rtalpha {server}\""))
            .unwrap_or_else(|_| HeaderValue::from_static("Basic realm=\"rtalpha\""));
        BasicAuth {
            expected: format!("{username}:{password}").into_bytes(),
            realm,
            server,
        }
    }

    /// `Some(credentials)` when both parts are configured.
    pub fn configured(username: Option<&str>, password: Option<&str>, server: &'static str) -> Option<Self> {
        Some(BasicAuth::new(username?, password?, server))
    }

    /// The 401 for a request without these credentials; `None` lets it through.
    pub fn refusal(&self, headers: &HeaderMap) -> Option<Response> {
        let presented = headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Basic "))
            .and_then(|encoded| base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok());
        if presented.is_some_and(|bytes| constant_time_eq(&bytes, &self.expected)) {
            return None;
        }
        let message = format!("this {} needs HTTP Basic credentials", self.server);
        let mut response = ApiError::unauthorized(message).into_response();
        response.headers_mut().insert(WWW_AUTHENTICATE, self.realm.clone());
        Some(response)
    }
}

/// Compares without an early exit, so timing does not tell how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `Authorization` header value a client sends for `pair` (`user:password`, as it
/// stands in a URL's user info or joined from settings), marked sensitive so that it
/// is never logged; `None` for a pair no header can carry.
pub fn basic_authorization(pair: &str) -> Option<HeaderValue> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_credentials_pass() {
        let auth = BasicAuth::new("ops", "s3cret", "registry");
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, value.parse().unwrap());
            headers
        };
        assert!(auth.refusal(&with("Basic b3BzOnMzY3JldA==")).is_none());
        for bad in ["Basic b3BzOndyb25n", "Bearer x", "Basic !!", "Basic b3BzOnMzY3JldA"] {
            let refusal = auth.refusal(&with(bad)).expect("refused");
            assert_eq!(refusal.status(), http::StatusCode::UNAUTHORIZED, "{bad}");
            assert_eq!(refusal.headers()[WWW_AUTHENTICATE], "Basic realm=\"rtalpha registry\"");
        }
        assert!(auth.refusal(&HeaderMap::new()).is_some());
        assert!(BasicAuth::configured(Some("a"), None, "x").is_none());
    }
}
