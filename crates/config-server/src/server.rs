//! The HTTP API of Spring Cloud Config, the refresh loop, and `run`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::StatusCode;
use http::header::CONTENT_TYPE;
use rtalpha_bus::{Bus, Delivery, RELAY_PATH, Relay};
use rtalpha_proto::bus::RemoteEvent;
use rtalpha_runtime::auth::BasicAuth;
use rtalpha_runtime::health::HealthState;
use rtalpha_runtime::http::{ServeOptions, serve};
use rtalpha_runtime::{ApiError, Health};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::cipher::Cipher;
use crate::config::Config;
use crate::environment::{self, EnvironmentShape, Snapshot};
use crate::monitor;
use crate::repo::{Credentials, GitRepo, NativeRepo, RemoteAccess, RepoError, SshOptions};
use crate::store::{Backend, Store, destinations};

/// What the handlers share, behind one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The shared parts of [`AppState`].
pub struct Shared {
    /// The main repository.
    pub store: Store,
    /// Further repositories by application pattern, tried in order before the main one.
    pub pattern_stores: Vec<(Vec<String>, Store)>,
    /// The key for `{cipher}` values, when one is configured.
    pub cipher: Option<Cipher>,
    credentials: Option<BasicAuth>,
    health: Health,
    /// The relay this server serves at `/bus/events`.
    relay: Relay,
    /// Where refresh events go: RabbitMQ, another server's relay, or the own relay.
    bus: Bus,
    /// This server's id on the bus.
    bus_id: String,
    /// Wakes the refresh loop at once (a webhook, another config server's event).
    refresh_now: Notify,
    /// The bus name prefix of config servers, to recognise each other's events.
    bus_app: String,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl From<RepoError> for ApiError {
    fn from(err: RepoError) -> Self {
        match err {
            RepoError::UnknownLabel(label) => ApiError::not_found(format!("no label `{label}` in the repository")),
            RepoError::Unavailable(problem) => {
                // The details (local paths, remote errors) are for operators, in logs and
                // `/health`; the caller learns that it can retry.
                tracing::warn!(problem = %problem, "a request found no repository to serve");
                ApiError::unavailable("the repository cannot be read now; see /health")
            }
        }
    }
}

fn credentials_of(username: Option<&str>, password: Option<&str>) -> Option<Credentials> {
    Some(Credentials {
        username: username.unwrap_or("git").to_owned(),
        password: password?.to_owned(),
    })
}

/// The local clone's directory for a URI when `basedir` is not set.
fn default_basedir(uri: &str) -> PathBuf {
    // FNV-1a: stable across runs, so a restart finds its clone again.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in uri.bytes() {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    std::env::temp_dir().join(format!("rtalpha-config-{h:016x}"))
}

impl AppState {
    /// State for a configuration; `port` goes into the bus id.
    pub fn new(config: &Config, health: Health, port: u16, shutdown: &CancellationToken) -> Result<Self, String> {
        let settings = &config.config_server;
        let backend = match (&settings.native_dir, &settings.git.uri) {
            (Some(dir), _) => Backend::Native(NativeRepo { dir: dir.clone() }),
            (None, Some(uri)) => Backend::Git(GitRepo {
                uri: uri.clone(),
                dir: settings.git.basedir.clone().unwrap_or_else(|| default_basedir(uri)),
                depth: settings.git.depth,
                access: RemoteAccess {
                    credentials: credentials_of(settings.git.username.as_deref(), settings.git.password.as_deref()),
                    ca_file: settings.git.ca_file.clone(),
                    ssh: SshOptions {
                        private_key_file: settings.git.private_key_file.clone(),
                        known_hosts_file: settings.git.known_hosts_file.clone(),
                        strict_host_key_checking: settings.git.strict_host_key_checking,
                        connect_timeout: settings.git.timeout,
                    },
                },
            }),
            (None, None) => Backend::Native(NativeRepo {
                dir: PathBuf::from("."),
            }),
        };
        let store = Store::new(
            backend,
            settings.git.search_paths.clone(),
            settings.git.default_label.clone(),
            settings.git.timeout,
        );
        let pattern_stores = settings
            .git
            .repos
            .iter()
            .map(|repo| {
                let backend = Backend::Git(GitRepo {
                    uri: repo.uri.clone(),
                    dir: settings.git.basedir.as_ref().map_or_else(
                        || default_basedir(&repo.uri),
                        |base| base.join(format!("repo-{}", repo.name)),
                    ),
                    depth: settings.git.depth,
                    access: RemoteAccess {
                        credentials: credentials_of(repo.username.as_deref(), repo.password.as_deref()),
                        // Trust is the organisation's and carries over; identity does not.
                        ca_file: repo.ca_file.clone().or_else(|| settings.git.ca_file.clone()),
                        ssh: SshOptions {
                            private_key_file: repo.private_key_file.clone(),
                            known_hosts_file: repo
                                .known_hosts_file
                                .clone()
                                .or_else(|| settings.git.known_hosts_file.clone()),
                            strict_host_key_checking: repo
                                .strict_host_key_checking
                                .unwrap_or(settings.git.strict_host_key_checking),
                            connect_timeout: settings.git.timeout,
                        },
                    },
                });
                let label = repo
                    .default_label
                    .clone()
                    .unwrap_or_else(|| settings.git.default_label.clone());
                let store = Store::new(backend, repo.search_paths.clone(), label, settings.git.timeout);
                (repo.pattern.clone(), store)
            })
            .collect();
        let key = config.encrypt.key.clone().or_else(|| std::env::var("ENCRYPT_KEY").ok());
        let cipher = key
            .map(|key| Cipher::new(&key, &config.encrypt.salt))
            .transpose()
            .map_err(|err| err.to_string())?;
        let credentials = BasicAuth::configured(
            settings.username.as_deref(),
            settings.password.as_deref(),
            "config server",
        );
        let relay = Relay::default();
        let bus = match &settings.bus.url {
            Some(url) => Bus::connect(url, shutdown.clone()).map_err(|err| err.to_string())?,
            None => Bus::local(relay.clone()),
        };
        Ok(AppState(Arc::new(Shared {
            store,
            pattern_stores,
            cipher,
            credentials,
            health,
            relay,
            bus,
            bus_id: rtalpha_bus::bus_id(&settings.bus.app_name, port),
            refresh_now: Notify::new(),
            bus_app: format!("{}:", settings.bus.app_name),
        })))
    }

