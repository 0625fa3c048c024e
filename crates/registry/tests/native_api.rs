//! The native `/v1/` API over real HTTP against an in-process registry.

#[path = "support/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use bytes::Bytes;
use harness::{EventReader, quiet_config, start};
use http::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn registers_fetches_and_cancels_an_instance() {
    let registry = start(quiet_config()).await;
    let answer = registry.register("orders", "o1", 8080).await;
    let view = answer.json();
    assert_eq!(view["instance"]["app"], "ORDERS");
    assert_eq!(view["instance"]["status"], "UP");
    assert_eq!(view["index"], 1);
    assert_eq!(answer.index(), 1);

    let one = registry.get("/v1/apps/ORDERS/o1").await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.json()["instance"]["port"], json!({"number": 8080, "enabled": true}));

    let all = registry.get("/v1/apps").await.json();
    assert_eq!(all["apps"][0]["name"], "ORDERS");
    assert_eq!(all["apps"][0]["instances"][0]["instance_id"], "o1");

    let app = registry.get("/v1/apps/orders").await.json();
    assert_eq!(app["apps"][0]["instances"].as_array().map(Vec::len), Some(1));

    let cancelled = registry
        .send(Method::DELETE, "/v1/apps/ORDERS/o1", &[], Bytes::new())
        .await;
    assert_eq!(cancelled.status, StatusCode::OK);
    assert_eq!(cancelled.index(), 2);
    let gone = registry.get("/v1/apps/ORDERS/o1").await;
    let message = gone.error_message(StatusCode::NOT_FOUND);
    assert!(message.contains("o1"), "{message}");
    registry
        .get("/v1/apps/ORDERS")
        .await
        .error_message(StatusCode::NOT_FOUND);
    registry
        .send(Method::DELETE, "/v1/apps/ORDERS/o1", &[], Bytes::new())
        .await
        .error_message(StatusCode::NOT_FOUND);
    registry.stop().await;
}

