//! The config server over HTTP against real git repositories made with the git command
//! line: local paths, `file://` and `git://` (a real `git daemon`) remotes. The https and
//! ssh transports are in git_transports.rs.

#[path = "support/harness.rs"]
mod harness;

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use harness::{Server, commit, eventually, git, git_config, repository};
use rtalpha_config_server::Config;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

fn sources(environment: &Value) -> Vec<String> {
    environment["propertySources"]
        .as_array()
        .expect("sources")
        .iter()
        .map(|s| {
            s["name"]
                .as_str()
                .unwrap_or_default()
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

const SPRING_EXAMPLE: &str = "682bc583f4641835fa2db009355293665d2647dade3375c0ee201de2a49f7bda";

#[tokio::test]
async fn serves_environments_in_springs_order_with_labels_and_secrets() {
    let repo = repository(&[
        (
            "application.yml",
            &format!("greeting: hello\nserver:\n  port: 9000\npassword: '{{cipher}}{SPRING_EXAMPLE}'\n"),
        ),
        ("application-dev.yml", "greeting: hello-dev\n"),
        ("foo.yml", "name: foo\nlist:\n  - a\n  - b\n"),
        ("foo-dev.properties", "greeting=hi ${user:anon}\n"),
        ("foo/foo-db.yml", "db.url: jdbc:test\n"),
        ("nginx.conf", "listen ${server.port};\n"),
    ]);
    let first = git(repo.path(), &["rev-parse", "HEAD"]);
    git(repo.path(), &["tag", "v1"]);
    git(repo.path(), &["checkout", "-q", "-b", "feature/x"]);
    commit(repo.path(), &[("foo.yml", "name: foo-feature\n")], "feature");
    git(repo.path(), &["checkout", "-q", "main"]);
    let basedir = tempfile::tempdir().expect("basedir");
    let mut config = git_config(&repo.path().display().to_string(), &basedir.path().join("clone"));
    config.encrypt.key = Some("foo".to_owned());
    let server = Server::start(config).await;

    let environment = server.json("/foo/dev,db").await;
    assert_eq!(environment["name"], "foo");
    assert_eq!(environment["profiles"], json!(["dev", "db"]));
    assert_eq!(environment["label"], Value::Null, "no label in the URL");
    assert_eq!(environment["version"], first.as_str());
    assert_eq!(
        sources(&environment),
        [
            "foo-db.yml",
            "foo-dev.properties",
            "application-dev.yml",
            "foo.yml",
            "application.yml"
        ]
    );
    let application = environment["propertySources"]
        .as_array()
        .expect("sources")
        .last()
        .cloned()
        .expect("last");
    assert_eq!(
        application["source"]["password"], "mysecret",
        "{{cipher}} decrypted on the server"
    );
    assert_eq!(application["source"]["server.port"], 9000, "YAML numbers stay numbers");

    let labelled = server.json("/foo/default/v1").await;
    assert_eq!(
        (labelled["label"].as_str(), labelled["version"].as_str()),
        (Some("v1"), Some(first.as_str()))
    );
    let by_commit = server.json(&format!("/foo/default/{first}")).await;
    assert_eq!(by_commit["version"], first.as_str());
    let feature = server.json("/foo/default/feature(_)x").await;
    let foo = feature["propertySources"]
        .as_array()
        .expect("sources")
        .iter()
        .find(|s| s["name"].as_str().is_some_and(|n| n.ends_with("/foo.yml")))
        .cloned()
        .expect("foo.yml");
    assert_eq!(foo["source"]["name"], "foo-feature", "`(_)` stands for `/` in labels");

    let unknown = server.json("/nobody/default").await;
    assert_eq!(
        sources(&unknown),
        ["application.yml"],
        "an unknown application gets the shared files"
    );
    let (status, body) = server.get("/foo/default/no-such-label").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no-such-label"));

    let (status, yaml) = server.get("/foo-dev.yml").await;
    assert_eq!(status, 200);
    assert!(
        yaml.contains("greeting: hi anon") && yaml.contains("  port: 9000") && yaml.contains("- a"),
        "{yaml}"
    );
    let (_, properties) = server.get("/main/foo-dev.properties").await;
    assert!(
        properties.contains("greeting: hi anon") && properties.contains("list[1]: b"),
        "{properties}"
    );
    let json_rendering = server.json("/foo-dev.json").await;
    assert_eq!(json_rendering["server"]["port"], 9000);
    assert_eq!(json_rendering["list"], json!(["a", "b"]));
    let (_, unresolved) = server.get("/foo-dev.properties?resolvePlaceholders=false").await;
    assert!(unresolved.contains("${user:anon}"), "{unresolved}");

    let (status, nginx) = server.get("/foo/dev/main/nginx.conf").await;
    assert_eq!((status, nginx.as_str()), (200, "listen 9000;\n"));
    for escape in [
        "/foo/dev/main/../../etc/passwd",
        "/foo/dev/main/%2e%2e/etc/passwd",
        "/foo/dev/main/.git/config",
    ] {
        let (status, body) = server.get(escape).await;
        assert!(status == 400 || status == 404, "{escape}: {status} {body}");
        assert!(!body.contains("root:"), "{escape}");
    }
    server.stop().await;
}

const V2_JSON: &str = "application/vnd.spring-cloud.config-server.v2+json";

#[tokio::test]
async fn answers_springs_v2_media_type_with_the_origin_of_every_value() {
    let repo = repository(&[
        ("application.yml", "greeting: hello\nserver:\n  port: 9000\n"),
        ("foo.yml", "name: foo\nlist:\n  - a\n"),
        ("foo-dev.properties", "greeting=hi\n"),
    ]);
    let version = git(repo.path(), &["rev-parse", "HEAD"]);
    let basedir = tempfile::tempdir().expect("basedir");
    let server = Server::start(git_config(
        &repo.path().display().to_string(),
        &basedir.path().join("clone"),
    ))
    .await;
    let v2_accept = [("accept", V2_JSON)];
    for path in ["/foo/dev", "/foo/dev/main"] {
        let (status, headers, body) = server.answer("GET", path, "", &v2_accept).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(headers["content-type"], V2_JSON, "{path}");
        assert_eq!(headers["vary"], "accept");
        let environment: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(environment["version"], version.as_str());
        assert_eq!(
            sources(&environment),
            ["foo-dev.properties", "foo.yml", "application.yml"]
        );
        let values: Vec<&Value> = (0..3).map(|n| &environment["propertySources"][n]["source"]).collect();
        assert_eq!(values[0], &json!({"greeting": {"value": "hi", "origin": "1:10"}}));
        assert_eq!(
            values[1],
            &json!({"name": {"value": "foo", "origin": "1:7"}, "list[0]": {"value": "a", "origin": "3:5"}})
        );
        assert_eq!(values[2]["server.port"], json!({"value": 9000, "origin": "3:9"}));
    }

    // Plain JSON is unchanged, whether asked for or not, and whichever was asked first.
    for accept in [None, Some("application/json"), Some("*/*")] {
        let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
        let (status, response_headers, body) = server.answer("GET", "/foo/dev", "", &headers).await;
        assert_eq!(status, 200);
        assert_eq!(response_headers["content-type"], "application/json", "{accept:?}");
        let environment: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(environment["propertySources"][0]["source"], json!({"greeting": "hi"}));
        assert_eq!(environment["propertySources"][1]["source"]["list[0]"], "a");
    }
    let (_, headers, body) = server.answer("GET", "/foo/dev/no-such-label", "", &v2_accept).await;
    assert_eq!(
        headers["content-type"], "application/json",
        "errors keep the JSON error body: {body}"
    );
    server.stop().await;
}

#[tokio::test]
async fn encrypt_and_decrypt_round_trip_and_need_a_key() {
    let repo = repository(&[("application.yml", "a: 1\n")]);
    let basedir = tempfile::tempdir().expect("basedir");
    let mut config = git_config(&repo.path().display().to_string(), &basedir.path().join("clone"));
    config.encrypt.key = Some("s3cret".to_owned());
    let server = Server::start(config).await;
    let (status, cipher) = server
        .call("POST", "/encrypt", "db-password", &[("content-type", "text/plain")])
        .await;
    assert_eq!(status, 200);
    assert!(
        cipher.len() >= 64 && cipher.chars().all(|c| c.is_ascii_hexdigit()),
        "{cipher}"
    );
    let (status, plain) = server
        .call("POST", "/decrypt", &cipher, &[("content-type", "text/plain")])
        .await;
    assert_eq!((status, plain.as_str()), (200, "db-password"));
    let (status, body) = server.call("POST", "/decrypt", "00ff", &[]).await;
    assert_eq!(status, 400, "{body}");
    server.stop().await;

    let without = Server::start(git_config(
        &repo.path().display().to_string(),
        &basedir.path().join("clone2"),
    ))
    .await;
    let (status, body) = without.call("POST", "/encrypt", "x", &[]).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("encrypt.key"));
    without.stop().await;
}

#[tokio::test]
async fn basic_auth_guards_config_but_not_health() {
    let repo = repository(&[("application.yml", "a: 1\n")]);
    let basedir = tempfile::tempdir().expect("basedir");
    let mut config = git_config(&repo.path().display().to_string(), &basedir.path().join("clone"));
    config.config_server.username = Some("cfg".to_owned());
    config.config_server.password = Some("pw".to_owned());
    let server = Server::start(config).await;
    assert_eq!(server.get("/foo/default").await.0, 401);
    // "cfg:pw" in base64.
    let (status, _) = server
        .call("GET", "/foo/default", "", &[("authorization", "Basic Y2ZnOnB3")])
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        server
            .call("GET", "/foo/default", "", &[("authorization", "Basic Y2ZnOng=")])
            .await
            .0,
        401
    );
    assert_eq!(server.get("/health").await.0, 200);
    server.stop().await;
}

#[tokio::test]
async fn follows_new_commits_and_keeps_the_last_good_one_when_a_file_breaks() {
    let repo = repository(&[("application.yml", "a: 1\n")]);
    let basedir = tempfile::tempdir().expect("basedir");
    let uri = format!("file://{}", repo.path().display());
    let server = Server::start(git_config(&uri, &basedir.path().join("clone"))).await;
    assert_eq!(
        server.json("/foo/default").await["propertySources"][0]["source"]["a"],
        1
    );

    let second = commit(repo.path(), &[("application.yml", "a: 2\n")], "two");
    assert!(
        eventually(
            Duration::from_secs(5),
            async || server.json("/foo/default").await["version"] == second.as_str()
        )
        .await,
        "the new commit is served after a refresh"
    );
    assert_eq!(
        server.json("/foo/default").await["propertySources"][0]["source"]["a"],
        2
    );

    commit(repo.path(), &[("application.yml", "a: [2\n")], "broken");
    assert!(
        eventually(Duration::from_secs(5), async || {
            server.json("/foo/default").await["state"]
                .as_str()
                .is_some_and(|s| s.contains("application.yml"))
        })
        .await,
        "the broken file is reported in `state`"
    );
    let environment = server.json("/foo/default").await;
    assert_eq!(
        environment["version"],
        second.as_str(),
        "the last good commit is still served"
    );
    assert_eq!(environment["propertySources"][0]["source"]["a"], 2);
    let health: Value = serde_json::from_str(&server.get("/health").await.1).expect("json");
    assert_eq!(health["status"], "DEGRADED", "{health}");
    assert!(
        health["checks"]["repository"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("application.yml"))
    );

    let fixed = commit(repo.path(), &[("application.yml", "a: 3\n")], "fixed");
    assert!(
        eventually(
            Duration::from_secs(5),
            async || server.json("/foo/default").await["version"] == fixed.as_str()
        )
        .await
    );
    let health: Value = serde_json::from_str(&server.get("/health").await.1).expect("json");
    assert_eq!(health["status"], "UP", "{health}");
    server.stop().await;
}

#[tokio::test]
async fn starts_from_the_local_clone_when_the_remote_is_down() {
    let repo = repository(&[("application.yml", "a: 1\n")]);
    let version = git(repo.path(), &["rev-parse", "HEAD"]);
    let basedir = tempfile::tempdir().expect("basedir");
    let clone = basedir.path().join("clone");
    let moved = tempfile::tempdir().expect("elsewhere");
    let uri = format!("file://{}", repo.path().display());
    let server = Server::start(git_config(&uri, &clone)).await;
    assert_eq!(server.json("/foo/default").await["version"], version.as_str());
    server.stop().await;

    // The remote disappears; the server restarts on its clone.
    let gone: PathBuf = moved.path().join("gone");
    std::fs::rename(repo.path(), &gone).expect("move the remote away");
    let server = Server::start(git_config(&uri, &clone)).await;
    let environment = server.json("/foo/default").await;
    assert_eq!(environment["version"], version.as_str());
    assert!(
        environment["state"].as_str().is_some_and(|s| s.starts_with("stale")),
        "{environment}"
    );
    let health: Value = serde_json::from_str(&server.get("/health").await.1).expect("json");
    assert_eq!(health["status"], "DEGRADED", "{health}");
    assert_eq!(server.get("/ready").await.0, 200, "it serves");
    server.stop().await;
    std::fs::rename(&gone, repo.path()).expect("move it back for cleanup");

    // Without a clone and without a remote there is nothing to serve.
    let nothing = tempfile::tempdir().expect("empty");
    let server = Server::start(git_config(
        &format!("file://{}/absent", nothing.path().display()),
        &nothing.path().join("clone"),
    ))
    .await;
    let (status, body) = server.get("/foo/default").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(server.get("/health").await.0, 503);
    server.stop().await;
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn clones_over_git_protocol_from_a_real_git_daemon() {
    let root = tempfile::tempdir().expect("root");
    let repo_dir = root.path().join("config.git");
    std::fs::create_dir(&repo_dir).expect("dir");
    git(&repo_dir, &["init", "-q", "-b", "main"]);
    let version = commit(&repo_dir, &[("foo.yml", "over: git-protocol\n")], "initial");
    let port = StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let daemon = Daemon(
        Command::new("git")
            .args(["daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", root.path().display()))
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon"),
    );
    let ready = eventually(Duration::from_secs(5), async || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    assert!(ready, "git daemon listens");
    let basedir = tempfile::tempdir().expect("basedir");
    let server = Server::start(git_config(
        &format!("git://127.0.0.1:{port}/config.git"),
        &basedir.path().join("clone"),
    ))
    .await;
    let environment = server.json("/foo/default").await;
    assert_eq!(environment["version"], version.as_str());
    assert_eq!(environment["propertySources"][0]["source"]["over"], "git-protocol");
    server.stop().await;
    drop(daemon);
}

#[tokio::test]
async fn serves_a_plain_directory_natively() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("application.yml"), "a: native\n").expect("write");
    let mut config = Config::default();
    config.config_server.native_dir = Some(dir.path().to_path_buf());
    config.config_server.git.refresh_rate = Duration::from_millis(200);
    let server = Server::start(config).await;
    let environment = server.json("/foo/default").await;
    assert_eq!(environment["version"], Value::Null);
    assert!(
        environment["propertySources"][0]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("file:"))
    );
    std::fs::write(dir.path().join("application.yml"), "a: changed\n").expect("write");
    assert!(
        eventually(
            Duration::from_secs(5),
            async || server.json("/foo/default").await["propertySources"][0]["source"]["a"] == "changed"
        )
        .await
    );
    server.stop().await;
}

