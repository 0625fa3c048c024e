//! Assembles the registry: state, routes, background tasks, and `run`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use http::HeaderValue;
use rtalpha_proto::registry::{Change, INDEX_HEADER, MetadataPatch};
use rtalpha_proto::replication::ReplicationItem;
use rtalpha_proto::{Instance, Status};
use rtalpha_runtime::Health;
use rtalpha_runtime::auth::BasicAuth;
use rtalpha_runtime::health::HealthState;
use rtalpha_runtime::http::{ServeOptions, serve};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::cluster::Cluster;
use crate::config::{Config, RegistrySettings};
use crate::encode::EncodingCache;
use crate::table::{LeaseTable, Renewal, RenewalReport, TableError, TableSettings};
use crate::{api, dashboard, eureka, probe, replication};

/// How often renewals are sampled for the self-preservation window.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// What the handlers share, behind one `Arc`: axum clones the state for every layer
/// of every request, so a clone must be a single reference-count increment.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The shared parts of [`AppState`].
pub struct Shared {
    /// The lease table.
    pub table: Arc<LeaseTable>,
    /// The registry's settings.
    pub settings: RegistrySettings,
    /// Cancelled on shutdown: ends watches and blocking queries.
    pub shutdown: CancellationToken,
    /// Encoded full fetches by format, valid for one version index.
    pub encodings: EncodingCache,
    /// The cluster, when peers are configured.
    pub cluster: Option<Arc<Cluster>>,
    /// HTTP Basic credentials every registry call needs, when configured.
    auth: Option<BasicAuth>,
    node_id: String,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// Fresh state for the given settings; `own_authorities` are the `host:port` forms
    /// under which peers may list this node.
    pub fn new(
        settings: RegistrySettings,
        node_id: String,
        own_authorities: &[String],
        shutdown: CancellationToken,
    ) -> Self {
        let table = LeaseTable::new(
            Clock::new(),
            TableSettings {
                delta_retention: settings.delta_retention,
                tombstone_retention: settings.cluster.tombstone_retention,
                preservation: settings.self_preservation.clone(),
            },
        );
        let table = Arc::new(table);
        let cluster = (!settings.peers.is_empty()).then(|| {
            Arc::new(Cluster::new(
                node_id.clone(),
                table.clone(),
                &settings.peers,
                own_authorities,
                settings.cluster.clone(),
            ))
        });
        let auth = BasicAuth::configured(
            settings.auth.username.as_deref(),
            settings.auth.password.as_deref(),
            "registry",
        );
        AppState(Arc::new(Shared {
            table,
            auth,
            settings,
            shutdown,
            encodings: EncodingCache::default(),
            cluster,
            node_id,
        }))
    }

    /// This node's id in the cluster.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Registers a local instance and replicates it (a re-registration that changes
    /// nothing still renews the lease, on every node).
    pub fn register(&self, instance: Instance) {
        let (app, id) = (instance.app.clone(), instance.instance_id.clone());
        match self.table.register(instance) {
            Some(change) => self.replicate(Some(&change)),
            None => self.replicate_renewal(&app, &id),
        }
    }

    /// Renews a local lease and replicates the renewal.
    pub fn renew(&self, app: &str, id: &str, report: RenewalReport) -> Result<Renewal, TableError> {
        let (renewal, change) = self.table.renew_reporting(app, id, report)?;
        if renewal == Renewal::Renewed {
            self.replicate(change.as_ref());
            self.replicate_renewal(app, id);
        }
        Ok(renewal)
    }

    /// Cancels a local lease and replicates the cancellation.
    pub fn cancel(&self, app: &str, id: &str) -> Result<Arc<Change>, TableError> {
        let change = self.table.cancel(app, id)?;
        self.replicate(Some(&change));
        Ok(change)
    }

    /// Sets an override and replicates the record.
    pub fn set_override(&self, app: &str, id: &str, status: Status) -> Result<(), TableError> {
        let change = self.table.set_override(app, id, status)?;
        self.replicate(change.as_ref());
        Ok(())
    }

    /// Clears an override and replicates the record.
    pub fn clear_override(&self, app: &str, id: &str, status: Option<Status>) -> Result<(), TableError> {
        let change = self.table.clear_override(app, id, status)?;
        self.replicate(change.as_ref());
        Ok(())
    }

    /// Updates metadata and replicates the record.
    pub fn update_metadata(&self, app: &str, id: &str, patch: &MetadataPatch) -> Result<(), TableError> {
        let change = self.table.update_metadata(app, id, patch)?;
        self.replicate(change.as_ref());
        Ok(())
    }

    /// Sends a local change to the peers.
    pub fn replicate(&self, change: Option<&Arc<Change>>) {
        if let (Some(cluster), Some(change)) = (&self.cluster, change) {
            cluster.replicate_change(change);
        }
    }

    /// Sends a local renewal to the peers.
    pub fn replicate_renewal(&self, app: &str, id: &str) {
        let Some(cluster) = &self.cluster else { return };
        let Some(dirty) = self.table.read().last_dirty(app, id) else {
            return;
        };
        cluster.replicate(ReplicationItem::Renew {
            app: app.to_owned(),
            instance_id: id.to_owned(),
            last_dirty_timestamp: dirty,
            renewed_at: self.table.clock().now_ms(),
        });
    }
}

