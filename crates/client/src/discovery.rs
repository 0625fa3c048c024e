//! The discovery client: registers this instance with the registry and keeps
//! its lease, and keeps a local copy of the registry current for the load
//! balancer.
//!
//! The lease task registers at start-up, renews every renewal interval,
//! registers again when a renewal answers 404 (the registry forgot the
//! instance, or an operator cleared its status), and cancels the lease on
//! [`DiscoveryClient::shutdown`].
//!
//! The view task fetches the whole registry, then follows the registry's push
//! watch from that index, so a cancellation reaches the view within
//! milliseconds. When the watch breaks it catches up with a delta fetch and
//! checks the delta's reconcile hash against its own view (a mismatch means a
//! change was missed: it fetches everything), then tries the watch again,
//! polling deltas while it cannot. Registries are tried in order, same zone
//! first, from the one that last answered. When none answers the view is kept
//! as it was, marked stale, and `/health` says so: calls go on against the last
//! known instances rather than fail.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Method, StatusCode};
use rtalpha_proto::registry::{AppsView, Change, ChangeKind, Delta, Registration};
use rtalpha_proto::{Instance, eureka};
use rtalpha_resilience::Backoff;
use rtalpha_runtime::health::{Health, HealthState};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::transport::{EventStream, Servers};

/// The discovery client's settings (`[discovery]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoverySettings {
    /// Registry base URLs, tried in order (after those of this zone).
    pub urls: Vec<String>,
    /// Registry URLs by zone; those of `zone` are tried first.
    pub zone_urls: BTreeMap<String, Vec<String>>,
    /// The zone this instance runs in.
    pub zone: Option<String>,
    /// Register this instance (false for a client that only looks up others).
    pub register: bool,
    /// Keep a local copy of the registry.
    pub fetch: bool,
    /// Follow the registry's push watch (otherwise poll deltas).
    pub watch: bool,
    /// How often to poll deltas when the watch is down or off.
    #[serde(with = "humantime_serde")]
    pub delta_interval: Duration,
    /// How often to renew the lease.
    #[serde(with = "humantime_serde")]
    pub renewal_interval: Duration,
    /// How long the registry keeps the lease without a renewal.
    #[serde(with = "humantime_serde")]
    pub lease_duration: Duration,
    /// The deadline of every request to a registry.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The pause between attempts when no registry answers.
    pub retry: Backoff,
    /// HTTP Basic user for the registries.
    pub username: Option<String>,
    /// HTTP Basic password.
    pub password: Option<String>,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        DiscoverySettings {
            urls: vec!["http://127.0.0.1:8761".to_owned()],
            zone_urls: BTreeMap::new(),
            zone: None,
            register: true,
            fetch: true,
            watch: true,
            delta_interval: Duration::from_secs(5),
            renewal_interval: Duration::from_secs(30),
            lease_duration: Duration::from_secs(90),
            request_timeout: Duration::from_secs(2),
            retry: Backoff::new(Duration::from_millis(200), Duration::from_secs(10)),
            username: None,
            password: None,
        }
    }
}

impl DiscoverySettings {
    /// The problems with these settings, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.registry_urls().is_empty() {
            problems.push("discovery.urls: at least one registry URL is needed".to_owned());
        }
        for url in self.registry_urls() {
            if !url.starts_with("http://") {
                problems.push(format!("discovery.urls: `{url}` is not an http:// URL"));
            }
        }
        if self.renewal_interval.is_zero() || self.lease_duration <= self.renewal_interval {
            problems.push("discovery.lease_duration must be longer than discovery.renewal_interval".to_owned());
        }
        if self.request_timeout.is_zero() {
            problems.push("discovery.request_timeout must not be zero".to_owned());
        }
        problems
    }

    /// Every registry URL in the order they are tried: this zone's, then the
    /// plain list, then other zones'.
    pub fn registry_urls(&self) -> Vec<String> {
        let mut ordered: Vec<String> = Vec::new();
        let mut push = |url: &String| {
            if !ordered.contains(url) {
                ordered.push(url.clone());
            }
        };
        if let Some(own) = self.zone.as_ref().and_then(|zone| self.zone_urls.get(zone)) {
            own.iter().for_each(&mut push);
        }
        self.urls.iter().for_each(&mut push);
        self.zone_urls.values().flatten().for_each(&mut push);
        ordered
    }
}

