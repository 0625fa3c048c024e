//! The receiving side of replication: the native peer API under `/v1/replication/`
//! and Eureka's `/eureka/peerreplication/batch`. What arrives here is applied and never
//! replicated again; the newer stamp wins every conflict.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use http::header::CONTENT_TYPE;
use rtalpha_proto::eureka;
use rtalpha_proto::replication::{
    Digest, FetchRequest, NODE_HEADER, ReplicationBatch, ReplicationItem, ReplicationResponse, ReplicationResult,
    Snapshot, Stamp, Tombstone,
};
use rtalpha_proto::{Instance, Status};
use rtalpha_runtime::ApiError;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::server::AppState;
use crate::table::{Applied, Renewal};

/// The replication routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/replication/batch", post(batch))
        .route("/v1/replication/digest", post(digest))
        .route("/v1/replication/fetch", post(fetch))
        .route("/v1/replication/snapshot", get(snapshot))
        .route("/eureka/peerreplication/batch", post(eureka_batch))
        .route("/eureka/peerreplication/batch/", post(eureka_batch))
}

/// Refuses a request that this node sent itself (its own URL is in its peer list), and
/// names this node on the answer.
fn refuse_self(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    let node = state.node_id();
    (headers.get(NODE_HEADER).and_then(|v| v.to_str().ok()) == Some(node)).then(|| {
        let refusal = ApiError::new(StatusCode::LOOP_DETECTED, "this request came from this node").into_response();
        named(state, refusal)
    })
}

fn named(state: &AppState, mut response: Response) -> Response {
    if let Ok(value) = state.node_id().parse() {
        response.headers_mut().insert(NODE_HEADER, value);
    }
    response
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|err| ApiError::bad_request(format!("malformed replication body: {err}")))
}

fn result_of(applied: Applied) -> ReplicationResult {
    match applied {
        Applied::Stored(_) => ReplicationResult {
            status: 200,
            instance: None,
            tombstone: None,
        },
        Applied::NewerRecord(instance) => ReplicationResult {
            status: 409,
            instance: Some(*instance),
            tombstone: None,
        },
        Applied::NewerTombstone(tombstone) => ReplicationResult {
            status: 409,
            instance: None,
            tombstone: Some(tombstone),
        },
    }
}

fn apply_item(state: &AppState, item: ReplicationItem) -> ReplicationResult {
    match item {
        ReplicationItem::Register { instance } => result_of(state.table.apply_record(*instance)),
        ReplicationItem::Cancel { tombstone } => result_of(state.table.apply_tombstone(tombstone)),
        ReplicationItem::Renew {
            app,
            instance_id,
            last_dirty_timestamp,
            renewed_at,
        } => match state
            .table
            .apply_renewal(&app, &instance_id, last_dirty_timestamp, renewed_at)
        {
            Ok(Renewal::Renewed) => ReplicationResult {
                status: 200,
                instance: None,
                tombstone: None,
            },
            Ok(Renewal::MustRegister) => not_found(),
            Err(_) => {
                // Renewing what this node saw cancelled later: tell the sender.
                let tombstone = state.table.records(&[(app, instance_id)]).tombstones.pop();
                match tombstone {
                    Some(tombstone) if tombstone.stamp.dirty >= last_dirty_timestamp => ReplicationResult {
                        status: 409,
                        instance: None,
                        tombstone: Some(tombstone),
                    },
                    _ => not_found(),
                }
            }
        },
    }
}

fn not_found() -> ReplicationResult {
    ReplicationResult {
        status: 404,
        instance: None,
        tombstone: None,
    }
}

async fn batch(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refusal) = refuse_self(&state, &headers) {
        return refusal;
    }
    let batch: ReplicationBatch = match json_body(&body) {
        Ok(value) => value,
        Err(err) => return err.into_response(),
    };
    let results = batch.items.into_iter().map(|item| apply_item(&state, item)).collect();
    named(&state, Json(ReplicationResponse { results }).into_response())
}

async fn digest(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refusal) = refuse_self(&state, &headers) {
        return refusal;
    }
    let digest: Digest = match json_body(&body) {
        Ok(value) => value,
        Err(err) => return err.into_response(),
    };
    let reply = crate::cluster::answer_digest(&state.table, &digest);
    named(&state, Json(reply).into_response())
}

