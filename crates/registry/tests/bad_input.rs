//! Bad input: every malformed request gets the JSON error body naming the problem,
//! nothing panics, and the registry's state stays as it was.

#[path = "support/harness.rs"]
mod harness;

use bytes::Bytes;
use harness::{eureka_instance, quiet_config, start};
use http::{Method, StatusCode};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::json;

#[tokio::test]
async fn malformed_registrations_are_refused_with_a_named_problem() {
    let registry = start(quiet_config()).await;
    registry
        .post_json("/eureka/apps/ORDERS", &eureka_instance("ORDERS", "o1", 8080))
        .await;
    let before = registry.get_json("/eureka/apps").await.body;

    let mut unknown_status = eureka_instance("ORDERS", "o2", 8080);
    unknown_status["instance"]["status"] = json!("HAPPY");
    let mut wrong_type = eureka_instance("ORDERS", "o2", 8080);
    wrong_type["instance"]["port"] = json!({"$": "eighty"});
    let mut missing = eureka_instance("ORDERS", "o2", 8080);
    missing["instance"].as_object_mut().expect("object").remove("hostName");
    let mut out_of_range = eureka_instance("ORDERS", "o2", 8080);
    out_of_range["instance"]["port"] = json!({"$": 70000, "@enabled": "true"});
    let cases: Vec<(&str, &str, String, &str)> = vec![
        (
            "/eureka/apps/ORDERS",
            "application/json",
            r#"{"instance": {"hostName": "h""#.into(),
            "malformed JSON",
        ),
        ("/eureka/apps/ORDERS", "application/json", "[]".into(), "(body)"),
        (
            "/eureka/apps/ORDERS",
            "application/json",
            unknown_status.to_string(),
            "HAPPY",
        ),
        (
            "/eureka/apps/ORDERS",
            "application/json",
            wrong_type.to_string(),
            "instance.port.$",
        ),
        (
            "/eureka/apps/ORDERS",
            "application/json",
            missing.to_string(),
            "instance.hostName",
        ),
        (
            "/eureka/apps/ORDERS",
            "application/json",
            out_of_range.to_string(),
            "out of range",
        ),
        (
            "/eureka/apps/BILLING",
            "application/json",
            eureka_instance("ORDERS", "o2", 1).to_string(),
            "mismatched app name",
        ),
        (
            "/eureka/apps/ORDERS",
            "application/xml",
            "<instance><hostName>h</hostName>".into(),
            "malformed XML",
        ),
        (
            "/eureka/apps/ORDERS",
            "application/xml",
            "<instance><app>ORDERS</app></instance>".into(),
            "instance.hostName",
        ),
        (
            "/v1/apps/ORDERS",
            "application/json",
            r#"{"host_name": 5}"#.into(),
            "host_name",
        ),
        (
            "/v1/apps/ORDERS",
            "application/json",
            r#"{"host_name": "h", "status": "HAPPY"}"#.into(),
            "HAPPY",
        ),
        (
            "/v1/apps/ORDERS",
            "application/json",
            r#"{"host_name": "h", "port": 70000}"#.into(),
            "port",
        ),
        (
            "/v1/apps/ORDERS",
            "application/json",
            r#"{"host_name": ""}"#.into(),
            "host_name",
        ),
        (
            "/v1/apps/ORDERS",
            "application/json",
            r#"{"host_name": "h", "lease_duration_secs": 0}"#.into(),
            "lease_duration_secs",
        ),
        ("/v1/apps/ORDERS", "application/json", "{".into(), "JSON"),
        (
            "/v1/apps/ORDERS",
            "text/plain",
            r#"{"host_name": "h"}"#.into(),
            "Content-Type",
        ),
    ];
    for (path, content_type, body, needle) in cases {
        let answer = registry
            .send(Method::POST, path, &[("content-type", content_type)], body.clone())
            .await;
        assert!(answer.status.is_client_error(), "{path} {body}: {}", answer.status);
        let message = answer.error_message(answer.status);
        assert!(
            message.to_lowercase().contains(&needle.to_lowercase()),
            "{path} {body}: message `{message}` should name `{needle}`"
        );
    }
    assert_eq!(registry.get_json("/eureka/apps").await.body, before, "state unchanged");
    registry.stop().await;
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let mut config = quiet_config();
    config.server.max_body_bytes = 4096;
    let registry = start(config).await;
    let mut big = eureka_instance("ORDERS", "o1", 8080);
    big["instance"]["metadata"]["padding"] = json!("x".repeat(10_000));
    let answer = registry.post_json("/eureka/apps/ORDERS", &big).await;
    answer.error_message(StatusCode::PAYLOAD_TOO_LARGE);
    let native = registry
        .post_json(
            "/v1/apps/ORDERS",
            &json!({"host_name": "h", "metadata": {"p": "x".repeat(10_000)}}),
        )
        .await;
    native.error_message(StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(registry.get("/v1/status").await.json()["instances"], 0);
    registry.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let registry = start(quiet_config()).await;
    registry
        .get("/eureka/nothing")
        .await
        .error_message(StatusCode::NOT_FOUND);
    registry
        .send(Method::PATCH, "/eureka/apps", &[], Bytes::new())
        .await
        .error_message(StatusCode::METHOD_NOT_ALLOWED);
    registry.stop().await;
}

#[tokio::test]
async fn basic_auth_guards_the_apis_but_not_health() {
    let mut config = quiet_config();
    config.registry.auth.username = Some("ops".into());
    config.registry.auth.password = Some("s3cret".into());
    let registry = start(config).await;
    let refused = registry.get("/eureka/apps").await;
    assert_eq!(refused.headers["www-authenticate"], "Basic realm=\"rtalpha registry\"");
    refused.error_message(StatusCode::UNAUTHORIZED);
    registry.get("/v1/apps").await.error_message(StatusCode::UNAUTHORIZED);
    registry.get("/").await.error_message(StatusCode::UNAUTHORIZED);
    // "ops:wrong" and "ops:s3cret" in base64.
    let wrong = registry
        .send(
            Method::GET,
            "/v1/apps",
            &[("authorization", "Basic b3BzOndyb25n")],
            Bytes::new(),
        )
        .await;
    wrong.error_message(StatusCode::UNAUTHORIZED);
    let body = eureka_instance("ORDERS", "o1", 8080).to_string();
    let unauthorised_write = registry
        .send(
            Method::POST,
            "/eureka/apps/ORDERS",
            &[("content-type", "application/json")],
            body.clone(),
        )
        .await;
    unauthorised_write.error_message(StatusCode::UNAUTHORIZED);
    let good = [
        ("authorization", "Basic b3BzOnMzY3JldA=="),
        ("content-type", "application/json"),
    ];
    assert_eq!(
        registry
            .send(Method::POST, "/eureka/apps/ORDERS", &good, body)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let listed = registry.send(Method::GET, "/v1/apps", &good, Bytes::new()).await;
    assert_eq!(listed.json()["apps"][0]["instances"][0]["instance_id"], "o1");
    assert_eq!(registry.get("/health").await.status, StatusCode::OK);
    assert_eq!(registry.get("/metrics").await.status, StatusCode::OK);
    registry.stop().await;
}

fn body_strategy() -> impl Strategy<Value = String> {
    let json_like = prop_oneof![
        Just(eureka_instance("ORDERS", "p", 1).to_string()),
        Just(r#"{"host_name":"h","port":1}"#.to_owned()),
        "[\\[\\]{}\":,a-z0-9$@ ]{0,80}",
        any::<Vec<u8>>().prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
    ];
    // Mutate valid bodies by cutting them short, so truncation is covered too.
    (json_like, any::<prop::sample::Index>()).prop_map(|(body, cut)| {
        let mut end = cut.index(body.len() + 1);
        while !body.is_char_boundary(end) {
            end -= 1;
        }
        body[..end].to_owned()
    })
}

#[tokio::test]
async fn arbitrary_bodies_never_crash_a_handler_or_corrupt_state() {
    let registry = start(quiet_config()).await;
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 300,
        ..ProptestConfig::default()
    });
    let strategy = (
        body_strategy(),
        prop_oneof![Just("application/json"), Just("application/xml")],
        0usize..6,
    );
    for _ in 0..300 {
        let (body, content_type, route) = strategy.new_tree(&mut runner).expect("value").current();
        let path = [
            "/eureka/apps/ORDERS",
            "/v1/apps/ORDERS",
            "/v1/apps/ORDERS/p/status",
            "/v1/apps/ORDERS/p/metadata",
            "/eureka/apps/ORDERS/p?lastDirtyTimestamp=x",
            "/eureka/apps/ORDERS/p/metadata?a=b",
        ][route];
        let method = match route {
            0 | 1 => Method::POST,
            3 => Method::PATCH,
            _ => Method::PUT,
        };
        let index_before = registry.get("/v1/status").await.json()["index"]
            .as_u64()
            .expect("index");
        let answer = registry
            .send(method, path, &[("content-type", content_type)], body.clone())
            .await;
        assert!(!answer.status.is_server_error(), "{path} {body:?}: {}", answer.status);
        if answer.status.is_client_error() {
            answer.error_message(answer.status);
            let index_after = registry.get("/v1/status").await.json()["index"]
                .as_u64()
                .expect("index");
            assert_eq!(
                index_before, index_after,
                "a refused request changed state: {path} {body:?}"
            );
        }
    }
    assert_eq!(registry.get("/health").await.status, StatusCode::OK, "still serving");
    registry.stop().await;
}