    /// Publishes a refresh event for each destination.
    async fn publish_refresh(&self, destinations: &BTreeSet<String>) {
        for destination in destinations {
            let event = rtalpha_bus::refresh_event(&self.bus_id, destination);
            match self.bus.publish(&event).await {
                Ok(()) => {
                    tracing::info!(destination = %event.destination(), "refresh event published");
                    metrics::counter!("rtalpha_config_refresh_events_total").increment(1);
                }
                Err(err) => tracing::warn!(destination = %destination, error = %err, "cannot publish a refresh event"),
            }
        }
    }

    /// The repository that serves an application and its profiles.
    pub fn store_for(&self, application: &str, profiles: &str) -> &Store {
        if self.pattern_stores.is_empty() {
            return &self.store;
        }
        let key = format!("{application}/{profiles}");
        self.pattern_stores
            .iter()
            .find(|(patterns, _)| {
                patterns.iter().any(|pattern| {
                    let pattern = pattern.trim();
                    if pattern.contains('/') {
                        wildcard(pattern, &key)
                    } else {
                        wildcard(pattern, application)
                    }
                })
            })
            .map_or(&self.store, |(_, store)| store)
    }

    fn all_stores(&self) -> impl Iterator<Item = &Store> {
        std::iter::once(&self.store).chain(self.pattern_stores.iter().map(|(_, store)| store))
    }

    fn has_local_copies(&self) -> bool {
        self.all_stores().all(Store::has_local_copy)
    }

    /// Reports the repositories' health, one check each.
    fn report_health(&self) {
        self.report_store_health("repository", &self.store);
        for (position, (_, store)) in self.pattern_stores.iter().enumerate() {
            self.report_store_health(&format!("repository[{position}]"), store);
        }
    }

