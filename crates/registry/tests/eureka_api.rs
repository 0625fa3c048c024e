//! Eureka's REST API under `/eureka/`, in both of its formats.

#[path = "support/harness.rs"]
mod harness;

use bytes::Bytes;
use harness::{eureka_instance, quiet_config, start};
use http::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn registers_with_204_and_serves_the_eureka_json_shape() {
    let registry = start(quiet_config()).await;
    let registered = registry
        .post_json("/eureka/apps/ORDERS", &eureka_instance("ORDERS", "o1", 8080))
        .await;
    assert_eq!(registered.status, StatusCode::NO_CONTENT, "{}", registered.text());

    let all = registry.get_json("/eureka/apps").await;
    assert_eq!(all.headers["content-type"], "application/json");
    let apps = &all.json()["applications"];
    assert_eq!(apps["apps__hashcode"], "UP_1_");
    assert_eq!(apps["versions__delta"], "1");
    let instance = &apps["application"][0]["instance"][0];
    assert_eq!(apps["application"][0]["name"], "ORDERS");
    assert_eq!(instance["instanceId"], "o1");
    assert_eq!(instance["port"], json!({"$": 8080, "@enabled": "true"}));
    assert_eq!(
        instance["lastDirtyTimestamp"], "1000",
        "the client's own dirty timestamp is kept"
    );
    assert_eq!(
        instance["dataCenterInfo"]["@class"],
        "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo"
    );
    assert_eq!(instance["metadata"]["zone"], "zone-a");
    assert_eq!(instance["actionType"], "ADDED");
    assert!(
        instance["leaseInfo"]["registrationTimestamp"]
            .as_u64()
            .is_some_and(|t| t > 0)
    );

    // The trailing-slash form that Python and Node clients use.
    assert_eq!(registry.get_json("/eureka/apps/").await.json(), all.json());
    let app = registry.get_json("/eureka/apps/orders").await.json();
    assert_eq!(app["application"]["instance"][0]["instanceId"], "o1");
    let one = registry.get_json("/eureka/apps/ORDERS/o1").await.json();
    assert_eq!(one["instance"]["hostName"], "o1.test");
    let by_id = registry.get_json("/eureka/instances/o1").await.json();
    assert_eq!(by_id["instance"]["app"], "ORDERS");
    registry
        .get_json("/eureka/apps/NOPE")
        .await
        .error_message(StatusCode::NOT_FOUND);
    registry
        .get_json("/eureka/instances/nope")
        .await
        .error_message(StatusCode::NOT_FOUND);
    registry.stop().await;
}

#[tokio::test]
async fn answers_xml_without_an_accept_header_and_reads_xml_bodies() {
    let registry = start(quiet_config()).await;
    let xml_body = r#"<instance><instanceId>x1</instanceId><hostName>x1.test</hostName><app>BILLING</app>
        <ipAddr>127.0.0.2</ipAddr><status>UP</status><port enabled="true">9090</port>
        <securePort enabled="false">443</securePort>
        <dataCenterInfo class="com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo"><name>MyOwn</name></dataCenterInfo>
        <leaseInfo><renewalIntervalInSecs>10</renewalIntervalInSecs><durationInSecs>30</durationInSecs></leaseInfo>
        <metadata><version>7</version></metadata><vipAddress>billing</vipAddress></instance>"#;
    let registered = registry
        .send(
            Method::POST,
            "/eureka/apps/BILLING",
            &[("content-type", "application/xml")],
            xml_body,
        )
        .await;
    assert_eq!(registered.status, StatusCode::NO_CONTENT, "{}", registered.text());

    let all = registry.get("/eureka/apps/").await;
    assert_eq!(all.headers["content-type"], "application/xml");
    let text = all.text();
    for expected in [
        "<applications>",
        "<versions__delta>1</versions__delta>",
        "<apps__hashcode>UP_1_</apps__hashcode>",
        "<name>BILLING</name>",
        r#"<port enabled="true">9090</port>"#,
        r#"<dataCenterInfo class="com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo">"#,
        "<renewalIntervalInSecs>10</renewalIntervalInSecs>",
        "<version>7</version>",
        "<overriddenstatus>UNKNOWN</overriddenstatus>",
    ] {
        assert!(text.contains(expected), "missing {expected} in {text}");
    }
    let instance = registry.get("/eureka/apps/BILLING/x1").await.text();
    assert!(instance.starts_with("<instance>"), "{instance}");
    registry.stop().await;
}