/// A client-side copy of the registry at a version.
#[derive(Debug, Default)]
pub struct View {
    /// The registry's index this view reflects.
    pub index: u64,
    /// Instances by upper-case application name, ordered by instance id.
    pub apps: HashMap<String, Arc<[Arc<Instance>]>>,
}

impl View {
    /// The instances of `app` (any case).
    pub fn instances(&self, app: &str) -> Arc<[Arc<Instance>]> {
        self.apps
            .get(&app.to_ascii_uppercase())
            .cloned()
            .unwrap_or_else(|| Arc::from(Vec::new()))
    }

    /// The reconcile hash of this view, in the registry's form.
    pub fn hash(&self) -> String {
        eureka::reconcile_hash_code(self.apps.values().flat_map(|list| list.iter().map(|i| i.status)))
    }

    fn from_apps(apps: AppsView) -> View {
        View {
            index: apps.index,
            apps: apps
                .apps
                .into_iter()
                .map(|app| {
                    let list: Vec<Arc<Instance>> = app.instances.into_iter().map(Arc::new).collect();
                    (app.name, Arc::from(list))
                })
                .collect(),
        }
    }

    /// This view with `change` applied.
    fn with(&self, change: &Change) -> View {
        let mut apps = self.apps.clone();
        let mut list: Vec<Arc<Instance>> = apps.get(&change.app).map(|l| l.to_vec()).unwrap_or_default();
        list.retain(|instance| instance.instance_id != change.instance_id);
        if matches!(change.kind, ChangeKind::Registered | ChangeKind::Modified) {
            list.push(change.instance.clone());
            list.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        }
        if list.is_empty() {
            apps.remove(&change.app);
        } else {
            apps.insert(change.app.clone(), Arc::from(list));
        }
        View {
            index: change.index.max(self.index),
            apps,
        }
    }
}

/// How current the local view is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ViewStatus {
    /// False until the first fetch succeeded.
    pub loaded: bool,
    /// True while no registry answers: the view is the last one known.
    pub stale: bool,
    /// Whether the push watch is connected.
    pub watching: bool,
    /// The registry that answered last.
    pub registry: Option<String>,
    /// What went wrong last, if anything.
    pub problem: Option<String>,
}

/// Why the client could not start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The settings are not valid.
    #[error("invalid discovery settings: {0}")]
    Invalid(String),
}

/// The discovery client; clones share one client.
#[derive(Clone, Debug)]
pub struct DiscoveryClient {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    settings: DiscoverySettings,
    servers: Servers,
    view: ArcSwap<View>,
    changes: watch::Sender<u64>,
    /// Flips to true once, at the first successful fetch.
    loaded: watch::Sender<bool>,
    status: Mutex<ViewStatus>,
    lease: Option<Lease>,
    health: Option<Health>,
    stop: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Lease {
    app: String,
    instance_id: String,
    registration: Registration,
    registered: watch::Sender<bool>,
}

const HEALTH_CHECK: &str = "discovery";

impl DiscoveryClient {
    /// Starts the client: registers `registration` (when registering is on)
    /// and starts following the registry. Returns at once; see
    /// [`wait_loaded`](Self::wait_loaded) and [`wait_registered`](Self::wait_registered).
    pub fn start(
        settings: DiscoverySettings,
        app: &str,
        registration: Option<Registration>,
        health: Option<Health>,
    ) -> Result<DiscoveryClient, DiscoveryError> {
        let problems = settings.problems();
        if !problems.is_empty() {
            return Err(DiscoveryError::Invalid(problems.join("; ")));
        }
        let servers = Servers::new(
            settings.registry_urls(),
            settings.username.as_deref(),
            settings.password.as_deref(),
            settings.request_timeout,
        );
        let lease = registration.filter(|_| settings.register).map(|mut registration| {
            registration.renewal_interval_secs = Some(settings.renewal_interval.as_secs().max(1) as u32);
            registration.lease_duration_secs = Some(settings.lease_duration.as_secs().max(1) as u32);
            if registration.zone.is_none() {
                registration.zone = settings.zone.clone();
            }
            let instance_id = registration
                .instance_id
                .clone()
                .unwrap_or_else(|| match registration.port {
                    Some(port) => format!("{}:{port}", registration.host_name),
                    None => registration.host_name.clone(),
                });
            registration.instance_id = Some(instance_id.clone());
            Lease {
                app: app.to_ascii_uppercase(),
                instance_id,
                registration,
                registered: watch::channel(false).0,
            }
        });
        if let Some(health) = &health {
            health.set(HEALTH_CHECK, HealthState::Degraded, "registry not reached yet");
        }
        let client = DiscoveryClient {
            shared: Arc::new(Shared {
                servers,
                view: ArcSwap::from_pointee(View::default()),
                changes: watch::channel(0).0,
                loaded: watch::channel(false).0,
                status: Mutex::new(ViewStatus {
                    loaded: false,
                    stale: false,
                    watching: false,
                    registry: None,
                    problem: None,
                }),
                lease,
                health,
                stop: CancellationToken::new(),
                tasks: Mutex::new(Vec::new()),
                settings,
            }),
        };
        let mut tasks = Vec::new();
        if client.shared.lease.is_some() {
            tasks.push(tokio::spawn(client.shared.clone().keep_lease()));
        }
        if client.shared.settings.fetch {
            tasks.push(tokio::spawn(client.shared.clone().follow_registry()));
        }
        if let Ok(mut held) = client.shared.tasks.lock() {
            *held = tasks;
        }
        Ok(client)
    }