async fn next_refresh(
    receiver: &mut tokio::sync::broadcast::Receiver<rtalpha_bus::Delivery>,
    limit: Duration,
) -> Option<String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let delivery = tokio::time::timeout_at(deadline, receiver.recv()).await.ok()?.ok()?;
        if let rtalpha_bus::Delivery::Event(
            event @ rtalpha_proto::bus::RemoteEvent::RefreshRemoteApplicationEvent { .. },
        ) = delivery
        {
            return Some(event.destination().to_owned());
        }
    }
}

async fn wait_connected(bus: &rtalpha_bus::Bus) {
    assert!(
        eventually(Duration::from_secs(5), async || bus.is_connected()).await,
        "the bus connects"
    );
}

#[tokio::test]
async fn a_commit_reaches_subscribers_of_the_embedded_relay() {
    let repo = repository(&[("application.yml", "a: 1\n"), ("foo.yml", "b: 1\n")]);
    let basedir = tempfile::tempdir().expect("basedir");
    let server = Server::start(git_config(
        &repo.path().display().to_string(),
        &basedir.path().join("clone"),
    ))
    .await;
    let shutdown = CancellationToken::new();
    let bus = rtalpha_bus::Bus::connect(&server.base, shutdown.clone()).expect("relay bus");
    wait_connected(&bus).await;
    let mut events = bus.subscribe();

    let started = tokio::time::Instant::now();
    commit(repo.path(), &[("foo.yml", "b: 2\n")], "foo changes");
    let destination = next_refresh(&mut events, Duration::from_secs(5))
        .await
        .expect("a refresh event");
    assert_eq!(destination, "foo:**", "only the application whose file changed");
    eprintln!("commit to event over the relay: {:?}", started.elapsed());
    commit(repo.path(), &[("application.yml", "a: 2\n")], "shared changes");
    assert_eq!(
        next_refresh(&mut events, Duration::from_secs(5)).await.as_deref(),
        Some("**")
    );

    let (status, _) = server.call("POST", "/busrefresh/user-service", "", &[]).await;
    assert_eq!(status, 204);
    assert_eq!(
        next_refresh(&mut events, Duration::from_secs(5)).await.as_deref(),
        Some("user-service:**")
    );
    let (status, _) = server.call("POST", "/actuator/busrefresh", "", &[]).await;
    assert_eq!(status, 204);
    assert_eq!(
        next_refresh(&mut events, Duration::from_secs(5)).await.as_deref(),
        Some("**")
    );

    let (status, body) = server
        .call("POST", "/monitor", "{oops", &[("x-github-event", "push")])
        .await;
    assert_eq!(status, 400, "{body}");
    shutdown.cancel();
    server.stop().await;
}

