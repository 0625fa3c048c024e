//! Eureka's REST API under `/eureka/`, so that Eureka clients work unchanged.
//!
//! Answers are XML unless the `Accept` header mentions JSON, as Eureka's own server
//! does (some clients send no `Accept` at all and parse XML). Request bodies are read
//! as XML when their `Content-Type` says so, as JSON otherwise. Status codes follow
//! Eureka: 204 for a registration, 200 for a renewal, 404 when an instance must
//! register again.

use std::collections::{BTreeMap, HashMap};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use http::StatusCode;
use http::header::{ACCEPT, CONTENT_TYPE};
use rtalpha_proto::eureka::{self as wire, ApplicationJson, ApplicationsJson};
use rtalpha_proto::registry::MetadataPatch;
use rtalpha_proto::{Instance, Status};
use rtalpha_runtime::ApiError;
use serde::Deserialize;
use serde_json::Value;

use crate::encode::{self, Encoding};
use crate::server::AppState;
use crate::table::{Renewal, RenewalReport, TableError};
use crate::xml;

/// The `/eureka/` routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/eureka/apps", get(all_apps))
        .route("/eureka/apps/", get(all_apps))
        .route("/eureka/apps/delta", get(delta))
        .route("/eureka/apps/{app}", get(one_app).post(register))
        .route("/eureka/apps/{app}/", get(one_app).post(register))
        .route("/eureka/apps/{app}/{id}", get(one_instance).put(renew).delete(cancel))
        .route("/eureka/apps/{app}/{id}/status", put(set_status).delete(clear_status))
        .route("/eureka/apps/{app}/{id}/metadata", put(update_metadata))
        .route("/eureka/instances/{id}", get(instance_by_id))
        .route("/eureka/vips/{vip}", get(by_vip))
        .route("/eureka/svips/{svip}", get(by_secure_vip))
}

/// XML or JSON, as the caller asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Xml,
}

impl Format {
    fn of(headers: &HeaderMap) -> Self {
        let json = headers.get_all(ACCEPT).iter().any(|value| {
            value
                .to_str()
                .is_ok_and(|text| text.to_ascii_lowercase().contains("json"))
        });
        if json { Format::Json } else { Format::Xml }
    }

    fn render(self, root: &str, value: &Value) -> Response {
        match self {
            Format::Json => {
                let mut body = format!("{{\"{root}\":").into_bytes();
                let _ = serde_json::to_writer(&mut body, value);
                body.push(b'}');
                ([(CONTENT_TYPE, "application/json")], body).into_response()
            }
            Format::Xml => ([(CONTENT_TYPE, "application/xml")], xml::to_xml(root, value)).into_response(),
        }
    }
}

fn applications_value(index: u64, hash: String, apps: &[(String, Vec<Instance>)]) -> Value {
    let application = apps
        .iter()
        .map(|(name, instances)| ApplicationJson {
            name,
            instance: instances.iter().map(wire::instance_json).collect(),
        })
        .collect();
    let body = ApplicationsJson {
        versions_delta: index.to_string(),
        apps_hashcode: hash,
        application,
    };
    serde_json::to_value(body).unwrap_or(Value::Null)
}

async fn all_apps(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let encoding = match Format::of(&headers) {
        Format::Json => Encoding::EurekaJson,
        Format::Xml => Encoding::EurekaXml,
    };
    encode::respond(&state.encodings, &state.table, encoding, &headers).await
}

async fn delta(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let view = state.table.read();
    // The latest change per instance, grouped by app; the hash is of the whole registry,
    // so a client that applied the delta can check it holds what the registry holds.
    let mut latest: BTreeMap<(String, String), Instance> = BTreeMap::new();
    for change in view.recent_changes() {
        latest.insert(
            (change.app.clone(), change.instance_id.clone()),
            Instance::clone(&change.instance),
        );
    }
    let mut apps: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
    for ((app, _), instance) in latest {
        apps.entry(app).or_default().push(instance);
    }
    let apps: Vec<(String, Vec<Instance>)> = apps.into_iter().collect();
    let hash = wire::reconcile_hash_code(view.statuses());
    Format::of(&headers).render("applications", &applications_value(view.index(), hash, &apps))
}

async fn one_app(
    State(state): State<AppState>,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let app = app.to_ascii_uppercase();
    let (_, instances) = state
        .table
        .read()
        .app(&app)
        .ok_or_else(|| TableError::UnknownApp(app.clone()))?;
    let value = serde_json::to_value(ApplicationJson {
        name: &app,
        instance: instances.iter().map(wire::instance_json).collect(),
    })
    .unwrap_or(Value::Null);
    Ok(Format::of(&headers).render("application", &value))
}

fn render_instance(headers: &HeaderMap, instance: &Instance) -> Response {
    let value = serde_json::to_value(wire::instance_json(instance)).unwrap_or(Value::Null);
    Format::of(headers).render("instance", &value)
}

async fn one_instance(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let app = app.to_ascii_uppercase();
    let instance = state
        .table
        .read()
        .instance(&app, &id)
        .ok_or(TableError::UnknownInstance { app, id })?;
    Ok(render_instance(&headers, &instance))
}