#[tokio::test]
async fn heartbeats_follow_eureka_status_codes() {
    let registry = start(quiet_config()).await;
    registry
        .post_json("/eureka/apps/ORDERS", &eureka_instance("ORDERS", "o1", 8080))
        .await;
    let put = |path: &'static str| registry.send(Method::PUT, path, &[], Bytes::new());
    assert_eq!(
        put("/eureka/apps/ORDERS/o1?status=UP&lastDirtyTimestamp=1000")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        put("/eureka/apps/ORDERS/o1?lastDirtyTimestamp=500").await.status,
        StatusCode::OK
    );
    assert_eq!(
        put("/eureka/apps/ORDERS/o1?lastDirtyTimestamp=2000").await.status,
        StatusCode::NOT_FOUND,
        "a client with a newer record must register again"
    );
    put("/eureka/apps/ORDERS/unknown")
        .await
        .error_message(StatusCode::NOT_FOUND);
    // Percent-encoded ids, as Python's client sends them.
    registry
        .post_json(
            "/eureka/apps/ORDERS",
            &eureka_instance("ORDERS", "127.0.0.1:orders:9001", 9001),
        )
        .await;
    assert_eq!(
        put("/eureka/apps/ORDERS/127.0.0.1%3Aorders%3A9001").await.status,
        StatusCode::OK
    );
    put("/eureka/apps/ORDERS/o1?lastDirtyTimestamp=soon")
        .await
        .error_message(StatusCode::BAD_REQUEST);
    registry.stop().await;
}

#[tokio::test]
async fn status_overrides_metadata_and_cancel() {
    let registry = start(quiet_config()).await;
    registry
        .post_json("/eureka/apps/ORDERS", &eureka_instance("ORDERS", "o1", 8080))
        .await;
    let send = |method: Method, path: &'static str| registry.send(method, path, &[], Bytes::new());
    assert_eq!(
        send(Method::PUT, "/eureka/apps/ORDERS/o1/status?value=OUT_OF_SERVICE")
            .await
            .status,
        StatusCode::OK
    );
    let instance = registry.get_json("/eureka/apps/ORDERS/o1").await.json();
    assert_eq!(instance["instance"]["status"], "OUT_OF_SERVICE");
    assert_eq!(instance["instance"]["overriddenstatus"], "OUT_OF_SERVICE");
    assert_eq!(instance["instance"]["actionType"], "MODIFIED");
    // The override survives the instance re-registering as UP.
    registry
        .post_json("/eureka/apps/ORDERS", &eureka_instance("ORDERS", "o1", 8080))
        .await;
    let held = registry.get_json("/eureka/apps/ORDERS/o1").await.json();
    assert_eq!(held["instance"]["status"], "OUT_OF_SERVICE");
    send(Method::PUT, "/eureka/apps/ORDERS/o1/status?value=ASLEEP")
        .await
        .error_message(StatusCode::BAD_REQUEST);
    send(Method::PUT, "/eureka/apps/ORDERS/o1/status")
        .await
        .error_message(StatusCode::BAD_REQUEST);
    send(Method::PUT, "/eureka/apps/ORDERS/nope/status?value=UP")
        .await
        .error_message(StatusCode::NOT_FOUND);

    // Clearing without a value leaves UNKNOWN, so the next heartbeat asks to register again.
    assert_eq!(
        send(Method::DELETE, "/eureka/apps/ORDERS/o1/status").await.status,
        StatusCode::OK
    );
    assert_eq!(
        registry.get_json("/eureka/apps/ORDERS/o1").await.json()["instance"]["status"],
        "UNKNOWN"
    );
    assert_eq!(
        send(Method::PUT, "/eureka/apps/ORDERS/o1").await.status,
        StatusCode::NOT_FOUND
    );
    registry
        .post_json("/eureka/apps/ORDERS", &eureka_instance("ORDERS", "o1", 8080))
        .await;
    assert_eq!(
        registry.get_json("/eureka/apps/ORDERS/o1").await.json()["instance"]["status"],
        "UP"
    );

    assert_eq!(
        send(Method::PUT, "/eureka/apps/ORDERS/o1/metadata?version=3&team=core")
            .await
            .status,
        StatusCode::OK
    );
    let metadata = registry.get_json("/eureka/apps/ORDERS/o1").await.json()["instance"]["metadata"].clone();
    assert_eq!(
        (metadata["version"].as_str(), metadata["team"].as_str()),
        (Some("3"), Some("core"))
    );

    assert_eq!(
        send(Method::DELETE, "/eureka/apps/ORDERS/o1").await.status,
        StatusCode::OK
    );
    send(Method::DELETE, "/eureka/apps/ORDERS/o1")
        .await
        .error_message(StatusCode::NOT_FOUND);
    registry.stop().await;
}