/// The node id: configured, or the bind address (the host name when bound to every
/// interface, so that nodes on different hosts differ).
pub fn node_id_for(config: &Config, local: SocketAddr) -> String {
    if let Some(id) = &config.registry.cluster.node_id {
        return id.clone();
    }
    if local.ip().is_unspecified() {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|name| name.into_string().ok())
            .unwrap_or_else(|| "localhost".to_owned());
        return format!("{host}:{}", local.port());
    }
    local.to_string()
}

/// The `host:port` forms under which this node may appear in its own peer list.
fn own_authorities(local: SocketAddr) -> Vec<String> {
    let port = local.port();
    let mut names = vec![local.to_string()];
    if local.ip().is_loopback() || local.ip().is_unspecified() {
        names.extend([
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
        ]);
    }
    if local.ip().is_unspecified()
        && let Ok(host) = nix::unistd::gethostname()
        && let Ok(host) = host.into_string()
    {
        names.push(format!("{host}:{port}"));
    }
    names
}

/// The registry's routes, without the platform layers.
pub fn routes(state: AppState) -> Router {
    Router::new()
        .merge(api::routes())
        .merge(eureka::routes())
        .merge(dashboard::routes())
        .merge(replication::routes())
        .layer(middleware::from_fn_with_state(state.clone(), guard_and_index))
        .with_state(state)
}

/// Checks credentials, then stamps the version index on the answer: one middleware,
/// because every layer costs a state clone per request.
async fn guard_and_index(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(refusal) = state.auth.as_ref().and_then(|auth| auth.refusal(request.headers())) {
        return refusal;
    }
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert(INDEX_HEADER, HeaderValue::from(state.table.index()));
    response
}

/// Runs the registry on `listener` until `shutdown` is cancelled.
///
/// With peers, the node serves at once (so that peers starting at the same time can
/// copy from it) but reports ready only after it has taken a copy from a peer, or
/// given up trying for `registry.cluster.sync_timeout`.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let node_id = node_id_for(&config, local);
    let state = AppState::new(
        config.registry.clone(),
        node_id,
        &own_authorities(local),
        shutdown.clone(),
    );
    let health = Health::new();
    health.set("self_preservation", HealthState::Up, "");
    let mut tasks = spawn_background(&state, &health, &config.registry);
    match state.cluster.clone() {
        Some(cluster) => {
            health.set("cluster", HealthState::Up, "warming up");
            let (ready, token, warm_state) = (health.clone(), shutdown.clone(), state.clone());
            tasks.push(tokio::spawn(async move {
                let source = cluster.warm_up(&token).await;
                let detail = source.map_or_else(
                    || "no peer answered at start".to_owned(),
                    |peer| format!("copied from {peer}"),
                );
                ready.set("cluster", HealthState::Up, detail);
                ready.set_ready(true);
                tasks_after_warm_up(&warm_state, &cluster, &ready, &token).await;
            }));
        }
        None => health.set_ready(true),
    }
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

/// Replication, anti-entropy and health reporting of the cluster, once warmed up.
async fn tasks_after_warm_up(state: &AppState, cluster: &Arc<Cluster>, health: &Health, shutdown: &CancellationToken) {
    let workers = cluster.spawn(shutdown);
    let prober = probe::spawn(state.clone(), Some(cluster.clone()));
    let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => break,
        }
        cluster.record_metrics();
        let view = cluster.view();
        let unreachable: Vec<&str> = view
            .peers
            .iter()
            .filter(|p| !p.reachable)
            .map(|p| p.url.as_str())
            .collect();
        if unreachable.is_empty() {
            health.set(
                "cluster",
                HealthState::Up,
                format!("{} peers reachable", view.peers.len()),
            );
        } else {
            health.set(
                "cluster",
                HealthState::Degraded,
                format!("unreachable: {}", unreachable.join(", ")),
            );
        }
    }
    for worker in workers {
        let _ = worker.await;
    }
    let _ = prober.await;
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
                metrics::gauge!("rtalpha_registry_instances").set(table.read().instance_count() as f64);
                metrics::gauge!("rtalpha_registry_self_preservation_active").set(if judgement.active {
                    1.0
                } else {
                    0.0
                });
                metrics::gauge!("rtalpha_registry_renewals_in_window").set(judgement.renewals_in_window as f64);
                metrics::gauge!("rtalpha_registry_expected_renewals").set(judgement.expected_renewals);
                if judgement.active {
                    health.set(
                        "self_preservation",
                        HealthState::Degraded,
                        format!(
                            "engaged: {} renewals in the last {} s, {:.0} expected; {} expired leases kept",
                            judgement.renewals_in_window,
                            judgement.window_secs,
                            judgement.expected_renewals,
                            sweep.spared
                        ),
                    );
                } else {
                    health.set("self_preservation", HealthState::Up, "");
                }
            }
        })
    };
    let mut tasks = vec![sampler, sweeper];
    if state.cluster.is_none() {
        tasks.push(probe::spawn(state.clone(), None));
    }
    tasks
}
