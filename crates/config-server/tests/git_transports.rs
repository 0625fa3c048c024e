//! The config server against real remote git servers on loopback: smart HTTP with Basic
//! authentication (`git http-backend` behind tests/support/git_http.py), over plain http
//! and over TLS with a certificate from a CA made for the test; and ssh through the
//! system's `ssh` to a real `sshd` started for the test.

#[path = "support/harness.rs"]
mod harness;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use harness::{Server, commit, eventually, git, git_config};
use serde_json::Value;

/// The git smart-HTTP server of tests/support/git_http.py; stopped on drop.
struct GitHttpServer {
    child: Child,
    port: u16,
}

impl GitHttpServer {
    /// Serves the repositories under `root` to `user`/`password`, over TLS with `tls`
    /// (certificate chain, key) when given.
    fn start(root: &Path, user: &str, password: &str, tls: Option<(&Path, &Path)>) -> GitHttpServer {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/git_http.py");
        // The compatibility venv's interpreter when set up, any python3 otherwise.
        let python = std::env::var("RTALPHA_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
        let mut command = Command::new(python);
        command.arg(script).arg(root).args([user, password]);
        if let Some((cert, key)) = tls {
            command.arg(cert).arg(key);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the git HTTP server");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufReader::new(stdout).read_line(&mut line).expect("the port");
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("PORT n, not {line:?}"));
        GitHttpServer { child, port }
    }
}

impl Drop for GitHttpServer {
    fn drop(&mut self) {
        // Closing its standard input stops it; kill in case it does not.
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bare-bones repository `name` under `root` with one commit.
fn served_repository(root: &Path, name: &str, files: &[(&str, &str)]) -> (PathBuf, String) {
    let dir = root.join(name);
    std::fs::create_dir(&dir).expect("dir");
    git(&dir, &["init", "-q", "-b", "main"]);
    let version = commit(&dir, files, "initial");
    (dir, version)
}

fn repository_detail(health: &Value) -> String {
    health["checks"]["repository"]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Everything this test binary logs through `tracing`, from every thread (the fetches run
/// on blocking threads), so a test can look for what must never be logged.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        logs
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs_text(logs: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&logs.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

/// Runs the openssl command line in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command line runs");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA made for one test, and a certificate for 127.0.0.1 that it signed.
struct TestCa {
    dir: tempfile::TempDir,
}

impl TestCa {
    fn new() -> TestCa {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path();
        std::fs::write(
            path.join("ca.cnf"),
            "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = ca\n[dn]\nCN = rtalpha test CA\n\
             [ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n\
             subjectKeyIdentifier = hash\n",
        )
        .expect("ca.cnf");
        std::fs::write(
            path.join("server.cnf"),
            "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = 127.0.0.1\n\
             [leaf]\nbasicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n\
             extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1\nauthorityKeyIdentifier = keyid\n",
        )
        .expect("server.cnf");
        let key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        let run = |command: String| openssl(path, &command.split_whitespace().collect::<Vec<_>>());
        run(format!(
            "req -x509 {key} -keyout ca.key -out ca.pem -days 2 -config ca.cnf"
        ));
        run(format!(
            "req -new {key} -keyout server.key -out server.csr -config server.cnf"
        ));
        run(
            "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -set_serial 2 -days 2 -out server.pem \
             -extfile server.cnf -extensions leaf"
                .to_owned(),
        );
        TestCa { dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn certificate(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}

#[tokio::test]
async fn credentials_are_never_sent_in_clear_text_over_http() {
    let root = tempfile::tempdir().expect("root");
    served_repository(root.path(), "config", &[("foo.yml", "over: http\n")]);
    let remote = GitHttpServer::start(root.path(), "cfg", "s3cret-token", None);
    let uri = format!("http://127.0.0.1:{}/config", remote.port);

    // gix will not send credentials in clear text: over http:// they are refused before
    // anything is sent, and the server says so in /health.
    let basedir = tempfile::tempdir().expect("basedir");
    let mut config = git_config(&uri, &basedir.path().join("with"));
    config.config_server.git.username = Some("cfg".to_owned());
    config.config_server.git.password = Some("s3cret-token".to_owned());
    let server = Server::start(config).await;
    let (status, body) = server.get("/foo/default").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        !body.contains("/tmp") && !body.contains("s3cret"),
        "no internals in answers: {body}"
    );
    let health = server.health().await;
    assert!(repository_detail(&health).contains("clear text"), "{health}");
    server.stop().await;

    // Without credentials the server is refused by the remote itself (401).
    let anonymous = Server::start(git_config(&uri, &basedir.path().join("anonymous"))).await;
    assert_eq!(anonymous.get("/foo/default").await.0, 503);
    anonymous.stop().await;
}

#[tokio::test]
async fn clones_over_https_trusting_a_private_ca_and_follows_new_commits() {
    let logs = captured_logs();
    let root = tempfile::tempdir().expect("root");
    let (repo_dir, first) = served_repository(root.path(), "config", &[("foo.yml", "over: https\n")]);
    let ca = TestCa::new();
    let remote = GitHttpServer::start(root.path(), "cfg", "s3cret-token", Some((&ca.certificate(), &ca.key())));
    let uri = format!("https://127.0.0.1:{}/config", remote.port);
    let basedir = tempfile::tempdir().expect("basedir");
    let clone = basedir.path().join("clone");
    let configure = |clone: &Path, password: &str, ca_file: Option<PathBuf>| {
        let mut config = git_config(&uri, clone);
        config.config_server.git.username = Some("cfg".to_owned());
        config.config_server.git.password = Some(password.to_owned());
        config.config_server.git.ca_file = ca_file;
        config
    };

    // Right credentials and the CA: cloned, served, and a pattern repository on the same
    // host inherits the CA.
    let mut config = configure(&clone, "s3cret-token", Some(ca.ca()));
    config.config_server.git.repos = vec![rtalpha_config_server::config::PatternRepo {
        name: "bar".into(),
        pattern: vec!["bar".into()],
        uri: uri.clone(),
        username: Some("cfg".into()),
        password: Some("s3cret-token".into()),
        ..Default::default()
    }];
    let server = Server::start(config).await;
    let environment = server.json("/foo/default").await;
    assert_eq!(environment["version"], first.as_str(), "{environment}");
    assert_eq!(environment["propertySources"][0]["source"]["over"], "https");
    assert_eq!(server.json("/bar/default").await["version"], first.as_str());
    let health = server.health().await;
    assert_eq!(health["status"], "UP", "{health}");

    // A new commit is fetched over https by the background refresh.
    let second = commit(&repo_dir, &[("foo.yml", "over: https, again\n")], "second");
    assert!(
        eventually(
            Duration::from_secs(10),
            async || server.json("/foo/default").await["version"] == second.as_str()
        )
        .await,
        "the new commit is served after a refresh"
    );
    server.stop().await;

    // Without the CA the certificate is not trusted: verification is on by default.
    let untrusted = Server::start(configure(&basedir.path().join("untrusted"), "s3cret-token", None)).await;
    assert_eq!(untrusted.get("/foo/default").await.0, 503);
    let detail = repository_detail(&untrusted.health().await);
    eprintln!("no CA: {detail}");
    assert!(detail.to_lowercase().contains("certificate"), "{detail}");
    untrusted.stop().await;

    // Wrong credentials on restart: the clone is still served, and the answer's `state`
    // and /health say why the remote cannot be fetched, without any secret.
    let wrong = Server::start(configure(&clone, "not-the-token-42", Some(ca.ca()))).await;
    let environment = wrong.json("/foo/default").await;
    assert_eq!(environment["version"], second.as_str());
    let state = environment["state"].as_str().unwrap_or_default().to_owned();
    assert!(state.starts_with("stale"), "{state}");
    let health = wrong.health().await;
    assert_eq!(health["status"], "DEGRADED", "{health}");
    let detail = repository_detail(&health);
    eprintln!("wrong credentials: {detail}");
    assert!(
        detail.contains("were not accepted") && detail.contains("401"),
        "{detail}"
    );
    for text in [&state, &detail, &health.to_string()] {
        assert!(
            !text.contains("not-the-token-42") && !text.contains("s3cret-token"),
            "{text}"
        );
    }
    wrong.stop().await;

    let logged = logs_text(&logs);
    assert!(logged.contains("cannot fetch"), "the failures were logged");
    for secret in ["not-the-token-42", "s3cret-token"] {
        assert!(!logged.contains(secret), "a secret in the logs");
    }
    drop(remote);
}

/// The absolute path of a program (sshd must be started by absolute path to re-execute
/// itself), from `PATH` or the system directories that are often missing from it.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn ssh_keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "rtalpha-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success(), "ssh-keygen");
}

/// A real `sshd` on a loopback port that lets the current user in with a key made for
/// the test; stopped on drop.
struct Sshd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    user: String,
}

impl Sshd {
    /// `None` (the test is skipped) when sshd is not installed, unless `CI=true`.
    async fn start() -> Option<Sshd> {
        let Some(sshd) = find_program("sshd") else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("sshd is not installed but CI=true (.ci/run installs openssh-server)");
            }
            println!("skipped: sshd is not installed (apt-get install openssh-server)");
            return None;
        };
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path();
        ssh_keygen(&path.join("host_key"));
        ssh_keygen(&path.join("client_key"));
        std::fs::copy(path.join("client_key.pub"), path.join("authorized_keys")).expect("authorized_keys");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        std::fs::write(
            path.join("sshd_config"),
            format!(
                "ListenAddress 127.0.0.1\nPort {port}\nHostKey {dir}/host_key\nAuthorizedKeysFile {dir}/authorized_keys\n\
                 StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nAcceptEnv GIT_PROTOCOL\n\
                 PidFile none\nLogLevel VERBOSE\n",
                dir = path.display()
            ),
        )
        .expect("sshd_config");
        // As root, sshd insists on its privilege separation directory, which only the
        // service's start-up script creates; as anyone else this fails and is not needed.
        let _ = std::fs::create_dir_all("/run/sshd");
        let child = Command::new(&sshd)
            .arg("-D")
            .arg("-f")
            .arg(path.join("sshd_config"))
            .arg("-E")
            .arg(path.join("sshd.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sshd starts");
        let user = Command::new("id").arg("-un").output().expect("id runs");
        let sshd = Sshd {
            child,
            port,
            dir,
            user: String::from_utf8_lossy(&user.stdout).trim().to_owned(),
        };
        let listening = eventually(Duration::from_secs(5), async || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        assert!(listening, "sshd listens: {}", sshd.log());
        Some(sshd)
    }

    fn url(&self, repository: &Path) -> String {
        format!("ssh://{}@127.0.0.1:{}{}", self.user, self.port, repository.display())
    }

    fn client_key(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    /// A known hosts file that knows this server's host key.
    fn known_hosts(&self) -> PathBuf {
        let public = std::fs::read_to_string(self.dir.path().join("host_key.pub")).expect("host key");
        let key: Vec<&str> = public.split_whitespace().take(2).collect();
        let path = self.dir.path().join("known_hosts");
        std::fs::write(&path, format!("[127.0.0.1]:{} {}\n", self.port, key.join(" "))).expect("known_hosts");
        path
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn clones_over_ssh_with_a_key_and_refuses_an_unknown_host_key() {
    let Some(sshd) = Sshd::start().await else { return };
    let root = tempfile::tempdir().expect("root");
    let (repo_dir, first) = served_repository(root.path(), "config.git", &[("foo.yml", "over: ssh\n")]);
    let uri = sshd.url(&repo_dir);
    let basedir = tempfile::tempdir().expect("basedir");
    let configure = |clone: &str, known_hosts: PathBuf, strict: bool| {
        let mut config = git_config(&uri, &basedir.path().join(clone));
        config.config_server.git.private_key_file = Some(sshd.client_key());
        config.config_server.git.known_hosts_file = Some(known_hosts);
        config.config_server.git.strict_host_key_checking = strict;
        config
    };

    // The key and the server's host key: cloned through the system's ssh, and followed.
    let server = Server::start(configure("clone", sshd.known_hosts(), true)).await;
    let (status, body) = server.get("/foo/default").await;
    assert_eq!(
        status,
        200,
        "{body}\nhealth: {}\nsshd: {}",
        server.health().await,
        sshd.log()
    );
    let environment: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(environment["version"], first.as_str());
    assert_eq!(environment["propertySources"][0]["source"]["over"], "ssh");
    let second = commit(&repo_dir, &[("foo.yml", "over: ssh, again\n")], "second");
    assert!(
        eventually(
            Duration::from_secs(10),
            async || server.json("/foo/default").await["version"] == second.as_str()
        )
        .await,
        "the new commit is fetched over ssh"
    );
    server.stop().await;

    // A host key that is not known, with strict checking: refused, and /health says so.
    let unknown = basedir.path().join("empty_known_hosts");
    std::fs::write(&unknown, "").expect("empty known hosts");
    let logins = sshd.log().matches("Accepted publickey").count();
    assert!(logins >= 1, "the first server logged in: {}", sshd.log());
    let refused = Server::start(configure("refused", unknown.clone(), true)).await;
    assert_eq!(refused.get("/foo/default").await.0, 503);
    let health = refused.health().await;
    assert_eq!(health["status"], "DOWN", "{health}");
    let detail = repository_detail(&health);
    eprintln!("unknown host key: {detail}");
    assert!(detail.contains("Host key verification failed"), "{detail}");
    refused.stop().await;
    assert_eq!(
        sshd.log().matches("Accepted publickey").count(),
        logins,
        "the refusing client never offered its key"
    );

    // The same unknown host with strict checking off is accepted.
    let lenient = Server::start(configure("lenient", unknown, false)).await;
    assert_eq!(lenient.json("/foo/default").await["version"], second.as_str());
    lenient.stop().await;
}