async fn instance_by_id(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let instance = state
        .table
        .read()
        .find_instance(&id)
        .ok_or_else(|| ApiError::not_found(format!("instance `{id}` is not registered")))?;
    Ok(render_instance(&headers, &instance))
}

fn by_address(state: &AppState, headers: &HeaderMap, address: &str, secure: bool) -> Result<Response, ApiError> {
    let view = state.table.read();
    let matches = |instance: &Instance| {
        let declared = if secure {
            &instance.secure_vip_address
        } else {
            &instance.vip_address
        };
        declared
            .as_deref()
            .is_some_and(|list| list.split(',').any(|vip| vip.trim().eq_ignore_ascii_case(address)))
    };
    let apps: Vec<(String, Vec<Instance>)> = view
        .apps()
        .filter_map(|(name, instances)| {
            let chosen: Vec<Instance> = instances.into_iter().filter(|i| matches(i)).collect();
            (!chosen.is_empty()).then(|| (name.to_owned(), chosen))
        })
        .collect();
    if apps.is_empty() {
        return Err(ApiError::not_found(format!("no instance has the address `{address}`")));
    }
    let hash = wire::reconcile_hash_code(apps.iter().flat_map(|(_, list)| list.iter().map(|i| i.status)));
    Ok(Format::of(headers).render("applications", &applications_value(view.index(), hash, &apps)))
}

async fn by_vip(
    State(state): State<AppState>,
    Path(vip): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    by_address(&state, &headers, &vip, false)
}

async fn by_secure_vip(
    State(state): State<AppState>,
    Path(svip): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    by_address(&state, &headers, &svip, true)
}

/// Decodes a registration body, XML or JSON by its content type.
pub fn decode_body(headers: &HeaderMap, body: &[u8]) -> Result<Instance, ApiError> {
    let is_xml = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|text| text.to_ascii_lowercase().contains("xml"));
    let value = if is_xml {
        xml::from_xml(body).map_err(|err| ApiError::bad_request(err.to_string()))?
    } else {
        serde_json::from_slice(body).map_err(|err| ApiError::bad_request(format!("malformed JSON: {err}")))?
    };
    wire::decode_registration(&value).map_err(|err| ApiError::bad_request(err.to_string()))
}

async fn register(
    State(state): State<AppState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let instance = decode_body(&headers, &body)?;
    let app = app.to_ascii_uppercase();
    if instance.app != app {
        return Err(ApiError::bad_request(format!(
            "mismatched app name: the path names `{app}` but the body `{}`",
            instance.app
        )));
    }
    state.register(instance);
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RenewQuery {
    status: Option<String>,
    last_dirty_timestamp: Option<String>,
    value: Option<String>,
}

fn status_parameter(text: Option<&str>, name: &str) -> Result<Option<Status>, ApiError> {
    text.filter(|t| !t.is_empty())
        .map(|t| {
            t.parse().map_err(|err: rtalpha_proto::StatusParseError| {
                ApiError::bad_request(format!("query parameter `{name}`: {err}"))
            })
        })
        .transpose()
}

fn timestamp_parameter(text: Option<&str>) -> Result<Option<u64>, ApiError> {
    text.filter(|t| !t.is_empty())
        .map(|t| {
            t.parse().map_err(|_| {
                ApiError::bad_request(format!("query parameter `lastDirtyTimestamp`: `{t}` is not a number"))
            })
        })
        .transpose()
}

async fn renew(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    Query(query): Query<RenewQuery>,
) -> Result<Response, ApiError> {
    let report = RenewalReport {
        status: status_parameter(query.status.as_deref(), "status")?,
        last_dirty_timestamp: timestamp_parameter(query.last_dirty_timestamp.as_deref())?,
    };
    let app = app.to_ascii_uppercase();
    match state.renew(&app, &id, report)? {
        Renewal::Renewed => Ok(StatusCode::OK.into_response()),
        Renewal::MustRegister => Err(ApiError::not_found(format!(
            "instance `{id}` of app `{app}` must register again"
        ))),
    }
}

async fn cancel(State(state): State<AppState>, Path((app, id)): Path<(String, String)>) -> Result<Response, ApiError> {
    state.cancel(&app.to_ascii_uppercase(), &id)?;
    Ok(StatusCode::OK.into_response())
}

async fn set_status(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    Query(query): Query<RenewQuery>,
) -> Result<Response, ApiError> {
    let status = status_parameter(query.value.as_deref(), "value")?
        .ok_or_else(|| ApiError::bad_request("query parameter `value` is required"))?;
    state.set_override(&app.to_ascii_uppercase(), &id, status)?;
    Ok(StatusCode::OK.into_response())
}

async fn clear_status(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    Query(query): Query<RenewQuery>,
) -> Result<Response, ApiError> {
    let status = status_parameter(query.value.as_deref(), "value")?;
    state.clear_override(&app.to_ascii_uppercase(), &id, status)?;
    Ok(StatusCode::OK.into_response())
}

async fn update_metadata(
    State(state): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let patch: MetadataPatch = query.into_iter().map(|(key, value)| (key, Some(value))).collect();
    state.update_metadata(&app.to_ascii_uppercase(), &id, &patch)?;
    Ok(StatusCode::OK.into_response())
}
