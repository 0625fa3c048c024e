//! HTTP server start-up with the platform's common behaviour.
//!
//! [`serve`] takes a server's own routes and adds, outermost first: the request id,
//! the access log and request metrics, the JSON error body, and the request body
//! limit; plus `/health`, `/ready` and `/metrics`. It returns when the shutdown token
//! is cancelled and in-flight requests have drained, or when the grace period ends.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::error::json_errors;
use crate::health::{Health, HealthState};
use crate::telemetry;

/// The request id header, taken from the caller or made up, and echoed back.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The request id of the request being served, as a request extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// How [`serve`] runs a server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// How long in-flight requests may take after the shutdown signal.
    pub shutdown_grace: Duration,
    /// What `/health` and `/ready` report.
    pub health: Health,
}

/// Serves `routes` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    routes: Router,
    options: ServeOptions,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // Install the recorder before the first request, so nothing is counted into the void.
    telemetry::metrics();
    let app = with_platform_layers(routes, &options);
    let local = listener.local_addr()?;
    tracing::info!(address = %local, "listening");
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let grace = options.shutdown_grace;
    tokio::select! {
        result = server.into_future() => result,
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace = ?grace, "shutdown grace period over; dropping open connections");
            Ok(())
        }
    }
}

/// The server's routes with the platform endpoints and layers added.
pub fn with_platform_layers(routes: Router, options: &ServeOptions) -> Router {
    let platform = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(options.health.clone());
    // Layers run outermost-last-added: the request id must exist before the access log
    // and the error body read it, and the body limit applies only to handlers.
    routes
        .merge(platform)
        .layer(DefaultBodyLimit::max(options.max_body_bytes))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn(access_log))
        .layer(middleware::from_fn(request_id))
}

async fn health(State(health): State<Health>) -> Response {
    let report = health.report();
    let status = if report.status == HealthState::Down {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, axum::Json(report)).into_response()
}

async fn ready(State(health): State<Health>) -> Response {
    let report = health.report();
    let status = if report.ready && report.status != HealthState::Down {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report)).into_response()
}

async fn metrics() -> Response {
    let text = telemetry::metrics().render();
    (
        [(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))],
        text,
    )
        .into_response()
}

/// Whether a caller's request id is safe to log and echo: short, visible ASCII.
fn acceptable_request_id(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?;
    let ok = !text.is_empty() && text.len() <= 128 && text.bytes().all(|b| b.is_ascii_graphic());
    ok.then_some(text)
}

async fn request_id(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(acceptable_request_id)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let header = HeaderValue::from_str(&id).ok();
    request.extensions_mut().insert(RequestId(id));
    let mut response = next.run(request).await;
    if let Some(header) = header {
        response.headers_mut().insert(REQUEST_ID_HEADER, header);
    }
    response
}

async fn access_log(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let path = request.uri().path().to_owned();
    let id = request
        .extensions()
        .get::<RequestId>()
        .map(|id| id.0.clone())
        .unwrap_or_default();
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status();
    let labels = [
        ("method", method.as_str().to_owned()),
        ("route", route),
        ("status", status.as_u16().to_string()),
    ];
    metrics::counter!("http_server_requests_total", &labels).increment(1);
    metrics::histogram!("http_server_request_duration_seconds", &labels[..2]).record(elapsed.as_secs_f64());
    if status.is_server_error() {
        tracing::warn!(%method, %path, status = status.as_u16(), elapsed_us = elapsed.as_micros() as u64, request_id = %id, "request failed");
    } else if status.is_client_error() {
        tracing::info!(%method, %path, status = status.as_u16(), elapsed_us = elapsed.as_micros() as u64, request_id = %id, "request refused");
    } else {
        tracing::debug!(%method, %path, status = status.as_u16(), elapsed_us = elapsed.as_micros() as u64, request_id = %id, "request");
    }
    response
}
