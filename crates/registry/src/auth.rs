//! Optional HTTP Basic authentication for every registry call.
//!
//! Eureka clients accept credentials in the service URL (`http://user:pass@host/eureka/`)
//! and send them as Basic authentication. Health, readiness and metrics stay open;
//! they are served outside this layer.

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use http::HeaderValue;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use rtalpha_runtime::ApiError;

use crate::server::AppState;

/// The 401 for a request without the configured credentials; `None` lets it through.
pub fn refusal(state: &AppState, request: &Request) -> Option<Response> {
    let auth = &state.settings.auth;
    let (Some(user), Some(password)) = (&auth.username, &auth.password) else {
        return None;
    };
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Basic "))
        .and_then(|encoded| base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok());
    let expected = format!("{user}:{password}");
    if presented.is_some_and(|bytes| constant_time_eq(&bytes, expected.as_bytes())) {
        return None;
    }
    let mut response = ApiError::unauthorized("this registry needs HTTP Basic credentials").into_response();
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"rtalpha registry\""),
    );
    Some(response)
}

/// Compares without an early exit, so timing does not tell how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
