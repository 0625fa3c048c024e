//! The real `rtalpha` binary: start-up, configuration layering, `status`, `up`, and
//! graceful shutdown on SIGTERM and SIGINT.

use std::io::Write;
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[path = "support/node.rs"]
mod node;

use node::{BINARY, free_port, http};

fn wait_healthy(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some((200, _)) = http("GET", port, "/health", None) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the process exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("port {port} not healthy within 20 s");
}

fn signal_and_wait(child: &mut Child, signal: Signal) -> std::process::ExitStatus {
    let pid = i32::try_from(child.id()).expect("pid fits");
    kill(Pid::from_raw(pid), signal).expect("signal sent");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the process did not exit within 20 s of {signal}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn registry(port: u16) -> Child {
    Command::new(BINARY)
        .args(["registry", "--bind", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn rtalpha registry")
}

fn register(port: u16, app: &str, id: &str) {
    let body = format!(r#"{{"instance_id":"{id}","host_name":"{id}.test","port":8080}}"#);
    let (status, answer) = http("POST", port, &format!("/v1/apps/{app}"), Some(&body)).expect("answer");
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn stops_gracefully_on_sigterm_and_sigint_and_starts_again() {
    let port = free_port();
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let mut child = registry(port);
        wait_healthy(port, &mut child);
        register(port, "orders", "o1");
        let (status, body) = http("GET", port, "/v1/apps/ORDERS", None).expect("answer");
        assert_eq!(status, 200, "{body}");
        let exit = signal_and_wait(&mut child, signal);
        assert_eq!(exit.code(), Some(0), "graceful shutdown on {signal} exits 0");
        assert!(
            http("GET", port, "/health", None).is_none(),
            "the port is closed after exit"
        );
    }
}

#[test]
fn graceful_shutdown_does_not_wait_for_open_watches() {
    let port = free_port();
    let mut child = registry(port);
    wait_healthy(port, &mut child);
    let mut watch = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    watch
        .write_all(b"GET /v1/watch HTTP/1.1\r\nhost: x\r\n\r\n")
        .expect("watch request");
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let exit = signal_and_wait(&mut child, Signal::SIGTERM);
    assert_eq!(exit.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn environment_and_file_settings_are_layered_and_bad_keys_are_named() {
    let port = free_port();
    let mut config = tempfile::Builder::new().suffix(".toml").tempfile().expect("temp file");
    writeln!(
        config,
        "[registry.self_preservation]\nthreshold = 0.5\nwindow = \"30s\""
    )
    .expect("write");
    let mut child = Command::new(BINARY)
        .args(["registry", "--bind", &format!("127.0.0.1:{port}"), "--config"])
        .arg(config.path())
        .env("RTALPHA_REGISTRY__SELF_PRESERVATION__WINDOW", "2m")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_healthy(port, &mut child);
    let (_, body) = http("GET", port, "/v1/status", None).expect("status");
    let status: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(status["self_preservation"]["threshold_share"], 0.5, "from the file");
    assert_eq!(
        status["self_preservation"]["window_secs"], 120,
        "the environment wins over the file"
    );
    assert_eq!(signal_and_wait(&mut child, Signal::SIGTERM).code(), Some(0));

    let cases: [(&[(&str, &str)], &str); 3] = [
        (
            &[("RTALPHA_REGISTRY__SELF_PRESERVATION__THRESHOLD", "2")],
            "registry.self_preservation.threshold",
        ),
        (
            &[("RTALPHA_REGISTRY__EVICTION_INTERVAL", "soon")],
            "registry.eviction_interval",
        ),
        (&[("RTALPHA_REGISTRY__AUTH__USERNAME", "ops")], "registry.auth"),
    ];
    for (env, key) in cases {
        let output = Command::new(BINARY)
            .args(["registry", "--bind", &format!("127.0.0.1:{}", free_port())])
            .envs(env.iter().copied())
            .output()
            .expect("run");
        assert!(!output.status.success(), "{env:?} must stop start-up");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(key), "{env:?}: `{stderr}` should name {key}");
    }
}

#[test]
fn the_command_line_wins_over_the_environment_and_foreign_variables_are_ignored() {
    let port = free_port();
    let mut child = Command::new(BINARY)
        .args(["registry", "--bind", &format!("127.0.0.1:{port}")])
        .env("RTALPHA_SERVER__BIND", format!("127.0.0.1:{}", free_port()))
        .env("RTALPHA_TEST_POSTGRES_URL", "postgres://127.0.0.1/test")
        .env("RTALPHA_REGISTRY_URL", "http://127.0.0.1:1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_healthy(port, &mut child);
    assert_eq!(signal_and_wait(&mut child, Signal::SIGTERM).code(), Some(0));
}

#[test]
fn status_prints_the_registry_as_a_table() {
    let port = free_port();
    let mut child = registry(port);
    wait_healthy(port, &mut child);
    register(port, "orders", "o1");
    register(port, "billing", "b1");
    let output: Output = Command::new(BINARY)
        .args(["status", "--registry", &format!("http://127.0.0.1:{port}")])
        .output()
        .expect("run status");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let table = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("APP") && lines[0].contains("STATUS"), "{table}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("BILLING") && l.contains("b1") && l.contains("UP")),
        "{table}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ORDERS") && l.contains("o1.test:8080")),
        "{table}"
    );
    assert!(table.contains("2 apps, 2 instances"), "{table}");
    assert_eq!(signal_and_wait(&mut child, Signal::SIGTERM).code(), Some(0));

    let unreachable = Command::new(BINARY)
        .args(["status", "--registry", &format!("http://127.0.0.1:{}", free_port())])
        .output()
        .expect("run status");
    assert!(!unreachable.status.success());
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach the registry"));
}

#[test]
fn up_runs_the_config_server_and_the_registry_and_stops_them_on_sigterm() {
    let port = free_port();
    let config_port = free_port();
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config-repo");
    let mut child = Command::new(BINARY)
        .args(["up", "--registry-bind", &format!("127.0.0.1:{port}")])
        .args([
            "--config-server-bind",
            &format!("127.0.0.1:{config_port}"),
            "--config-repo",
            repo,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn up");
    wait_healthy(port, &mut child);
    register(port, "orders", "o1");
    assert_eq!(signal_and_wait(&mut child, Signal::SIGTERM).code(), Some(0));
    assert!(
        http("GET", port, "/health", None).is_none(),
        "the registry child stopped too"
    );
}
