//! Precedence, documents, decryption, placeholders and renderings.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::cipher::{Cipher, DEFAULT_SALT};
use crate::repo::Tree;

fn snapshot(files: &[(&str, &str)]) -> Snapshot {
    let tree = Tree {
        version: Some("abc123".into()),
        label: "main".into(),
        files: files
            .iter()
            .map(|(path, text)| (path.to_string(), Arc::new(text.as_bytes().to_vec())))
            .collect(),
    };
    Snapshot::new(tree, "file:/repo".into(), vec!["{application}".into(), "shared".into()])
}

fn names(environment: &Environment) -> Vec<&str> {
    environment
        .property_sources
        .iter()
        .map(|s| s.name.trim_start_matches("file:/repo/"))
        .collect()
}

fn profiles(list: &[&str]) -> Vec<String> {
    list.iter().map(|p| p.to_string()).collect()
}

#[test]
fn profile_files_come_first_the_last_profile_highest_and_the_application_before_the_shared() {
    let snapshot = snapshot(&[
        ("application.yml", "a: shared"),
        ("application-dev.yml", "a: shared-dev"),
        ("application-db.yml", "a: shared-db"),
        ("foo.yml", "a: foo"),
        ("foo-dev.properties", "a=foo-dev"),
        ("foo-db.yml", "a: foo-db"),
        ("bar.yml", "a: bar"),
    ]);
    let environment = snapshot.environment("foo", &profiles(&["dev", "db"]), None);
    assert_eq!(
        names(&environment),
        [
            "foo-db.yml",
            "application-db.yml",
            "foo-dev.properties",
            "application-dev.yml",
            "foo.yml",
            "application.yml"
        ]
    );
    assert_eq!(merged(&environment)["a"], json!("foo-db"));
    assert_eq!(environment.version.as_deref(), Some("abc123"));
    let unknown = snapshot.environment("nobody", &profiles(&["default"]), None);
    assert_eq!(names(&unknown), ["application.yml"], "only the shared files apply");
}

#[test]
fn search_paths_and_profile_documents_apply() {
    let snapshot = snapshot(&[
        ("foo.yml", "b: root"),
        (
            "application.yml",
            "a: 1\n---\nspring.config.activate.on-profile: dev\na: 2\n---\nspring.config.activate.on-profile: prod\na: 3\n",
        ),
        ("foo/foo.yml", "b: in-search-path"),
        ("shared/application-dev.yml", "c: shared-dir"),
        ("other/foo.yml", "b: not-searched"),
    ]);
    let environment = snapshot.environment("foo", &profiles(&["dev"]), None);
    assert_eq!(
        names(&environment),
        [
            "shared/application-dev.yml",
            "foo/foo.yml",
            "foo.yml",
            "application.yml (document #1)",
            "application.yml (document #0)"
        ]
    );
    let merged = merged(&environment);
    assert_eq!(
        (merged["a"].clone(), merged["b"].clone()),
        (json!(2), json!("in-search-path"))
    );
}

#[test]
fn cipher_values_are_decrypted_or_marked_invalid() {
    let cipher = Cipher::new("k", DEFAULT_SALT).unwrap();
    let secret = cipher.encrypt("hunter2");
    let yaml =
        format!("password: '{{cipher}}{secret}'\nother: '{{cipher}}{{key:ops}}{secret}'\nbroken: '{{cipher}}00ff'\n");
    let snapshot = snapshot(&[("application.yml", yaml.as_str())]);
    let environment = snapshot.environment("foo", &profiles(&["default"]), Some(&cipher));
    let source = &environment.property_sources[0].source;
    assert_eq!(source["password"], json!("hunter2"));
    assert_eq!(source["other"], json!("hunter2"));
    assert_eq!(source["invalid.broken"], json!("<n/a>"));
    assert!(!source.contains_key("broken"));
    let without_key = snapshot.environment("foo", &profiles(&["default"]), None);
    assert_eq!(
        without_key.property_sources[0].source["invalid.password"],
        json!("<n/a>")
    );
}

#[test]
fn invalid_files_are_reported_and_left_out() {
    let snapshot = snapshot(&[("application.yml", "a: [1"), ("foo.yml", "b: 1")]);
    assert!(snapshot.invalid.contains_key("application.yml"));
    assert_eq!(
        names(&snapshot.environment("foo", &profiles(&["default"]), None)),
        ["foo.yml"]
    );
}