    fn report_store_health(&self, name: &str, store: &Store) {
        let (remote, invalid) = store.problems();
        if !store.has_local_copy() {
            self.health.set(
                name,
                HealthState::Down,
                remote.unwrap_or_else(|| "no local copy".to_owned()),
            );
            return;
        }
        let mut problems = Vec::new();
        if let Some(remote) = remote {
            problems.push(format!("remote unreachable, serving the last good copy: {remote}"));
        }
        if !invalid.is_empty() {
            problems.push(format!("invalid files not served: {}", invalid.join("; ")));
        }
        if problems.is_empty() {
            self.health.set(name, HealthState::Up, "");
        } else {
            self.health.set(name, HealthState::Degraded, problems.join(" | "));
        }
    }
}

/// The config server's routes.
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route(RELAY_PATH, get(relay_subscribe).post(relay_publish))
        .route("/monitor", post(monitor))
        .route("/busrefresh", post(bus_refresh))
        .route("/busrefresh/{*destination}", post(bus_refresh_to))
        .route("/actuator/busrefresh", post(bus_refresh))
        .route("/actuator/busrefresh/{*destination}", post(bus_refresh_to))
        .route("/encrypt", post(encrypt))
        .route("/decrypt", post(decrypt))
        .route("/{first}", get(one_segment))
        .route("/{first}/{second}", get(two_segments))
        .route("/{application}/{profiles}/{label}", get(environment_with_label))
        .route("/{application}/{profiles}/{label}/{*path}", get(plain_file))
        .layer(middleware::from_fn_with_state(state.clone(), require_credentials))
        .with_state(state)
}

async fn require_credentials(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(refusal) = state
        .credentials
        .as_ref()
        .and_then(|auth| auth.refusal(request.headers()))
    {
        return refusal;
    }
    next.run(request).await
}

/// `*` matches any run of characters; everything else itself.
fn wildcard(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            let Some(rest) = text.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len()).any(|skip| rest.is_char_boundary(skip) && wildcard(tail, &rest[skip..]))
        }
    }
}

/// Spring's `(_)` stands for `/` in labels.
fn label_of(text: &str) -> String {
    text.replace("(_)", "/")
}

use environment::profiles_of;

fn valid_name(name: &str, what: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty() && !name.contains("..") && !name.contains('/') && !name.contains('\\');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("invalid {what} `{name}`")))
    }
}

/// Spring Cloud Config's v2 media type for Environments: every value with its origin.
pub const V2_JSON: &str = "application/vnd.spring-cloud.config-server.v2+json";

/// The shape `Accept` asks for: v2 when it names v2 (with a quality above zero) and
/// names no plain JSON type with a higher quality. Wildcards choose plain JSON, as Spring
/// answers its first mapping, and Spring's own client asks for v2 by name.
fn shape_for(headers: &HeaderMap) -> EnvironmentShape {
    let mut v2 = 0.0_f32;
    let mut plain = 0.0_f32;
    for value in headers.get_all(http::header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for range in value.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let quality = parts
                .filter_map(|param| {
                    param
                        .trim()
                        .strip_prefix("q=")
                        .and_then(|q| q.trim().parse::<f32>().ok())
                })
                .next_back()
                .unwrap_or(1.0);
            match media.as_str() {
                V2_JSON => v2 = v2.max(quality),
                "application/json" | "application/vnd.spring-cloud.config-server.v1+json" => {
                    plain = plain.max(quality);
                }
                _ => {}
            }
        }
    }
    if v2 > 0.0 && v2 >= plain {
        EnvironmentShape::WithOrigins
    } else {
        EnvironmentShape::Plain
    }
}

async fn environment_response(
    state: &AppState,
    application: &str,
    profiles: &str,
    label: Option<&str>,
    shape: EnvironmentShape,
) -> Result<Response, ApiError> {
    valid_name(application, "application name")?;
    let store = state.store_for(application, profiles);
    let named = label.is_some();
    let label = match label {
        Some(label) if label.contains("(_)") => std::borrow::Cow::Owned(label_of(label)),
        Some(label) => std::borrow::Cow::Borrowed(label),
        None => std::borrow::Cow::Borrowed(store.default_label()),
    };
    let snapshot = store.snapshot(&label).await?;
    let body = snapshot.environment_json(
        application,
        profiles,
        named,
        store.state(&label),
        state.cipher.as_ref(),
        shape,
    );
    let content_type = match shape {
        EnvironmentShape::Plain => "application/json",
        EnvironmentShape::WithOrigins => V2_JSON,
    };
    // The same URL answers two shapes: caches must key on `Accept`.
    Ok(([(CONTENT_TYPE, content_type), (http::header::VARY, "accept")], body).into_response())
}

