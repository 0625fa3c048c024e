//! Compatibility of the registry with the real third-party Eureka clients (DESIGN.md §6):
//! py-eureka-client from PyPI and eureka-js-client from npm, driven by the scripts in
//! `compat/` against a real `rtalpha registry` process.
//!
//! `compat/setup.sh` installs the clients; the tests find them through
//! `RTALPHA_TEST_PYTHON` (the venv's python) and `RTALPHA_TEST_NODE_MODULES` (the
//! node_modules directory). Unset, a test says it is skipped; with `CI=true` it fails.
//!
//! Each test starts its own registry, registers app B over plain HTTP, runs a client
//! script that registers app A and stops at a handshake, checks from the native API that
//! A is registered, lets the script go on (discovery of B, heartbeats, deregistration;
//! the script checks those with the client's own API), then checks that A is gone, B is
//! still there, and the registry stops with exit code 0 on SIGTERM.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rtalpha_proto::registry::AppsView;
use rtalpha_proto::{Instance, Status};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::timeout;

/// The longest one HTTP call to the registry may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest the registry may take to answer `/health` after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest a client script may take to register, and then to finish.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest the registry may take to exit after SIGTERM (its grace is 10 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

const APP_A: &str = "APPA";
const APP_B: &str = "APPB";
const APP_B_ID: &str = "127.0.0.1:appb:9002";
const APP_B_PORT: u16 = 9002;

/// Returns the variable's value, or `None` after saying the test is skipped; under
/// `CI=true` an unset variable fails the test instead.
fn required_env(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Some(value),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{name} is unset but CI=true: run compat/setup.sh and set it")
        }
        _ => {
            println!("skipped: {name} is unset");
            None
        }
    }
}

fn compat_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../compat")
}

/// A registry process on 127.0.0.1, its output kept in a file for failure reports.
struct Registry {
    child: Child,
    base: String,
    log: tempfile::NamedTempFile,
}

impl Registry {
    /// Starts `rtalpha registry` on a free port and waits until `/health` answers 200.
    async fn start() -> Registry {
        // The port is free when probed but could be taken before the registry binds it;
        // a registry that exits at once is retried on another port.
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("probe a free port on 127.0.0.1")
                .port();
            let log = tempfile::NamedTempFile::new().expect("create the registry's log file");
            let mut command = Command::new(env!("CARGO_BIN_EXE_rtalpha"));
            command
                .args(["registry", "--bind", &format!("127.0.0.1:{port}")])
                .stdin(Stdio::null())
                .stdout(log.reopen().expect("open the log file"))
                .stderr(log.reopen().expect("open the log file"))
                .kill_on_drop(true);
            // `RTALPHA_*` variables are config keys to the binary, which refuses the
            // unknown ones, such as RTALPHA_TEST_PYTHON: start it from defaults only.
            for (name, _) in std::env::vars_os() {
                if name.to_string_lossy().starts_with("RTALPHA_") {
                    command.env_remove(name);
                }
            }
            let child = command.spawn().expect("spawn rtalpha registry");
            let mut registry = Registry {
                child,
                base: format!("http://127.0.0.1:{port}"),
                log,
            };
            if registry.wait_healthy().await {
                return registry;
            }
            eprintln!("registry on port {port} exited at start:\n{}", registry.output());
        }
        panic!("the registry did not start in three tries");
    }

    /// True once `/health` answers 200; false if the process exited first.
    async fn wait_healthy(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the registry") {
                eprintln!("the registry exited with {status}");
                return false;
            }
            if let Ok((StatusCode::OK, _)) = try_http(Method::GET, &self.url("/health"), None).await {
                return true;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the registry did not answer /health within {START_TIMEOUT:?}:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn output(&self) -> String {
        let mut text = String::new();
        let _ = self.log.reopen().and_then(|mut file| file.read_to_string(&mut text));
        text
    }

    /// The native view of all apps.
    async fn apps(&self) -> AppsView {
        let (status, body) = http(Method::GET, &self.url("/v1/apps"), None).await;
        assert_eq!(status, StatusCode::OK, "GET /v1/apps: {body:?}");
        serde_json::from_slice(&body).unwrap_or_else(|err| {
            panic!(
                "GET /v1/apps is not the native JSON ({err}): {}",
                String::from_utf8_lossy(&body)
            )
        })
    }

    /// Registers app B through Eureka's REST API, as any non-Rust service would.
    async fn register_app_b(&self) {
        let body = json!({"instance": {
            "instanceId": APP_B_ID, "hostName": "127.0.0.1", "app": APP_B,
            "ipAddr": "127.0.0.1", "status": "UP", "overriddenstatus": "UNKNOWN",
            "port": {"$": APP_B_PORT, "@enabled": "true"},
            "securePort": {"$": 9443, "@enabled": "false"},
            "vipAddress": "appb", "secureVipAddress": "appb", "countryId": 1,
            "dataCenterInfo": {
                "@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo",
                "name": "MyOwn"
            },
            // Long enough that B outlives the test without heartbeats.
            "leaseInfo": {"renewalIntervalInSecs": 30, "durationInSecs": 600},
            "metadata": {"role": "app-b"}
        }});
        let (status, answer) = http(
            Method::POST,
            &self.url(&format!("/eureka/apps/{APP_B}")),
            Some(body.to_string()),
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "registering {APP_B}: {answer:?}");
    }

    /// SIGTERM, then the exit code, which must be 0.
    async fn stop(mut self) {
        let pid = self.child.id().expect("the registry is still running");
        let pid = Pid::from_raw(i32::try_from(pid).expect("pid fits i32"));
        kill(pid, Signal::SIGTERM).expect("send SIGTERM to the registry");
        let status = timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the registry did not exit within {STOP_TIMEOUT:?} of SIGTERM:\n{}",
                    self.output()
                )
            })
            .expect("wait for the registry");
        assert_eq!(
            status.code(),
            Some(0),
            "the registry's exit after SIGTERM: {status}\n{}",
            self.output()
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- registry output ---\n{}", self.output());
        }
    }
}