#[test]
fn placeholders_resolve_with_defaults_and_never_loop() {
    let properties: BTreeMap<String, serde_json::Value> = [
        ("host".to_owned(), json!("db.local")),
        ("port".to_owned(), json!(5432)),
        ("url".to_owned(), json!("postgres://${host}:${port}/${name:app}")),
        ("loop".to_owned(), json!("${loop}")),
    ]
    .into();
    assert_eq!(
        resolve_placeholders("${url}", &properties),
        "postgres://db.local:5432/app"
    );
    assert_eq!(resolve_placeholders("x ${missing} y", &properties), "x ${missing} y");
    assert_eq!(resolve_placeholders("${a:${host}}", &properties), "db.local");
    assert!(resolve_placeholders("${loop}", &properties).contains("loop"));
    assert_eq!(resolve_placeholders("${unclosed", &properties), "${unclosed");
}

#[test]
fn renderings_rebuild_nesting_and_lists() {
    let merged: BTreeMap<String, serde_json::Value> = [
        ("server.port".to_owned(), json!(8080)),
        ("list[0].name".to_owned(), json!("a")),
        ("list[1].name".to_owned(), json!("b: c")),
        ("flag".to_owned(), json!(true)),
        ("version".to_owned(), json!("1.0")),
    ]
    .into();
    let nested = to_nested(&merged);
    assert_eq!(
        nested,
        json!({"flag": true, "list": [{"name": "a"}, {"name": "b: c"}], "server": {"port": 8080}, "version": "1.0"})
    );
    let yaml = to_yaml(&nested);
    let reparsed = crate::parse::yaml(&yaml).unwrap();
    let keys: BTreeMap<String, serde_json::Value> = reparsed[0].properties.iter().cloned().collect();
    assert_eq!(
        keys, merged,
        "the YAML rendering parses back to the same properties:\n{yaml}"
    );
    let properties = to_properties(&merged);
    assert!(
        properties.contains("server.port: 8080\n") && properties.contains("list[1].name: b: c\n"),
        "{properties}"
    );
}

#[test]
fn plain_files_prefer_the_profile_variant_and_refuse_escapes() {
    let snapshot = snapshot(&[
        ("nginx.conf", "base"),
        ("nginx-dev.conf", "dev"),
        ("foo/app.txt", "in search path"),
    ]);
    let get = |path: &str, profile: &str| {
        snapshot
            .plain_file("foo", &profiles(&[profile]), path)
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
    };
    assert_eq!(get("nginx.conf", "dev").as_deref(), Some("dev"));
    assert_eq!(get("nginx.conf", "prod").as_deref(), Some("base"));
    let first_named = snapshot.plain_file("foo", &profiles(&["dev", "db"]), "nginx.conf");
    assert_eq!(
        first_named.map(|b| b.as_slice()),
        Some(&b"dev"[..]),
        "the first profile named wins"
    );
    assert_eq!(get("app.txt", "dev").as_deref(), Some("in search path"));
    for escape in ["../etc/passwd", "/etc/passwd", "a/../../x", "./nginx.conf", ""] {
        assert_eq!(get(escape, "dev"), None, "{escape}");
    }
}

#[test]
fn the_v2_shape_gives_each_value_its_origin_and_the_plain_one_is_unchanged() {
    let cipher = Cipher::new("k", DEFAULT_SALT).unwrap();
    let secret = cipher.encrypt("hunter2");
    let snapshot = snapshot(&[
        (
            "foo.yml",
            &format!("server:\n  port: 9000\npassword: '{{cipher}}{secret}'\nbroken: '{{cipher}}00ff'\n"),
        ),
        ("foo-dev.properties", "greeting = hi\n"),
    ]);
    let plain: serde_json::Value = serde_json::from_slice(&snapshot.environment_json(
        "foo",
        "dev",
        false,
        None,
        Some(&cipher),
        EnvironmentShape::Plain,
    ))
    .unwrap();
    let v2: serde_json::Value = serde_json::from_slice(&snapshot.environment_json(
        "foo",
        "dev",
        false,
        None,
        Some(&cipher),
        EnvironmentShape::WithOrigins,
    ))
    .unwrap();
    assert_eq!(plain["propertySources"][1]["source"]["server.port"], json!(9000));
    assert_eq!(
        v2["propertySources"][0]["source"],
        json!({"greeting": {"value": "hi", "origin": "1:12"}})
    );
    assert_eq!(
        v2["propertySources"][1]["source"],
        json!({
            "server.port": {"value": 9000, "origin": "2:9"},
            "password": {"value": "hunter2", "origin": "3:11"},
            "invalid.broken": {"value": "<n/a>", "origin": "4:9"},
        }),
        "decrypted values and undecryptable ones keep the place they are written"
    );
    for field in ["name", "profiles", "label", "version", "state"] {
        assert_eq!(plain[field], v2[field], "{field}");
    }
    assert_eq!(plain["propertySources"][1]["name"], v2["propertySources"][1]["name"]);
}