    /// The local view of the registry now.
    pub fn view(&self) -> Arc<View> {
        self.shared.view.load_full()
    }

    /// The instances of `app` in the local view.
    pub fn instances(&self, app: &str) -> Arc<[Arc<Instance>]> {
        self.shared.view.load().instances(app)
    }

    /// Tells the view's index after every change of the view.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// How current the view is.
    pub fn status(&self) -> ViewStatus {
        self.shared
            .status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Waits until the first fetch succeeded, at most `limit`; true if it did.
    pub async fn wait_loaded(&self, limit: Duration) -> bool {
        let mut loaded = self.shared.loaded.subscribe();
        tokio::time::timeout(limit, loaded.wait_for(|done| *done))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits until the instance is registered, at most `limit`; true if it is.
    pub async fn wait_registered(&self, limit: Duration) -> bool {
        let Some(lease) = &self.shared.lease else {
            return false;
        };
        let mut registered = lease.registered.subscribe();
        tokio::time::timeout(limit, registered.wait_for(|done| *done))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The id this instance is registered under.
    pub fn instance_id(&self) -> Option<&str> {
        self.shared.lease.as_ref().map(|lease| lease.instance_id.as_str())
    }

    /// Stops following the registry and cancels the lease, so that callers
    /// stop sending this instance requests at once rather than at eviction.
    pub async fn shutdown(&self) {
        self.shared.stop.cancel();
        let tasks = self
            .shared
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for task in tasks {
            let _ = task.await;
        }
        if let Some(lease) = &self.shared.lease {
            let path = format!("/v1/apps/{}/{}", lease.app, lease.instance_id);
            match self.shared.servers.send(Method::DELETE, &path, None).await {
                Ok((status, _)) => tracing::info!(%status, instance = %lease.instance_id, "deregistered"),
                Err(err) => tracing::warn!(error = %err, instance = %lease.instance_id, "could not deregister"),
            }
            lease.registered.send_replace(false);
        }
    }
}

enum WatchEnd {
    /// The registry said to fetch everything.
    Resync,
    /// The stream could not be opened or broke.
    Lost,
    /// Shutdown.
    Stopped,
}

impl Shared {
    async fn keep_lease(self: Arc<Self>) {
        let Some(lease) = &self.lease else { return };
        let mut attempt = 0u32;
        loop {
            if !*lease.registered.borrow() {
                match self.register(lease).await {
                    Ok(()) => {
                        attempt = 0;
                        lease.registered.send_replace(true);
                    }
                    Err(problem) => {
                        tracing::warn!(%problem, "registration failed; retrying");
                        let pause = self.settings.retry.delay(attempt);
                        attempt = attempt.saturating_add(1);
                        if self.pause(pause).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            if self.pause(self.settings.renewal_interval).await {
                return;
            }
            let path = format!("/v1/apps/{}/{}/heartbeat", lease.app, lease.instance_id);
            match self.servers.send(Method::PUT, &path, None).await {
                Ok((StatusCode::OK, _)) => {}
                Ok((StatusCode::NOT_FOUND, _)) => {
                    tracing::info!(instance = %lease.instance_id, "the registry does not know this instance; registering again");
                    lease.registered.send_replace(false);
                }
                Ok((status, _)) => tracing::warn!(%status, "renewal refused"),
                Err(err) => tracing::warn!(error = %err, "renewal failed"),
            }
        }
    }

    async fn register(&self, lease: &Lease) -> Result<(), String> {
        let body = serde_json::to_vec(&lease.registration).map_err(|err| err.to_string())?;
        let path = format!("/v1/apps/{}", lease.app);
        match self.servers.send(Method::POST, &path, Some(body)).await {
            Ok((status, _)) if status.is_success() => {
                tracing::info!(app = %lease.app, instance = %lease.instance_id, "registered");
                Ok(())
            }
            Ok((status, body)) => Err(format!("answered {status}: {}", String::from_utf8_lossy(&body))),
            Err(err) => Err(err.to_string()),
        }
    }

    /// Sleeps `pause`; true when the client is stopping.
    async fn pause(&self, pause: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(pause) => false,
            () = self.stop.cancelled() => true,
        }
    }

    async fn follow_registry(self: Arc<Self>) {
        let mut attempt = 0u32;
        let mut need_full = true;
        loop {
            if need_full {
                match self.fetch_all().await {
                    Ok(()) => {
                        need_full = false;
                        attempt = 0;
                    }
                    Err(problem) => {
                        self.mark_stale(problem);
                        let pause = self.settings.retry.delay(attempt);
                        attempt = attempt.saturating_add(1);
                        if self.pause(pause).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            let mut watched_for = Duration::ZERO;
            if self.settings.watch {
                let began = Instant::now();
                match self.watch().await {
                    WatchEnd::Stopped => return,
                    WatchEnd::Resync => {
                        need_full = true;
                        continue;
                    }
                    WatchEnd::Lost => watched_for = began.elapsed(),
                }
            }
            // The watch broke (or is off): catch up by delta and check the
            // view against the registry's hash.
            match self.catch_up().await {
                Ok(true) => {}
                Ok(false) => need_full = true,
                Err(problem) => self.mark_stale(problem),
            }
            // A watch that ran for a while is re-opened at once; one that could
            // not be opened is retried after a delta interval.
            if watched_for < Duration::from_secs(1) && self.pause(self.settings.delta_interval).await {
                return;
            }
        }
    }

    async fn fetch_all(&self) -> Result<(), String> {
        let (status, body) = self
            .servers
            .send(Method::GET, "/v1/apps", None)
            .await
            .map_err(|err| err.to_string())?;
        if status != StatusCode::OK {
            return Err(format!("GET /v1/apps answered {status}"));
        }
        let apps: AppsView = serde_json::from_slice(&body).map_err(|err| format!("GET /v1/apps: {err}"))?;
        self.install(View::from_apps(apps));
        self.mark_fresh();
        Ok(())
    }

    /// Applies the changes since the view's index; false when the caller must
    /// fetch everything (changes pruned, or the hashes disagree).
    async fn catch_up(&self) -> Result<bool, String> {
        let since = self.view.load().index;
        let (status, body) = self
            .servers
            .send(Method::GET, &format!("/v1/delta?since={since}"), None)
            .await
            .map_err(|err| err.to_string())?;
        if status == StatusCode::BAD_REQUEST {
            // Our index is ahead of this registry's (another node, or it
            // restarted): only a full fetch can line the view up.
            return Ok(false);
        }
        if status != StatusCode::OK {
            return Err(format!("GET /v1/delta answered {status}"));
        }
        let delta: Delta = serde_json::from_slice(&body).map_err(|err| format!("GET /v1/delta: {err}"))?;
        self.mark_fresh();
        if delta.resync_required {
            return Ok(false);
        }
        let current = self.view.load_full();
        let mut updated = View {
            index: current.index,
            apps: current.apps.clone(),
        };
        for change in &delta.changes {
            updated = updated.with(change);
        }
        updated.index = updated.index.max(delta.index);
        let matches = delta.apps_hash.is_empty() || updated.hash() == delta.apps_hash;
        if !delta.changes.is_empty() || updated.index != self.view.load().index {
            self.install(updated);
        }
        if !matches {
            tracing::warn!("the local view's hash differs from the registry's; fetching everything");
        }
        Ok(matches)
    }

    async fn watch(&self) -> WatchEnd {
        let from = self.view.load().index;
        let opened = tokio::select! {
            opened = self.servers.open_stream("/v1/watch", Some(from)) => opened,
            () = self.stop.cancelled() => return WatchEnd::Stopped,
        };
        let (url, body) = match opened {
            Ok(opened) => opened,
            Err(problem) => {
                tracing::debug!(%problem, "cannot open the registry watch");
                self.servers.skip_current();
                return WatchEnd::Lost;
            }
        };
        self.set_watching(true, self.servers.current().map(str::to_owned));
        let mut events = EventStream::new(body);
        let end = loop {
            let event = tokio::select! {
                event = events.next() => event,
                () = self.stop.cancelled() => break WatchEnd::Stopped,
            };
            let Some(event) = event else {
                tracing::warn!(%url, "the registry watch ended");
                break WatchEnd::Lost;
            };
            match event.event.as_str() {
                "change" => match serde_json::from_str::<Change>(&event.data) {
                    Ok(change) => {
                        let view = self.view.load().with(&change);
                        self.install(view);
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "unreadable change on the registry watch");
                        break WatchEnd::Resync;
                    }
                },
                "resync" => break WatchEnd::Resync,
                _ => {}
            }
        };
        self.set_watching(false, None);
        end
    }

    fn install(&self, view: View) {
        let index = view.index;
        self.view.store(Arc::new(view));
        self.changes.send_replace(index);
    }

    fn mark_fresh(&self) {
        let registry = self.servers.current().map(str::to_owned);
        let mut was_stale = false;
        if let Ok(mut status) = self.status.lock() {
            was_stale = status.stale;
            status.loaded = true;
            status.stale = false;
            status.problem = None;
            status.registry = registry.clone();
        }
        self.loaded.send_replace(true);
        if was_stale {
            tracing::info!(registry = ?registry, "a registry answers again; the view is current");
        }
        if let Some(health) = &self.health {
            health.set(
                HEALTH_CHECK,
                HealthState::Up,
                format!("following {}", registry.unwrap_or_default()),
            );
        }
    }

    fn mark_stale(&self, problem: String) {
        let instances: usize = self.view.load().apps.values().map(|list| list.len()).sum();
        let mut first = false;
        if let Ok(mut status) = self.status.lock() {
            first = !status.stale;
            status.stale = true;
            status.problem = Some(problem.clone());
        }
        if first {
            tracing::warn!(%problem, instances, "no registry answers; serving the last known view");
        }
        if let Some(health) = &self.health {
            health.set(
                HEALTH_CHECK,
                HealthState::Degraded,
                format!("no registry answers ({problem}); using the last known view of {instances} instances"),
            );
        }
    }

    fn set_watching(&self, watching: bool, registry: Option<String>) {
        if let Ok(mut status) = self.status.lock() {
            status.watching = watching;
            if registry.is_some() {
                status.registry = registry;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_of_the_own_zone_come_first() {
        let settings = DiscoverySettings {
            urls: vec!["http://b:1".into()],
            zone_urls: BTreeMap::from([
                ("eu".to_owned(), vec!["http://eu:1".to_owned()]),
                ("us".to_owned(), vec!["http://us:1".to_owned(), "http://b:1".to_owned()]),
            ]),
            zone: Some("us".into()),
            ..DiscoverySettings::default()
        };
        assert_eq!(settings.registry_urls(), ["http://us:1", "http://b:1", "http://eu:1"]);
    }

    #[test]
    fn bad_settings_are_named() {
        let problems = DiscoverySettings {
            urls: vec!["registry:8761".into()],
            lease_duration: Duration::from_secs(10),
            renewal_interval: Duration::from_secs(30),
            ..DiscoverySettings::default()
        }
        .problems();
        assert!(
            problems.iter().any(|p| p.contains("not an http:// URL")),
            "{problems:?}"
        );
        assert!(problems.iter().any(|p| p.contains("lease_duration")), "{problems:?}");
    }
}
