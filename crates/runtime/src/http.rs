//! HTTP server start-up with the platform's common behaviour.
//!
//! [`serve`] takes a server's own routes and adds, outermost first: the request id,
//! the access log and request metrics, the JSON error body, and the request body
//! limit; plus `/health`, `/ready` and `/metrics`. It returns when the shutdown token
//! is cancelled and in-flight requests have drained, or when the grace period ends.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, StatusCode};
use metrics::{Counter, Histogram};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::error;
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
    // One middleware for the request id, the access log, the metrics and the error body:
    // axum clones every layer's service for every request, so fewer layers cost less.
    routes
        .merge(platform)
        .layer(DefaultBodyLimit::max(options.max_body_bytes))
        .layer(middleware::from_fn(platform_layer))
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

/// Request counters and duration histograms, by route, method and status: the handles
/// are made once per label set, so the hot path is a map lookup and two atomic updates.
#[derive(Default)]
struct RequestMetrics {
    by_route: RwLock<HashMap<String, RouteMetrics>>,
}

/// One route's handles by method and status.
type RouteMetrics = HashMap<(Method, u16), (Counter, Histogram)>;

impl RequestMetrics {
    fn record(&self, route: &str, method: &Method, status: u16, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Ok(routes) = self.by_route.read()
            && let Some((counter, histogram)) = routes.get(route).and_then(|m| m.get(&(method.clone(), status)))
        {
            counter.increment(1);
            histogram.record(seconds);
            return;
        }
        let labels = [
            ("method", method.as_str().to_owned()),
            ("route", route.to_owned()),
            ("status", status.to_string()),
        ];
        let counter = metrics::counter!("http_server_requests_total", &labels);
        let histogram = metrics::histogram!("http_server_request_duration_seconds", &labels[..2]);
        counter.increment(1);
        histogram.record(seconds);
        if let Ok(mut routes) = self.by_route.write() {
            routes
                .entry(route.to_owned())
                .or_default()
                .insert((method.clone(), status), (counter, histogram));
        }
    }
}

static REQUEST_METRICS: OnceLock<RequestMetrics> = OnceLock::new();

/// The request id, the access log, request metrics and the JSON error body.
async fn platform_layer(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(acceptable_request_id)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|matched| matched.as_str().to_owned());
    request.extensions_mut().insert(RequestId(id.clone()));
    let response = next.run(request).await;
    let mut response = error::with_json_body(response, &path, &id).await;
    if let Ok(header) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, header);
    }
    let elapsed = started.elapsed();
    let status = response.status();
    REQUEST_METRICS.get_or_init(RequestMetrics::default).record(
        route.as_deref().unwrap_or("unmatched"),
        &method,
        status.as_u16(),
        elapsed,
    );
    let micros = elapsed.as_micros() as u64;
    if status.is_server_error() {
        tracing::warn!(%method, %path, status = status.as_u16(), elapsed_us = micros, request_id = %id, "request failed");
    } else if status.is_client_error() {
        tracing::info!(%method, %path, status = status.as_u16(), elapsed_us = micros, request_id = %id, "request refused");
    } else {
        tracing::debug!(%method, %path, status = status.as_u16(), elapsed_us = micros, request_id = %id, "request");
    }
    response
}
