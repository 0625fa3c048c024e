//! Compatibility of the config server with the real Python Spring Cloud Config client
//! (`config-client` from PyPI), and of our `{cipher}` values with Spring's format made
//! by a standard crypto library (`cryptography`), driven by
//! `compat/spring_config_client.py` against a real `rtalpha config-server` process.
//!
//! `compat/setup.sh` installs both; the test finds them through `RTALPHA_TEST_PYTHON`.
//! Unset, the test says it is skipped; with `CI=true` it fails.

#[path = "support/node.rs"]
mod node;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use node::{BINARY, eventually, free_port, http};

const KEY: &str = "interop-key";

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../compat/spring_config_client.py")
}

fn python() -> Option<String> {
    match std::env::var("RTALPHA_TEST_PYTHON") {
        Ok(path) if !path.is_empty() => Some(path),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("RTALPHA_TEST_PYTHON is unset but CI=true: run compat/setup.sh and set it")
        }
        _ => {
            println!("skipped: RTALPHA_TEST_PYTHON is unset");
            None
        }
    }
}

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .status()
        .expect("git");
    assert!(status.success(), "git {args:?}");
}

#[test]
fn the_python_config_client_reads_our_server_and_our_ciphers_match_springs() {
    let Some(python) = python() else { return };
    // A value encrypted by Python in Spring's format goes into the repository.
    let encrypted = Command::new(&python)
        .arg(script())
        .args(["encrypt", KEY, "made-in-python"])
        .output()
        .expect("run the script");
    assert!(
        encrypted.status.success(),
        "{}",
        String::from_utf8_lossy(&encrypted.stderr)
    );
    let cipher = String::from_utf8_lossy(&encrypted.stdout).trim().to_owned();

    let repo = tempfile::tempdir().expect("repo");
    git(repo.path(), &["init", "-q", "-b", "main"]);
    let files = [
        (
            "application.yml",
            format!("greeting: hello\nserver:\n  port: 9000\nsecret: '{{cipher}}{cipher}'\n"),
        ),
        (
            "foo-dev.yml",
            "greeting: hello from foo-dev\nlist:\n  - a\n  - b\n".to_owned(),
        ),
        ("nginx.conf", "listen ${server.port};\n".to_owned()),
    ];
    for (path, text) in &files {
        std::fs::write(repo.path().join(path), text).expect("write");
    }
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "config"]);

    let port = free_port();
    let basedir = tempfile::tempdir().expect("basedir");
    let mut server = Command::new(BINARY)
        .args(["config-server", "--bind", &format!("127.0.0.1:{port}"), "--git-uri"])
        .arg(repo.path())
        .env("ENCRYPT_KEY", KEY)
        .env("RTALPHA_CONFIG_SERVER__GIT__BASEDIR", basedir.path().join("clone"))
        .stdout(Stdio::null())
        .spawn()
        .expect("start the config server");
    let up = eventually(Duration::from_secs(20), || {
        matches!(http("GET", port, "/ready", None), Some((200, _)))
    });
    assert!(up, "the config server is ready");

    let output = Command::new(&python)
        .arg(script())
        .args(["check", &format!("http://127.0.0.1:{port}"), KEY])
        .output()
        .expect("run the client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    assert_eq!(
        stdout.matches("\nok ").count() + usize::from(stdout.starts_with("ok ")),
        7,
        "{stdout}"
    );

    let pid = nix::unistd::Pid::from_raw(i32::try_from(server.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = server.wait().expect("exit");
    assert_eq!(status.code(), Some(0), "graceful shutdown exits 0");
}