/// A rendering request: `app-profile.ext`.
struct Rendering {
    application: String,
    profiles: String,
    format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Yaml,
    Properties,
    Json,
}

fn rendering_of(segment: &str) -> Option<Rendering> {
    let (stem, extension) = segment.rsplit_once('.')?;
    let format = match extension {
        "yml" | "yaml" => Format::Yaml,
        "properties" => Format::Properties,
        "json" => Format::Json,
        _ => return None,
    };
    let (application, profiles) = stem.rsplit_once('-')?;
    (!application.is_empty() && !profiles.is_empty()).then(|| Rendering {
        application: application.to_owned(),
        profiles: profiles.to_owned(),
        format,
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RenderQuery {
    resolve_placeholders: Option<bool>,
}

async fn render(
    state: &AppState,
    rendering: Rendering,
    label: Option<&str>,
    resolve: bool,
) -> Result<Response, ApiError> {
    valid_name(&rendering.application, "application name")?;
    let store = state.store_for(&rendering.application, &rendering.profiles);
    let label = label.map_or_else(|| store.default_label().to_owned(), label_of);
    let snapshot = store.snapshot(&label).await?;
    let environment = snapshot.environment(
        &rendering.application,
        &profiles_of(&rendering.profiles),
        state.cipher.as_ref(),
    );
    let mut merged = environment::merged(&environment);
    if resolve {
        let lookup = merged.clone();
        for value in merged.values_mut() {
            if let serde_json::Value::String(text) = value {
                *text = environment::resolve_placeholders(text, &lookup);
            }
        }
    }
    Ok(match rendering.format {
        Format::Properties => ([(CONTENT_TYPE, "text/plain")], environment::to_properties(&merged)).into_response(),
        Format::Yaml => (
            [(CONTENT_TYPE, "text/plain")],
            environment::to_yaml(&environment::to_nested(&merged)),
        )
            .into_response(),
        Format::Json => {
            let body = serde_json::to_vec(&environment::to_nested(&merged)).unwrap_or_default();
            ([(CONTENT_TYPE, "application/json")], body).into_response()
        }
    })
}

async fn one_segment(
    State(state): State<AppState>,
    Path(first): Path<String>,
    Query(query): Query<RenderQuery>,
) -> Result<Response, ApiError> {
    let rendering = rendering_of(&first).ok_or_else(|| {
        ApiError::not_found(format!(
            "`/{first}` is neither `/{{application}}-{{profile}}.yml|properties|json` nor an application and profile"
        ))
    })?;
    render(&state, rendering, None, query.resolve_placeholders.unwrap_or(true)).await
}

async fn two_segments(
    State(state): State<AppState>,
    Path((first, second)): Path<(String, String)>,
    Query(query): Query<RenderQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    match rendering_of(&second) {
        Some(rendering) => {
            render(
                &state,
                rendering,
                Some(&first),
                query.resolve_placeholders.unwrap_or(true),
            )
            .await
        }
        None => environment_response(&state, &first, &second, None, shape_for(&headers)).await,
    }
}

async fn environment_with_label(
    State(state): State<AppState>,
    Path((application, profiles, label)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    environment_response(&state, &application, &profiles, Some(&label), shape_for(&headers)).await
}

async fn plain_file(
    State(state): State<AppState>,
    Path((application, profiles, label, path)): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    valid_name(&application, "application name")?;
    let label = label_of(&label);
    let snapshot: Arc<Snapshot> = state.store_for(&application, &profiles).snapshot(&label).await?;
    let profiles = profiles_of(&profiles);
    let bytes = snapshot
        .plain_file(&application, &profiles, &path)
        .ok_or_else(|| ApiError::not_found(format!("no file `{path}` for `{application}` at label `{label}`")))?;
    // Text files get their placeholders resolved against the application's properties.
    match std::str::from_utf8(bytes) {
        Ok(text) if text.contains("${") => {
            let environment = snapshot.environment(&application, &profiles, state.cipher.as_ref());
            let merged = environment::merged(&environment);
            Ok((
                [(CONTENT_TYPE, "text/plain")],
                environment::resolve_placeholders(text, &merged),
            )
                .into_response())
        }
        Ok(text) => Ok(([(CONTENT_TYPE, "text/plain")], text.to_owned()).into_response()),
        Err(_) => Ok(([(CONTENT_TYPE, "application/octet-stream")], bytes.as_ref().clone()).into_response()),
    }
}

fn cipher_of(state: &AppState) -> Result<&Cipher, ApiError> {
    state.cipher.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no encryption key is configured (encrypt.key or ENCRYPT_KEY)",
        )
    })
}

fn body_text(body: &Bytes) -> Result<String, ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request("the body must be UTF-8 text"))?;
    // curl's `-d` sends form encoding; Spring trims a trailing `=` that it adds.
    Ok(text.strip_suffix('=').unwrap_or(text).to_owned())
}

