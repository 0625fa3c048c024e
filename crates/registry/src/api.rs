//! The native JSON API under `/v1/` (docs/api/registry.md).

use std::collections::BTreeMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use rtalpha_proto::instance::Port;
use rtalpha_proto::registry::{
    AppView, AppsView, Delta, InstanceView, MetadataPatch, Registration, RegistryStatus, StatusOverride,
};
use rtalpha_proto::{DataCenter, Instance, LeaseInfo, Status};
use rtalpha_runtime::ApiError;
use serde::Deserialize;

use crate::encode::{self, Encoding};
use crate::server::AppState;
use crate::table::{Renewal, RenewalReport, TableError};
use crate::watch;

/// The `/v1/` routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/apps", get(list_apps))
        .route("/v1/apps/{app}", get(get_app).post(register))
        .route("/v1/apps/{app}/{id}", get(get_instance).delete(cancel))
        .route("/v1/apps/{app}/{id}/heartbeat", put(heartbeat))
        .route("/v1/apps/{app}/{id}/status", put(set_status).delete(clear_status))
        .route("/v1/apps/{app}/{id}/metadata", axum::routing::patch(update_metadata))
        .route("/v1/delta", get(delta))
        .route("/v1/status", get(status))
        .route("/v1/watch", get(watch_all))
        .route("/v1/watch/{app}", get(watch_app))
}

impl From<TableError> for ApiError {
    fn from(err: TableError) -> Self {
        ApiError::not_found(err.to_string())
    }
}

/// The JSON body of a request, with a rejection that names the problem.
fn body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    payload
        .map(|Json(value)| value)
        .map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))
}

#[derive(Debug, Deserialize)]
struct BlockingQuery {
    index: Option<u64>,
    wait: Option<String>,
}

async fn list_apps(
    State(state): State<AppState>,
    Query(query): Query<BlockingQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(index) = query.index {
        let wait =
            watch::parse_wait(query.wait.as_deref(), state.settings.max_wait)?.unwrap_or(state.settings.max_wait);
        watch::block_until_past(&state, index, wait, || state.table.index()).await;
    }
    encode::respond(&state.encodings, &state.table, Encoding::Native, &headers).await
}

async fn get_app(
    State(state): State<AppState>,
    Path(app): Path<String>,
    Query(query): Query<BlockingQuery>,
) -> Result<Json<AppsView>, ApiError> {
    let app = app.to_ascii_uppercase();
    if let Some(index) = query.index {
        let wait =
            watch::parse_wait(query.wait.as_deref(), state.settings.max_wait)?.unwrap_or(state.settings.max_wait);
        watch::block_until_past(&state, index, wait, || {
            state.table.read().app(&app).map_or(0, |(app_index, _)| app_index)
        })
        .await;
    }
    let view = state.table.read();
    let apps = match view.app(&app) {
        Some((_, instances)) => vec![AppView { name: app, instances }],
        None if query.index.is_some() => Vec::new(),
        None => return Err(TableError::UnknownApp(app).into()),
    };
    Ok(Json(AppsView {
        index: view.index(),
        apps,
    }))
}

async fn get_instance(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Json<InstanceView>, ApiError> {
    instance_view(&state, app.to_ascii_uppercase(), id)
}

/// One instance with the index it was read at; 404 when it is not registered.
fn instance_view(state: &AppState, app: String, id: String) -> Result<Json<InstanceView>, ApiError> {
    let view = state.table.read();
    let instance = view
        .instance(&app, &id)
        .ok_or(TableError::UnknownInstance { app, id })?;
    Ok(Json(InstanceView {
        index: view.index(),
        instance,
    }))
}

/// Builds the registry's record from a native registration.
pub fn instance_from_registration(app: &str, registration: Registration) -> Result<Instance, ApiError> {
    if registration.host_name.trim().is_empty() {
        return Err(ApiError::bad_request("field `host_name` must not be empty"));
    }
    let interval = registration
        .renewal_interval_secs
        .unwrap_or(LeaseInfo::DEFAULT_RENEWAL_INTERVAL_SECS);
    let duration = registration
        .lease_duration_secs
        .unwrap_or(LeaseInfo::DEFAULT_DURATION_SECS);
    if interval == 0 || duration == 0 {
        return Err(ApiError::bad_request(
            "fields `renewal_interval_secs` and `lease_duration_secs` must be at least 1",
        ));
    }
    let app = app.to_ascii_uppercase();
    let port = registration.port;
    let instance_id = registration
        .instance_id
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| format!("{}:{}", registration.host_name, port.unwrap_or(0)));
    Ok(Instance {
        vip_address: registration.vip_address.or_else(|| Some(app.to_ascii_lowercase())),
        app,
        instance_id,
        ip_addr: registration.ip_addr.unwrap_or_else(|| registration.host_name.clone()),
        host_name: registration.host_name,
        port: Port {
            number: port.unwrap_or(0),
            enabled: port.is_some(),
        },
        secure_port: Port {
            number: registration.secure_port.unwrap_or(0),
            enabled: registration.secure_port.is_some(),
        },
        secure_vip_address: registration.secure_vip_address,
        status: registration.status.unwrap_or(Status::Up),
        overridden_status: Status::Unknown,
        metadata: registration.metadata,
        data_center: DataCenter::default(),
        zone: registration.zone,
        home_page_url: registration.home_page_url,
        status_page_url: registration.status_page_url,
        health_check_url: registration.health_check_url,
        secure_health_check_url: None,
        country_id: 1,
        lease: LeaseInfo {
            renewal_interval_secs: interval,
            duration_secs: duration,
            ..LeaseInfo::default()
        },
        is_coordinating_discovery_server: false,
        last_updated_timestamp: 0,
        last_dirty_timestamp: 0,
        action_type: None,
        health_check: None,
    })
}