async fn try_http(method: Method, url: &str, json_body: Option<String>) -> Result<(StatusCode, Bytes), String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::builder()
        .method(method)
        .uri(url)
        .header("accept", "application/json");
    if json_body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let request = request
        .body(Full::new(Bytes::from(json_body.unwrap_or_default())))
        .map_err(|err| err.to_string())?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    };
    timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer from {url} within {HTTP_TIMEOUT:?}"))?
}

async fn http(method: Method, url: &str, json_body: Option<String>) -> (StatusCode, Bytes) {
    let description = format!("{method} {url}");
    try_http(method, url, json_body)
        .await
        .unwrap_or_else(|err| panic!("{description}: {err}"))
}

fn find<'a>(apps: &'a AppsView, app: &str, id: &str) -> Option<&'a Instance> {
    apps.apps
        .iter()
        .filter(|view| view.name == app)
        .flat_map(|view| &view.instances)
        .find(|instance| instance.instance_id == id)
}

/// One client script and how to run it.
struct ClientScript {
    /// The name the script records in A's `compat-client` metadata.
    name: &'static str,
    command: Command,
    /// App A's instance id, as the script registers it.
    app_a_id: &'static str,
    app_a_port: u16,
}

impl ClientScript {
    fn python(interpreter: &str) -> ClientScript {
        let mut command = Command::new(interpreter);
        command.arg(compat_dir().join("eureka_py_client.py"));
        command.env("PYTHONUNBUFFERED", "1");
        ClientScript {
            name: "py-eureka-client",
            command,
            app_a_id: "127.0.0.1:appa:9001",
            app_a_port: 9001,
        }
    }

    fn node(node_modules: &str) -> ClientScript {
        let mut command = Command::new("node");
        command.arg(compat_dir().join("eureka_js_client.js"));
        command.env("NODE_PATH", node_modules);
        ClientScript {
            name: "eureka-js-client",
            command,
            app_a_id: "127.0.0.1:appa:9101",
            app_a_port: 9101,
        }
    }
}

/// The script's stdout, line by line, with every read bounded.
struct Protocol {
    lines: Lines<BufReader<ChildStdout>>,
    seen: Vec<String>,
}