#[tokio::test]
async fn a_webhook_to_one_of_two_config_servers_refreshes_both_over_rabbitmq() {
    let url = match std::env::var("RTALPHA_TEST_AMQP_URL") {
        Ok(url) if !url.is_empty() => url,
        _ if std::env::var("CI").as_deref() == Ok("true") => panic!("RTALPHA_TEST_AMQP_URL is unset but CI=true"),
        _ => {
            println!("skipped: RTALPHA_TEST_AMQP_URL is unset");
            return;
        }
    };
    let repo = repository(&[("application.yml", "a: 1\n"), ("user-service.yml", "u: 1\n")]);
    let uri = format!("file://{}", repo.path().display());
    let basedir = tempfile::tempdir().expect("basedir");
    let configure = |clone: &str| {
        let mut config = git_config(&uri, &basedir.path().join(clone));
        // No polling: only the webhook and the bus make them fetch.
        config.config_server.git.refresh_rate = Duration::from_secs(3600);
        config.config_server.bus.url = Some(url.clone());
        config
    };
    let a = Server::start(configure("a")).await;
    let b = Server::start(configure("b")).await;
    let shutdown = CancellationToken::new();
    let observer = rtalpha_bus::Bus::connect(&url, shutdown.clone()).expect("amqp bus");
    wait_connected(&observer).await;
    let mut events = observer.subscribe();
    // Both servers connect to the broker before the webhook.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let fresh = commit(repo.path(), &[("user-service.yml", "u: 2\n")], "change");
    for server in [&a, &b] {
        assert_ne!(
            server.json("/user-service/default").await["version"],
            fresh.as_str(),
            "not yet fetched"
        );
    }
    let hook = r#"{"commits":[{"added":[],"modified":["user-service.yml"],"removed":[]}]}"#;
    let (status, body) = a
        .call(
            "POST",
            "/monitor",
            hook,
            &[("x-github-event", "push"), ("content-type", "application/json")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("user-service:**"), "{body}");
    let destination = next_refresh(&mut events, Duration::from_secs(5))
        .await
        .expect("an event on RabbitMQ");
    assert_eq!(destination, "user-service:**");
    for server in [&a, &b] {
        let caught_up = eventually(Duration::from_secs(5), async || {
            server.json("/user-service/default").await["version"] == fresh.as_str()
        })
        .await;
        assert!(caught_up, "{} serves the new commit", server.base);
    }
    shutdown.cancel();
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn applications_are_served_from_the_repository_their_pattern_names() {
    let main = repository(&[("application.yml", "from: main\n")]);
    let users = repository(&[("application.yml", "from: users\n")]);
    let staging = repository(&[("application.yml", "from: staging\n")]);
    let main_version = git(main.path(), &["rev-parse", "HEAD"]);
    let users_version = git(users.path(), &["rev-parse", "HEAD"]);
    let basedir = tempfile::tempdir().expect("basedir");
    let mut config = git_config(&main.path().display().to_string(), &basedir.path().join("clones"));
    config.config_server.git.repos = vec![
        rtalpha_config_server::config::PatternRepo {
            name: "users".into(),
            pattern: vec!["user-*".into(), "accounts".into()],
            uri: users.path().display().to_string(),
            search_paths: Vec::new(),
            default_label: None,
            ..Default::default()
        },
        rtalpha_config_server::config::PatternRepo {
            name: "staging".into(),
            pattern: vec!["*/staging".into()],
            uri: staging.path().display().to_string(),
            search_paths: Vec::new(),
            default_label: None,
            ..Default::default()
        },
    ];
    let server = Server::start(config).await;
    let from = |environment: &Value| {
        environment["propertySources"][0]["source"]["from"]
            .as_str()
            .map(str::to_owned)
    };
    let user = server.json("/user-service/default").await;
    assert_eq!(
        (from(&user).as_deref(), user["version"].as_str()),
        (Some("users"), Some(users_version.as_str()))
    );
    assert_eq!(from(&server.json("/accounts/default").await).as_deref(), Some("users"));
    assert_eq!(from(&server.json("/billing/staging").await).as_deref(), Some("staging"));
    let other = server.json("/billing/default").await;
    assert_eq!(
        (from(&other).as_deref(), other["version"].as_str()),
        (Some("main"), Some(main_version.as_str()))
    );
    let health: Value = serde_json::from_str(&server.get("/health").await.1).expect("json");
    assert_eq!(health["checks"]["repository[0]"]["status"], "UP", "{health}");
    server.stop().await;
}

#[tokio::test]
async fn a_local_repository_is_watched_so_a_commit_is_served_without_waiting_for_a_poll() {
    let repo = repository(&[("application.yml", "a: 1\n")]);
    let basedir = tempfile::tempdir().expect("basedir");
    let mut config = git_config(&repo.path().display().to_string(), &basedir.path().join("clone"));
    config.config_server.git.refresh_rate = Duration::from_secs(3600);
    let server = Server::start(config).await;
    let shutdown = CancellationToken::new();
    let bus = rtalpha_bus::Bus::connect(&server.base, shutdown.clone()).expect("relay bus");
    wait_connected(&bus).await;
    let mut events = bus.subscribe();
    let started = tokio::time::Instant::now();
    let fresh = commit(repo.path(), &[("application.yml", "a: 2\n")], "two");
    assert_eq!(
        next_refresh(&mut events, Duration::from_secs(3)).await.as_deref(),
        Some("**"),
        "the watch saw the commit"
    );
    let elapsed = started.elapsed();
    assert_eq!(server.json("/foo/default").await["version"], fresh.as_str());
    eprintln!("local commit to refresh event: {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(1),
        "commit to event under 1 s: {elapsed:?}"
    );
    shutdown.cancel();
    server.stop().await;
}
