//! Assembles the registry: state, routes, background tasks, and `run`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use bytes::Bytes;
use http::HeaderValue;
use rtalpha_proto::registry::INDEX_HEADER;
use rtalpha_runtime::Health;
use rtalpha_runtime::health::HealthState;
use rtalpha_runtime::http::{ServeOptions, serve};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::{Config, RegistrySettings};
use crate::table::LeaseTable;
use crate::{api, auth, dashboard, eureka};

/// How often renewals are sampled for the self-preservation window.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The lease table.
    pub table: Arc<LeaseTable>,
    /// The registry's settings.
    pub settings: Arc<RegistrySettings>,
    /// Cancelled on shutdown: ends watches and blocking queries.
    pub shutdown: CancellationToken,
    /// Encoded full fetches by format, valid for one version index.
    pub encodings: Arc<EncodingCache>,
}

/// The formats a whole-registry answer is encoded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// The native `/v1/apps` JSON.
    Native,
    /// Eureka's JSON.
    EurekaJson,
    /// Eureka's XML.
    EurekaXml,
}

/// Encoded full fetches, each valid for the version index it was made at: a fetch of
/// 100,000 instances is encoded once per change, not once per request.
#[derive(Debug, Default)]
pub struct EncodingCache {
    entries: Mutex<HashMap<Encoding, (u64, Bytes)>>,
}

impl EncodingCache {
    /// The encoding at `index`, made by `encode` if not already held.
    pub fn get_or_encode(
        &self,
        encoding: Encoding,
        index: u64,
        encode: impl FnOnce() -> (u64, Bytes),
    ) -> Bytes {
        if let Some((held, bytes)) = self.lock().get(&encoding)
            && *held == index
        {
            return bytes.clone();
        }
        // Encode outside the lock: concurrent misses may both encode, which is cheaper
        // than making every reader wait behind one encoder.
        let (encoded_at, bytes) = encode();
        self.lock().insert(encoding, (encoded_at, bytes.clone()));
        bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Encoding, (u64, Bytes)>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl AppState {
    /// Fresh state for the given settings.
    pub fn new(settings: RegistrySettings, shutdown: CancellationToken) -> Self {
        let table = LeaseTable::new(
            Clock::new(),
            settings.delta_retention,
            settings.self_preservation.clone(),
        );
        AppState {
            table: Arc::new(table),
            settings: Arc::new(settings),
            shutdown,
            encodings: Arc::new(EncodingCache::default()),
        }
    }
}

/// The registry's routes, without the platform layers.
pub fn routes(state: AppState) -> Router {
    Router::new()
        .merge(api::routes())
        .merge(eureka::routes())
        .merge(dashboard::routes())
        .layer(middleware::from_fn_with_state(state.clone(), index_header))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_credentials,
        ))
        .with_state(state)
}

/// Every registry response carries the version index.
async fn index_header(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert(INDEX_HEADER, HeaderValue::from(state.table.index()));
    response
}

/// Runs the registry on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = AppState::new(config.registry.clone(), shutdown.clone());
    let health = Health::new();
    health.set("self_preservation", HealthState::Up, "");
    let tasks = spawn_background(&state, &health, &config.registry);
    health.set_ready(true);
    let options = ServeOptions {
        max_body_bytes: config.server.max_body_bytes,
        shutdown_grace: config.server.shutdown_grace,
        health,
    };
    let result = serve(listener, routes(state), options, shutdown.clone()).await;
    shutdown.cancel();
    for task in tasks {
        let _ = task.await;
    }
    result
}

fn spawn_background(
    state: &AppState,
    health: &Health,
    settings: &RegistrySettings,
) -> Vec<tokio::task::JoinHandle<()>> {
    let sampler = {
        let table = state.table.clone();
        let shutdown = state.shutdown.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
            loop {
                tokio::select! {
                    _ = ticks.tick() => table.sample_renewals(),
                    () = shutdown.cancelled() => return,
                }
            }
        })
    };
    let sweeper = {
        let table = state.table.clone();
        let shutdown = state.shutdown.clone();
        let health = health.clone();
        let interval = settings.eviction_interval;
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.tick().await;
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = shutdown.cancelled() => return,
                }
                let sweep = table.sweep();
                let judgement = &sweep.self_preservation;
                metrics::gauge!("rtalpha_registry_instances")
                    .set(table.read().instance_count() as f64);
                metrics::gauge!("rtalpha_registry_self_preservation_active")
                    .set(if judgement.active { 1.0 } else { 0.0 });
                metrics::gauge!("rtalpha_registry_renewals_in_window")
                    .set(judgement.renewals_in_window as f64);
                metrics::gauge!("rtalpha_registry_expected_renewals")
                    .set(judgement.expected_renewals);
                if judgement.active {
                    health.set(
                        "self_preservation",
                        HealthState::Degraded,
                        format!(
                            "engaged: {} renewals in the last {} s, {:.0} expected; {} expired leases kept",
                            judgement.renewals_in_window, judgement.window_secs, judgement.expected_renewals, sweep.spared
                        ),
                    );
                } else {
                    health.set("self_preservation", HealthState::Up, "");
                }
            }
        })
    };
    vec![sampler, sweeper]
}