async fn encrypt(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let cipher = cipher_of(&state)?;
    let text = body_text(&body)?;
    Ok(([(CONTENT_TYPE, "text/plain")], cipher.encrypt(&text)).into_response())
}

async fn decrypt(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let cipher = cipher_of(&state)?;
    let text = body_text(&body)?;
    let plain = cipher
        .decrypt(
            text.trim()
                .strip_prefix(crate::cipher::CIPHER_PREFIX)
                .unwrap_or(text.trim()),
        )
        .map_err(|err| ApiError::bad_request(err.to_string()))?;
    Ok(([(CONTENT_TYPE, "text/plain")], plain).into_response())
}

/// Runs the config server on `listener` until `shutdown` is cancelled.
///
/// It clones (or fetches) first; a remote that cannot be reached does not stop it when
/// a local copy exists: it serves that, and says so in `/health` and in answers.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
    let health = Health::new();
    let port = listener.local_addr()?.port();
    let state = AppState::new(&config, health.clone(), port, &shutdown).map_err(std::io::Error::other)?;
    if config.config_server.git.clone_on_start || config.config_server.native_dir.is_some() {
        for store in state.all_stores() {
            let _ = store.sync().await;
            if let Err(err) = store.snapshot(store.default_label()).await {
                tracing::warn!(error = %err, "the default label cannot be served yet");
            }
        }
    }
    state.report_health();
    health.set_ready(state.has_local_copies());
    let refresher = {
        let (state, token, health) = (state.clone(), shutdown.clone(), health.clone());
        let every = config.config_server.git.refresh_rate;
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.tick().await;
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = state.refresh_now.notified() => {}
                    () = token.cancelled() => return,
                }
                for store in state.all_stores() {
                    for change in store.refresh().await {
                        let targets = destinations(&change.paths);
                        tracing::info!(label = %change.label, version = ?change.version, files = change.paths.len(), destinations = ?targets, "configuration changed");
                        metrics::counter!("rtalpha_config_changes_total").increment(1);
                        state.publish_refresh(&targets).await;
                    }
                }
                state.report_health();
                health.set_ready(state.has_local_copies());
            }
        })
    };
    let _watchers = watch_local_sources(&state);
    let listener_task = {
        let (state, token) = (state.clone(), shutdown.clone());
        tokio::spawn(async move { follow_other_config_servers(state, token).await })
    };
    let options = ServeOptions {
        max_body_bytes: config.server.max_body_bytes,
        shutdown_grace: config.server.shutdown_grace,
        health,
    };
    let result = serve(listener, routes(state), options, shutdown.clone()).await;
    shutdown.cancel();
    let _ = refresher.await;
    let _ = listener_task.await;
    result
}

/// Watches the sources on this machine, so that a commit (or an edit of a plain
/// directory) is served at once rather than at the next `refresh_rate`. The watchers
/// live as long as the returned values.
fn watch_local_sources(state: &AppState) -> Vec<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut watchers = Vec::new();
    for store in state.all_stores() {
        let Some(path) = store.local_source() else { continue };
        let waker = state.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|event| !event.kind.is_access()) {
                waker.refresh_now.notify_one();
            }
        });
        match watcher {
            Ok(mut watcher) => match watcher.watch(&path, notify::RecursiveMode::Recursive) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "watching the repository for changes");
                    watchers.push(watcher);
                }
                Err(err) => tracing::warn!(path = %path.display(), error = %err, "cannot watch; polling only"),
            },
            Err(err) => tracing::warn!(error = %err, "cannot watch the file system; polling only"),
        }
    }
    watchers
}