#[tokio::test]
async fn heartbeats_renew_and_unknown_instances_get_404() {
    let registry = start(quiet_config()).await;
    registry.register("orders", "o1", 8080).await;
    let renewed = registry
        .send(Method::PUT, "/v1/apps/ORDERS/o1/heartbeat", &[], Bytes::new())
        .await;
    assert_eq!(renewed.status, StatusCode::OK);
    assert_eq!(renewed.index(), 1, "a renewal is not a change");
    registry
        .send(Method::PUT, "/v1/apps/ORDERS/nope/heartbeat", &[], Bytes::new())
        .await
        .error_message(StatusCode::NOT_FOUND);
    let down = registry
        .send(
            Method::PUT,
            "/v1/apps/ORDERS/o1/heartbeat?status=DOWN",
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(down.status, StatusCode::OK);
    assert_eq!(
        registry.get("/v1/apps/ORDERS/o1").await.json()["instance"]["status"],
        "DOWN"
    );
    let bad = registry
        .send(
            Method::PUT,
            "/v1/apps/ORDERS/o1/heartbeat?status=SLEEPY",
            &[],
            Bytes::new(),
        )
        .await;
    assert!(bad.error_message(StatusCode::BAD_REQUEST).contains("SLEEPY"));
    registry.stop().await;
}

#[tokio::test]
async fn status_overrides_and_metadata_updates_are_changes() {
    let registry = start(quiet_config()).await;
    registry.register("orders", "o1", 8080).await;
    let overridden = registry
        .send(
            Method::PUT,
            "/v1/apps/ORDERS/o1/status",
            &[("content-type", "application/json")],
            r#"{"status":"OUT_OF_SERVICE"}"#,
        )
        .await;
    assert_eq!(overridden.status, StatusCode::OK, "{}", overridden.text());
    let instance = overridden.json()["instance"].clone();
    assert_eq!(instance["status"], "OUT_OF_SERVICE");
    assert_eq!(instance["overridden_status"], "OUT_OF_SERVICE");
    assert_eq!(overridden.index(), 2);

    let cleared = registry
        .send(Method::DELETE, "/v1/apps/ORDERS/o1/status", &[], Bytes::new())
        .await;
    assert_eq!(cleared.json()["instance"]["status"], "UP");
    assert_eq!(cleared.json()["instance"]["overridden_status"], "UNKNOWN");

    let patched = registry
        .send(
            Method::PATCH,
            "/v1/apps/ORDERS/o1/metadata",
            &[("content-type", "application/json")],
            r#"{"version":"2","zone":"eu-1"}"#,
        )
        .await;
    let instance = patched.json()["instance"].clone();
    assert_eq!(instance["metadata"]["version"], "2");
    assert_eq!(instance["zone"], "eu-1");
    let removed = registry
        .send(
            Method::PATCH,
            "/v1/apps/ORDERS/o1/metadata",
            &[("content-type", "application/json")],
            r#"{"version":null}"#,
        )
        .await;
    assert!(removed.json()["instance"]["metadata"].get("version").is_none());
    registry.stop().await;
}

#[tokio::test]
async fn delta_returns_changes_since_an_index() {
    let registry = start(quiet_config()).await;
    registry.register("orders", "o1", 8080).await;
    let index = registry.register("orders", "o2", 8081).await.index();
    registry
        .send(Method::DELETE, "/v1/apps/ORDERS/o1", &[], Bytes::new())
        .await;
    let delta = registry.get(&format!("/v1/delta?since={index}")).await.json();
    assert_eq!(delta["resync_required"], false);
    assert_eq!(delta["changes"].as_array().map(Vec::len), Some(1));
    assert_eq!(delta["changes"][0]["kind"], "cancelled");
    assert_eq!(delta["changes"][0]["instance_id"], "o1");
    let all = registry.get("/v1/delta?since=0").await.json();
    assert_eq!(all["changes"].as_array().map(Vec::len), Some(3));
    registry
        .get("/v1/delta?since=99")
        .await
        .error_message(StatusCode::BAD_REQUEST);
    registry
        .get("/v1/delta?since=abc")
        .await
        .error_message(StatusCode::BAD_REQUEST);
    registry.stop().await;
}

#[tokio::test]
async fn a_blocking_query_returns_as_soon_as_the_version_passes() {
    let registry = start(quiet_config()).await;
    let index = registry.register("orders", "o1", 8080).await.index();
    let started = Instant::now();
    let unchanged = registry.get(&format!("/v1/apps?index={index}&wait=300ms")).await;
    assert!(
        started.elapsed() >= Duration::from_millis(290),
        "it waited the whole wait"
    );
    assert_eq!(unchanged.json()["index"], index);

    let waiter = {
        let base = registry.base.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<Bytes>>();
            let uri = format!("{base}/v1/apps/ORDERS?index={index}&wait=20s")
                .parse()
                .expect("uri");
            let response = client.get(uri).await.expect("answer");
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .expect("body")
                .to_bytes();
            (
                started.elapsed(),
                serde_json::from_slice::<serde_json::Value>(&body).expect("json"),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    registry.register("orders", "o2", 8081).await;
    let (elapsed, view) = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("in time")
        .expect("task");
    assert!(
        elapsed < Duration::from_secs(2),
        "returned on the change, not at the wait's end: {elapsed:?}"
    );
    assert_eq!(view["apps"][0]["instances"].as_array().map(Vec::len), Some(2));
    registry
        .get("/v1/apps?index=1&wait=forever")
        .await
        .error_message(StatusCode::BAD_REQUEST);
    registry.stop().await;
}

#[tokio::test]
async fn a_watch_streams_changes_and_resumes_from_an_index() {
    let registry = start(quiet_config()).await;
    registry.register("orders", "o1", 8080).await;
    let response = registry.raw(Method::GET, "/v1/watch", &[], Bytes::new()).await;
    let mut events = EventReader::new(response);
    let hello = events.next(Duration::from_secs(5)).await.expect("hello");
    assert_eq!((hello.event.as_str(), hello.id.as_str()), ("hello", "1"));

    let started = Instant::now();
    registry
        .send(Method::DELETE, "/v1/apps/ORDERS/o1", &[], Bytes::new())
        .await;
    let change = events
        .next(Duration::from_secs(5))
        .await
        .expect("the cancellation is pushed");
    let told_after = started.elapsed();
    assert_eq!(change.event, "change");
    assert_eq!(change.id, "2");
    let data: serde_json::Value = serde_json::from_str(&change.data).expect("json");
    assert_eq!(
        (data["kind"].as_str(), data["instance_id"].as_str()),
        (Some("cancelled"), Some("o1"))
    );
    assert!(
        told_after < Duration::from_millis(500),
        "pushed within milliseconds: {told_after:?}"
    );

    // An app watch sees only its app; a resumed watch replays what it missed.
    let response = registry.raw(Method::GET, "/v1/watch/payments", &[], Bytes::new()).await;
    let mut payments = EventReader::new(response);
    payments.next(Duration::from_secs(5)).await.expect("hello");
    registry.register("orders", "o2", 8080).await;
    registry.register("payments", "p1", 8080).await;
    let only = payments.next(Duration::from_secs(5)).await.expect("payments change");
    assert!(only.data.contains("\"PAYMENTS\""), "{}", only.data);

    let response = registry
        .raw(Method::GET, "/v1/watch", &[("last-event-id", "1")], Bytes::new())
        .await;
    let mut resumed = EventReader::new(response);
    resumed.next(Duration::from_secs(5)).await.expect("hello");
    let ids: Vec<String> = [
        resumed.next(Duration::from_secs(5)).await.expect("2"),
        resumed.next(Duration::from_secs(5)).await.expect("3"),
        resumed.next(Duration::from_secs(5)).await.expect("4"),
    ]
    .into_iter()
    .map(|event| event.id)
    .collect();
    assert_eq!(ids, ["2", "3", "4"]);
    registry.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_watches_and_blocking_queries() {
    let registry = start(quiet_config()).await;
    let response = registry.raw(Method::GET, "/v1/watch", &[], Bytes::new()).await;
    let mut events = EventReader::new(response);
    events.next(Duration::from_secs(5)).await.expect("hello");
    let started = Instant::now();
    registry.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown did not wait for the watch"
    );
    assert!(events.next(Duration::from_secs(2)).await.is_none(), "the stream ended");
}

#[tokio::test]
async fn registry_status_reports_counts_and_self_preservation() {
    let registry = start(quiet_config()).await;
    registry.register("orders", "o1", 8080).await;
    registry.register("orders", "o2", 8080).await;
    let status = registry.get("/v1/status").await.json();
    assert_eq!(status["instances"], 2);
    assert_eq!(status["apps"], 1);
    assert_eq!(status["instances_by_status"]["UP"], 2);
    assert_eq!(status["self_preservation"]["enabled"], true);
    assert_eq!(status["self_preservation"]["threshold_share"], 0.85);
    registry.stop().await;
}

#[tokio::test]
async fn health_ready_and_metrics_are_served() {
    let registry = start(quiet_config()).await;
    let health = registry.get("/health").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json()["status"], "UP");
    assert_eq!(registry.get("/ready").await.status, StatusCode::OK);
    registry.register("orders", "o1", 8080).await;
    let metrics = registry.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(
        metrics.text().contains("http_server_requests_total"),
        "{}",
        metrics.text()
    );
    assert!(metrics.text().contains("rtalpha_registry_changes_total"));
    registry.stop().await;
}

#[tokio::test]
async fn the_dashboard_lists_instances_and_escapes_them() {
    let registry = start(quiet_config()).await;
    registry.register("orders", "o1", 8080).await;
    registry.register("orders", "<script>x</script>", 8080).await;
    let page = registry.get("/").await;
    assert_eq!(page.status, StatusCode::OK);
    let html = page.text();
    assert!(html.contains("ORDERS") && html.contains("o1"), "{html}");
    assert!(html.contains("http-equiv=\"refresh\""));
    assert!(html.contains("self-preservation"));
    assert!(!html.contains("<script>x"), "instance ids are escaped");
    assert!(html.contains("&lt;script&gt;"));
    registry.stop().await;
}

#[tokio::test]
async fn request_ids_are_kept_or_made() {
    let registry = start(quiet_config()).await;
    let given = registry
        .send(Method::GET, "/v1/apps", &[("x-request-id", "abc-123")], Bytes::new())
        .await;
    assert_eq!(given.headers["x-request-id"], "abc-123");
    let made = registry.get("/v1/nothing-here").await;
    let id = made.headers["x-request-id"].to_str().expect("ascii").to_owned();
    assert!(!id.is_empty());
    made.error_message(StatusCode::NOT_FOUND);
    assert_eq!(made.json()["request_id"], id);
    registry.stop().await;
}

#[tokio::test]
async fn the_replication_api_applies_batches_and_answers_digests() {
    let registry = start(quiet_config()).await;
    registry.register("orders", "o1", 8080).await;
    let held = registry.get("/v1/apps/ORDERS/o1").await.json()["instance"].clone();
    let mut newer = held.clone();
    newer["last_updated_timestamp"] = json!(held["last_updated_timestamp"].as_u64().expect("stamp") + 10);
    newer["metadata"] = json!({"from": "peer"});
    let mut older = held.clone();
    older["last_updated_timestamp"] = json!(1);
    let batch = json!({"items": [
        {"action": "register", "instance": newer},
        {"action": "register", "instance": older},
        {"action": "renew", "app": "ORDERS", "instance_id": "ghost", "last_dirty_timestamp": 1, "renewed_at": 1},
    ]});
    let answer = registry.post_json("/v1/replication/batch", &batch).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let statuses: Vec<u64> = answer.json()["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_u64().expect("status"))
        .collect();
    assert_eq!(statuses, [200, 409, 404]);
    assert_eq!(
        registry.get("/v1/apps/ORDERS/o1").await.json()["instance"]["metadata"]["from"],
        "peer"
    );
    assert!(
        answer.headers.contains_key("x-rtalpha-node"),
        "the receiver names itself"
    );

    // A digest that differs gets this node's entries back; one that matches gets nothing.
    let reply = registry
        .post_json("/v1/replication/digest", &json!({"apps": {"ORDERS": 1, "GHOSTS": 2}}))
        .await
        .json();
    assert_eq!(reply["apps"]["ORDERS"][0]["instance_id"], "o1");
    assert_eq!(reply["apps"]["GHOSTS"], json!([]));
    let fetched = registry
        .post_json(
            "/v1/replication/fetch",
            &json!({"keys": [["ORDERS", "o1"], ["ORDERS", "nope"]]}),
        )
        .await
        .json();
    assert_eq!(fetched["instances"].as_array().map(Vec::len), Some(1));
    let snapshot = registry.get("/v1/replication/snapshot").await.json();
    assert_eq!(snapshot["instances"][0]["instance_id"], "o1");

    // A request carrying this node's own id is refused: the node is in its own peer list.
    let node = answer.headers["x-rtalpha-node"].to_str().expect("ascii").to_owned();
    let looped = registry
        .send(
            Method::POST,
            "/v1/replication/batch",
            &[("content-type", "application/json"), ("x-rtalpha-node", &node)],
            r#"{"items":[]}"#,
        )
        .await;
    looped.error_message(StatusCode::LOOP_DETECTED);
    registry
        .post_json("/v1/replication/batch", &json!({"items": [{"action": "fly"}]}))
        .await
        .error_message(StatusCode::BAD_REQUEST);
    registry.stop().await;
}