async fn register(
    State(state): State<AppState>,
    Path(app): Path<String>,
    payload: Result<Json<Registration>, JsonRejection>,
) -> Result<Json<InstanceView>, ApiError> {
    let instance = instance_from_registration(&app, body(payload)?)?;
    let (app, id) = (instance.app.clone(), instance.instance_id.clone());
    state.register(instance);
    instance_view(&state, app, id)
}

#[derive(Debug, Deserialize)]
struct HeartbeatQuery {
    status: Option<String>,
}

fn parse_status(text: &str, parameter: &str) -> Result<Status, ApiError> {
    text.parse()
        .map_err(|err: rtalpha_proto::StatusParseError| ApiError::bad_request(format!("{parameter}: {err}")))
}

async fn heartbeat(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    Query(query): Query<HeartbeatQuery>,
) -> Result<Response, ApiError> {
    let status = query
        .status
        .as_deref()
        .map(|s| parse_status(s, "query parameter `status`"))
        .transpose()?;
    let report = RenewalReport {
        status,
        last_dirty_timestamp: None,
    };
    let app = app.to_ascii_uppercase();
    match state.renew(&app, &id, report)? {
        Renewal::Renewed => Ok(Json(serde_json::json!({"index": state.table.index()})).into_response()),
        Renewal::MustRegister => Err(ApiError::not_found(format!(
            "instance `{id}` of app `{app}` must register again"
        ))),
    }
}

async fn cancel(State(state): State<AppState>, Path((app, id)): Path<(String, String)>) -> Result<Response, ApiError> {
    let change = state.cancel(&app.to_ascii_uppercase(), &id)?;
    Ok(Json(serde_json::json!({"index": change.index})).into_response())
}

async fn set_status(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    payload: Result<Json<StatusOverride>, JsonRejection>,
) -> Result<Json<InstanceView>, ApiError> {
    let status = body(payload)?.status;
    let app = app.to_ascii_uppercase();
    state.set_override(&app, &id, status)?;
    get_instance(State(state), Path((app, id))).await
}

async fn clear_status(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    Query(query): Query<HeartbeatQuery>,
) -> Result<Json<InstanceView>, ApiError> {
    let status = query
        .status
        .as_deref()
        .map(|s| parse_status(s, "query parameter `status`"))
        .transpose()?
        .unwrap_or(Status::Up);
    let app = app.to_ascii_uppercase();
    state.clear_override(&app, &id, Some(status))?;
    get_instance(State(state), Path((app, id))).await
}

async fn update_metadata(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    payload: Result<Json<MetadataPatch>, JsonRejection>,
) -> Result<Json<InstanceView>, ApiError> {
    let patch = body(payload)?;
    let app = app.to_ascii_uppercase();
    state.update_metadata(&app, &id, &patch)?;
    get_instance(State(state), Path((app, id))).await
}

#[derive(Debug, Deserialize)]
struct DeltaQuery {
    since: u64,
}

async fn delta(
    State(state): State<AppState>,
    query: Result<Query<DeltaQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Delta>, ApiError> {
    let Query(DeltaQuery { since }) = query.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let view = state.table.read();
    let index = view.index();
    if since > index {
        return Err(ApiError::bad_request(format!(
            "query parameter `since`: {since} is ahead of the registry's index {index}"
        )));
    }
    let apps_hash = rtalpha_proto::eureka::reconcile_hash_code(view.statuses());
    let delta = match view.changes_since(since) {
        Some(changes) => Delta {
            index,
            since,
            resync_required: false,
            changes: changes.iter().map(|change| change.as_ref().clone()).collect(),
            apps_hash,
        },
        None => Delta {
            index,
            since,
            resync_required: true,
            changes: Vec::new(),
            apps_hash,
        },
    };
    Ok(Json(delta))
}

/// The registry's own state: counts, self-preservation, evictions.
pub fn registry_status(state: &AppState) -> RegistryStatus {
    let self_preservation = state.table.self_preservation();
    let view = state.table.read();
    let mut by_status = BTreeMap::new();
    for status in view.statuses() {
        *by_status.entry(status).or_insert(0) += 1;
    }
    RegistryStatus {
        index: view.index(),
        apps: view.apps().count(),
        instances: view.instance_count(),
        instances_by_status: by_status,
        self_preservation,
        evictions_total: state.table.evictions_total(),
        started_at: state.table.started_at(),
        cluster: state.cluster.as_ref().map(|cluster| cluster.view()),
    }
}

async fn status(State(state): State<AppState>) -> Json<RegistryStatus> {
    Json(registry_status(&state))
}

#[derive(Debug, Deserialize)]
struct WatchQuery {
    index: Option<u64>,
}

fn resume_index(query: &WatchQuery, headers: &HeaderMap) -> Option<u64> {
    query.index.or_else(|| {
        headers
            .get("last-event-id")
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse().ok())
    })
}

async fn watch_all(State(state): State<AppState>, Query(query): Query<WatchQuery>, headers: HeaderMap) -> Response {
    let since = resume_index(&query, &headers);
    watch::stream(state, None, since).into_response()
}

async fn watch_app(
    State(state): State<AppState>,
    Path(app): Path<String>,
    Query(query): Query<WatchQuery>,
    headers: HeaderMap,
) -> Response {
    let since = resume_index(&query, &headers);
    watch::stream(state, Some(app.to_ascii_uppercase()), since).into_response()
}