/// Another config server announcing a change (a webhook reached it, or its fetch found
/// a commit) makes this one fetch at once: config servers share nothing but the bus.
async fn follow_other_config_servers(state: AppState, shutdown: CancellationToken) {
    let mut deliveries = state.bus.subscribe();
    loop {
        let delivery = tokio::select! {
            delivery = deliveries.recv() => delivery,
            () = shutdown.cancelled() => return,
        };
        match delivery {
            Ok(Delivery::Event(event @ RemoteEvent::RefreshRemoteApplicationEvent { .. })) => {
                let origin = event.origin();
                if origin != state.bus_id && origin.starts_with(&state.bus_app) {
                    tracing::info!(from = %origin, "another config server saw a change; fetching now");
                    state.refresh_now.notify_one();
                }
            }
            Ok(_) => {}
            // Missed events may have announced a change: fetch to be sure.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => state.refresh_now.notify_one(),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn relay_publish(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let event: RemoteEvent =
        serde_json::from_slice(&body).map_err(|err| ApiError::bad_request(format!("not a bus event: {err}")))?;
    state.relay.publish(event);
    Ok(StatusCode::ACCEPTED.into_response())
}

async fn relay_subscribe(State(state): State<AppState>) -> Response {
    let receiver = state.relay.deliveries().subscribe();
    let events = futures_util::stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(Delivery::Event(event)) => {
                    let data = serde_json::to_string(&event).unwrap_or_default();
                    return Some((
                        Ok::<_, std::convert::Infallible>(Event::default().event("bus").data(data)),
                        receiver,
                    ));
                }
                Ok(Delivery::MayHaveMissed) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

async fn monitor(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let changed = monitor::parse(&headers, &body).map_err(|err| ApiError::bad_request(err.to_string()))?;
    let targets = match changed {
        monitor::Changed::Paths(paths) => destinations(&paths),
        monitor::Changed::Everything => BTreeSet::from(["**".to_owned()]),
    };
    // Fetch now; the refresh loop publishes for what actually changed, and other config
    // servers hear of it on the bus.
    state.refresh_now.notify_one();
    let names: Vec<&String> = targets.iter().collect();
    Ok(axum::Json(names).into_response())
}

async fn bus_refresh(State(state): State<AppState>) -> Response {
    state.publish_refresh(&BTreeSet::from(["**".to_owned()])).await;
    StatusCode::NO_CONTENT.into_response()
}

async fn bus_refresh_to(State(state): State<AppState>, Path(destination): Path<String>) -> Response {
    // Path segments join with `:` as in Spring: `/busrefresh/customers/9000`.
    let destination = destination.trim_matches('/').replace('/', ":");
    state.publish_refresh(&BTreeSet::from([destination])).await;
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_chooses_the_v2_shape_only_when_it_is_named_and_not_outranked() {
        let cases: [(&[&str], EnvironmentShape); 9] = [
            (&[], EnvironmentShape::Plain),
            (&["*/*"], EnvironmentShape::Plain),
            (&["application/json"], EnvironmentShape::Plain),
            (&[V2_JSON], EnvironmentShape::WithOrigins),
            (
                &["Application/VND.spring-cloud.config-server.v2+JSON"],
                EnvironmentShape::WithOrigins,
            ),
            (
                &["application/json, application/vnd.spring-cloud.config-server.v2+json"],
                EnvironmentShape::WithOrigins,
            ),
            (
                &[
                    "application/json",
                    "application/vnd.spring-cloud.config-server.v2+json;q=0.5",
                ],
                EnvironmentShape::Plain,
            ),
            (
                &["application/vnd.spring-cloud.config-server.v2+json; q=0, */*"],
                EnvironmentShape::Plain,
            ),
            (
                &["text/html;q=0.9, application/vnd.spring-cloud.config-server.v2+json;q=0.8"],
                EnvironmentShape::WithOrigins,
            ),
        ];
        for (accept, expected) in cases {
            let mut headers = HeaderMap::new();
            for value in accept {
                headers.append(http::header::ACCEPT, value.parse().unwrap());
            }
            assert_eq!(shape_for(&headers), expected, "{accept:?}");
        }
    }
}