impl Protocol {
    /// The next line, or `None` at end of output; panics after `limit`.
    async fn next(&mut self, limit: Duration) -> Option<String> {
        let line = timeout(limit, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no output from the client within {limit:?}"))
            .expect("read the client's stdout");
        if let Some(line) = &line {
            self.seen.push(line.clone());
        }
        line
    }
}

/// Runs one client against a fresh registry and checks the registry's side.
async fn check_client(mut script: ClientScript) {
    let registry = Registry::start().await;
    registry.register_app_b().await;
    let before = registry.apps().await;
    assert!(
        find(&before, APP_A, script.app_a_id).is_none(),
        "{APP_A} is registered before the client ran"
    );

    let mut child = script
        .command
        .arg(&registry.base)
        .args(["--handshake", "--port", &script.app_a_port.to_string()])
        .args(["--app-b", APP_B, "--app-b-id", APP_B_ID])
        .args(["--app-b-host", "127.0.0.1"])
        .args(["--app-b-port", &APP_B_PORT.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|err| panic!("spawn the {} script: {err}", script.name));
    let mut stdin = child.stdin.take().expect("the script's stdin");
    let mut stderr = child.stderr.take().expect("the script's stderr");
    let stderr_task = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut protocol = Protocol {
        lines: BufReader::new(child.stdout.take().expect("the script's stdout")).lines(),
        seen: Vec::new(),
    };

    // While the script waits at its handshake, A must be in the registry as it sent it.
    let registered = protocol.next(SCRIPT_TIMEOUT).await;
    let while_registered = if registered.as_deref() == Some(format!("REGISTERED {APP_A} {}", script.app_a_id).as_str())
    {
        Some(registry.apps().await)
    } else {
        None
    };
    let _ = stdin.write_all(b"go\n").await;
    drop(stdin);

    let finished = timeout(SCRIPT_TIMEOUT, async {
        while protocol.next(SCRIPT_TIMEOUT).await.is_some() {}
        child.wait().await.expect("wait for the script")
    })
    .await;
    let status = match finished {
        Ok(status) => status,
        Err(_) => {
            let _ = child.kill().await;
            panic!("the {} script ran longer than {SCRIPT_TIMEOUT:?}", script.name)
        }
    };
    let script_stderr = timeout(HTTP_TIMEOUT, stderr_task)
        .await
        .map(|joined| joined.unwrap_or_default())
        .unwrap_or_default();
    let transcript = format!(
        "{} script: {status}\n--- stdout ---\n{}\n--- stderr ---\n{script_stderr}",
        script.name,
        protocol.seen.join("\n")
    );

    let while_registered =
        while_registered.unwrap_or_else(|| panic!("the script did not report its registration first\n{transcript}"));
    let a = find(&while_registered, APP_A, script.app_a_id).unwrap_or_else(|| {
        panic!("{APP_A} was not in /v1/apps while the script ran: {while_registered:?}\n{transcript}")
    });
    assert_eq!(a.status, Status::Up, "{a:?}\n{transcript}");
    assert_eq!(
        (a.host_name.as_str(), a.ip_addr.as_str(), a.port.number),
        ("127.0.0.1", "127.0.0.1", script.app_a_port),
        "{a:?}\n{transcript}"
    );
    assert_eq!(
        a.metadata.get("compat-client").map(String::as_str),
        Some(script.name),
        "{APP_A}'s metadata: {:?}\n{transcript}",
        a.metadata
    );
    assert!(status.success(), "{transcript}");
    assert_eq!(
        protocol.seen,
        [
            format!("REGISTERED {APP_A} {}", script.app_a_id),
            format!("DEREGISTERED {APP_A} {}", script.app_a_id),
            "OK".to_owned(),
        ],
        "{transcript}"
    );

    let after = registry.apps().await;
    assert!(
        find(&after, APP_A, script.app_a_id).is_none(),
        "{APP_A} is still registered after the client stopped: {after:?}\n{transcript}"
    );
    let b = find(&after, APP_B, APP_B_ID).unwrap_or_else(|| panic!("{APP_B} is gone after the client ran: {after:?}"));
    assert_eq!(
        (b.status, b.host_name.as_str(), b.port.number),
        (Status::Up, "127.0.0.1", APP_B_PORT),
        "{b:?}"
    );
    assert_eq!(
        b.metadata,
        BTreeMap::from([("role".to_owned(), "app-b".to_owned())]),
        "{b:?}"
    );
    registry.stop().await;
}

#[tokio::test]
async fn py_eureka_client_registers_discovers_renews_and_deregisters() {
    let Some(python) = required_env("RTALPHA_TEST_PYTHON") else {
        return;
    };
    check_client(ClientScript::python(&python)).await;
}

#[tokio::test]
async fn eureka_js_client_registers_discovers_renews_and_deregisters() {
    let Some(node_modules) = required_env("RTALPHA_TEST_NODE_MODULES") else {
        return;
    };
    check_client(ClientScript::node(&node_modules)).await;
}