#[tokio::test]
async fn delta_carries_action_types_and_the_whole_registry_hash() {
    let registry = start(quiet_config()).await;
    registry
        .post_json("/eureka/apps/ORDERS", &eureka_instance("ORDERS", "o1", 8080))
        .await;
    registry
        .post_json("/eureka/apps/ORDERS", &eureka_instance("ORDERS", "o2", 8081))
        .await;
    registry
        .post_json("/eureka/apps/BILLING", &eureka_instance("BILLING", "b1", 8082))
        .await;
    registry
        .send(
            Method::PUT,
            "/eureka/apps/ORDERS/o2/status?value=DOWN",
            &[],
            Bytes::new(),
        )
        .await;
    registry
        .send(Method::DELETE, "/eureka/apps/ORDERS/o1", &[], Bytes::new())
        .await;
    let delta = registry.get_json("/eureka/apps/delta").await.json();
    let apps = &delta["applications"];
    assert_eq!(apps["versions__delta"], "5");
    assert_eq!(apps["apps__hashcode"], "DOWN_1_UP_1_");
    let mut actions: Vec<(String, String)> = apps["application"]
        .as_array()
        .expect("apps")
        .iter()
        .flat_map(|app| app["instance"].as_array().expect("instances").clone())
        .map(|i| {
            (
                i["instanceId"].as_str().unwrap_or_default().to_owned(),
                i["actionType"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    actions.sort();
    assert_eq!(
        actions,
        [
            ("b1".into(), "ADDED".into()),
            ("o1".into(), "DELETED".into()),
            ("o2".into(), "MODIFIED".into())
        ]
    );
    let xml = registry.get("/eureka/apps/delta").await.text();
    assert!(xml.contains("<actionType>DELETED</actionType>"), "{xml}");
    registry.stop().await;
}

#[tokio::test]
async fn vips_and_secure_vips_find_instances_by_address() {
    let registry = start(quiet_config()).await;
    registry
        .post_json("/eureka/apps/ORDERS", &eureka_instance("ORDERS", "o1", 8080))
        .await;
    registry
        .post_json("/eureka/apps/BILLING", &eureka_instance("BILLING", "b1", 8081))
        .await;
    let vip = registry.get_json("/eureka/vips/orders").await.json();
    let apps = vip["applications"]["application"].as_array().expect("apps").clone();
    assert_eq!(apps.len(), 1);
    assert_eq!(apps[0]["name"], "ORDERS");
    let svip = registry.get_json("/eureka/svips/billing-secure").await.json();
    assert_eq!(svip["applications"]["application"][0]["name"], "BILLING");
    registry
        .get_json("/eureka/vips/nothing")
        .await
        .error_message(StatusCode::NOT_FOUND);
    registry.stop().await;
}

#[tokio::test]
async fn native_and_eureka_views_agree() {
    let registry = start(quiet_config()).await;
    registry
        .post_json("/eureka/apps/ORDERS", &eureka_instance("ORDERS", "o1", 8080))
        .await;
    registry.register("orders", "o2", 8081).await;
    let native = registry.get("/v1/apps/ORDERS").await.json();
    let eureka = registry.get_json("/eureka/apps/ORDERS").await.json();
    let native_ids: Vec<&str> = native["apps"][0]["instances"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|i| i["instance_id"].as_str())
        .collect();
    let eureka_ids: Vec<&str> = eureka["application"]["instance"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|i| i["instanceId"].as_str())
        .collect();
    assert_eq!(native_ids, ["o1", "o2"]);
    assert_eq!(native_ids, eureka_ids);
    registry.stop().await;
}

#[tokio::test]
async fn eureka_peer_replication_batches_are_applied_without_re_replication() {
    let registry = start(quiet_config()).await;
    let mut info = eureka_instance("ORDERS", "o1", 8080)["instance"].clone();
    info["lastUpdatedTimestamp"] = json!("2000");
    let batch = json!({"replicationList": [
        {"appName": "ORDERS", "id": "o1", "lastDirtyTimestamp": 1000, "action": "Register", "instanceInfo": info},
        {"appName": "ORDERS", "id": "o1", "lastDirtyTimestamp": 1000, "status": "UP", "action": "Heartbeat"},
        {"appName": "ORDERS", "id": "o1", "lastDirtyTimestamp": 500, "status": "UP", "action": "Heartbeat"},
        {"appName": "ORDERS", "id": "ghost", "lastDirtyTimestamp": 1, "action": "Heartbeat"},
        {"appName": "ORDERS", "id": "o1", "status": "OUT_OF_SERVICE", "action": "StatusUpdate"},
        {"appName": "ORDERS", "id": "o1", "action": "Teleport"}
    ]});
    let answer = registry
        .send(
            Method::POST,
            "/eureka/peerreplication/batch/",
            &[
                ("content-type", "application/json"),
                ("x-netflix-discovery-replication", "true"),
            ],
            batch.to_string(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let codes: Vec<u64> = answer.json()["responseList"]
        .as_array()
        .expect("list")
        .iter()
        .map(|r| r["statusCode"].as_u64().expect("code"))
        .collect();
    assert_eq!(codes, [200, 200, 409, 404, 200, 400]);
    assert_eq!(
        answer.json()["responseList"][2]["responseEntity"]["instanceId"],
        "o1",
        "409 carries our record"
    );
    let held = registry.get_json("/eureka/apps/ORDERS/o1").await.json();
    assert_eq!(held["instance"]["status"], "OUT_OF_SERVICE");

    let cancel = json!({"replicationList": [{"appName": "ORDERS", "id": "o1", "action": "Cancel"}]});
    let answer = registry.post_json("/eureka/peerreplication/batch", &cancel).await;
    assert_eq!(answer.json()["responseList"][0]["statusCode"], 200);
    registry
        .get_json("/eureka/apps/ORDERS/o1")
        .await
        .error_message(StatusCode::NOT_FOUND);
    registry
        .post_json("/eureka/peerreplication/batch", &json!({"nope": 1}))
        .await
        .error_message(StatusCode::BAD_REQUEST);
    registry.stop().await;
}

#[tokio::test]
async fn full_fetches_are_gzip_for_clients_that_accept_it() {
    use std::io::Read;
    let registry = start(quiet_config()).await;
    registry
        .post_json("/eureka/apps/ORDERS", &eureka_instance("ORDERS", "o1", 8080))
        .await;
    let plain = registry.get_json("/eureka/apps").await;
    assert!(!plain.headers.contains_key("content-encoding"));
    let gzipped = registry
        .send(
            Method::GET,
            "/eureka/apps",
            &[("accept", "application/json"), ("accept-encoding", "gzip, deflate")],
            Bytes::new(),
        )
        .await;
    assert_eq!(gzipped.headers["content-encoding"], "gzip");
    assert_eq!(gzipped.headers["vary"], "accept-encoding");
    let mut inflated = Vec::new();
    flate2::read::GzDecoder::new(&gzipped.body[..])
        .read_to_end(&mut inflated)
        .expect("gzip");
    assert_eq!(inflated, plain.body.to_vec());
    // A change invalidates the held encoding at once.
    registry
        .post_json("/eureka/apps/ORDERS", &eureka_instance("ORDERS", "o2", 8081))
        .await;
    let after = registry.get_json("/eureka/apps").await.json();
    assert_eq!(
        after["applications"]["application"][0]["instance"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let xml = registry.get("/eureka/apps").await.text();
    assert_eq!(xml.matches("<instance>").count(), 2, "{xml}");
    registry.stop().await;
}