async fn fetch(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refusal) = refuse_self(&state, &headers) {
        return refusal;
    }
    let request: FetchRequest = match json_body(&body) {
        Ok(value) => value,
        Err(err) => return err.into_response(),
    };
    let snapshot: Snapshot = state.table.records(&request.keys);
    named(&state, Json(snapshot).into_response())
}

async fn snapshot(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(refusal) = refuse_self(&state, &headers) {
        return refusal;
    }
    named(&state, Json(state.table.snapshot()).into_response())
}

/// One item of Eureka's `replicationList`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EurekaReplicationItem {
    app_name: String,
    id: String,
    #[serde(default)]
    last_dirty_timestamp: Option<Value>,
    #[serde(default)]
    status: Option<String>,
    action: String,
    #[serde(default)]
    instance_info: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EurekaReplicationList {
    replication_list: Vec<EurekaReplicationItem>,
}

fn timestamp(value: Option<&Value>) -> Option<u64> {
    match value? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn eureka_result(status: u16, instance: Option<&Instance>) -> Value {
    match instance {
        Some(instance) => json!({"statusCode": status, "responseEntity": eureka::instance_json(instance)}),
        None => json!({"statusCode": status}),
    }
}

fn apply_eureka_item(state: &AppState, item: EurekaReplicationItem) -> Value {
    let app = item.app_name.to_ascii_uppercase();
    let id = item.id;
    let dirty = timestamp(item.last_dirty_timestamp.as_ref());
    let status = item.status.as_deref().and_then(|s| s.parse::<Status>().ok());
    let now = state.table.clock().now_ms();
    match item.action.as_str() {
        "Register" => {
            let Some(info) = item.instance_info else {
                return eureka_result(400, None);
            };
            match eureka::decode_instance(&info, "instanceInfo") {
                Ok(mut instance) => {
                    if instance.last_updated_timestamp == 0 {
                        instance.last_updated_timestamp = now;
                    }
                    match state.table.apply_record(instance) {
                        Applied::Stored(_) => eureka_result(200, None),
                        Applied::NewerRecord(held) => eureka_result(409, Some(&held)),
                        Applied::NewerTombstone(_) => eureka_result(409, None),
                    }
                }
                Err(_) => eureka_result(400, None),
            }
        }
        "Heartbeat" => {
            let held = state.table.read().instance(&app, &id);
            match (held, dirty) {
                (None, _) => eureka_result(404, None),
                (Some(held), Some(theirs)) if theirs < held.last_dirty_timestamp => eureka_result(409, Some(&held)),
                (Some(held), theirs) => {
                    match state
                        .table
                        .apply_renewal(&app, &id, theirs.unwrap_or(held.last_dirty_timestamp), now)
                    {
                        Ok(Renewal::Renewed) => eureka_result(200, None),
                        _ => eureka_result(404, None),
                    }
                }
            }
        }
        "Cancel" => {
            let Some(held) = state.table.read().instance(&app, &id) else {
                return eureka_result(404, None);
            };
            let tombstone = Tombstone {
                app,
                instance_id: id,
                stamp: Stamp {
                    dirty: dirty
                        .unwrap_or(held.last_dirty_timestamp)
                        .max(held.last_dirty_timestamp),
                    updated: now.max(held.last_updated_timestamp),
                },
            };
            match state.table.apply_tombstone(tombstone) {
                Applied::Stored(_) => eureka_result(200, None),
                Applied::NewerRecord(held) => eureka_result(409, Some(&held)),
                Applied::NewerTombstone(_) => eureka_result(200, None),
            }
        }
        "StatusUpdate" => match status {
            Some(status) => match state.table.set_override(&app, &id, status) {
                Ok(_) => eureka_result(200, None),
                Err(_) => eureka_result(404, None),
            },
            None => eureka_result(400, None),
        },
        "DeleteStatusOverride" => match state.table.clear_override(&app, &id, status) {
            Ok(_) => eureka_result(200, None),
            Err(_) => eureka_result(404, None),
        },
        _ => eureka_result(400, None),
    }
}

async fn eureka_batch(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refusal) = refuse_self(&state, &headers) {
        return refusal;
    }
    let list: EurekaReplicationList = match json_body(&body) {
        Ok(value) => value,
        Err(err) => return err.into_response(),
    };
    let responses: Vec<Value> = list
        .replication_list
        .into_iter()
        .map(|item| apply_eureka_item(&state, item))
        .collect();
    let body = serde_json::to_vec(&json!({"responseList": responses})).unwrap_or_default();
    named(&state, ([(CONTENT_TYPE, "application/json")], body).into_response())
}
