//! Where configuration comes from: a plain directory ("native") or a git repository,
//! read into an in-memory [`Tree`] of files at a label.
//!
//! A git repository is cloned once (bare) into `basedir` and then only fetched; trees
//! are read from the local object database. Fetching is the only step that touches the
//! network, and it never runs on the request path.
//!
//! How the remote is reached is [`RemoteAccess`]: credentials for `https://`, the
//! certificates to trust instead of the system's (gix's reqwest transport ignores
//! `http.sslCAInfo`, so they go to the HTTP client directly), and for `ssh://` the key and
//! known hosts handed to the system's `ssh` through `core.sshCommand`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use gix::protocol::transport::client::blocking_io::http as gix_http;

/// Branches land under `refs/remotes/origin/`, tags under `refs/tags/`, both forced:
/// the clone mirrors the remote, including rewritten history.
const REFSPECS: [&str; 2] = ["+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"];

/// The most a single file may weigh to be served.
const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;

/// Files at one label: path (with `/`) to contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    /// The commit id, for git.
    pub version: Option<String>,
    /// The label the tree was read at.
    pub label: String,
    /// Every file, by path relative to the repository's root.
    pub files: BTreeMap<String, Arc<Vec<u8>>>,
}

/// A repository that cannot be read or fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepoError {
    /// The label names no branch, tag or commit.
    #[error("no label `{0}` in the repository")]
    UnknownLabel(String),
    /// The remote could not be reached or read.
    #[error("{0}")]
    Unavailable(String),
}

/// The whole chain of causes, for `/health` and logs: gix's top error alone ("Transport
/// handshake failed") rarely says what to fix.
fn unavailable(context: &str, err: impl std::fmt::Debug) -> RepoError {
    RepoError::Unavailable(format!("{context}: {err:?}").replace("\n\n", " ").replace('\n', " "))
}

/// A plain directory of configuration files.
#[derive(Debug, Clone)]
pub struct NativeRepo {
    /// The directory.
    pub dir: PathBuf,
}

impl NativeRepo {
    /// Reads every file below the directory (symbolic links that leave it are skipped).
    pub fn tree(&self, label: &str) -> Result<Tree, RepoError> {
        let root = self
            .dir
            .canonicalize()
            .map_err(|err| unavailable(&format!("cannot open {}", self.dir.display()), err))?;
        let mut files = BTreeMap::new();
        walk(&root, &root, &mut files).map_err(|err| unavailable("reading the directory", err))?;
        Ok(Tree {
            version: None,
            label: label.to_owned(),
            files,
        })
    }
}

fn walk(root: &Path, dir: &Path, files: &mut BTreeMap<String, Arc<Vec<u8>>>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        // Resolve links, and keep only what stays inside the root.
        let Ok(path) = entry.path().canonicalize() else {
            continue;
        };
        if !path.starts_with(root) {
            continue;
        }
        let meta = std::fs::metadata(&path)?;
        if meta.is_dir() {
            walk(root, &path, files)?;
        } else if meta.is_file() && (meta.len() as usize) <= MAX_FILE_BYTES {
            let relative = entry
                .path()
                .strip_prefix(root)
                .map(|p| p.to_string_lossy().replace('\\', "/"))
                .unwrap_or_default();
            files.insert(relative, Arc::new(std::fs::read(&path)?));
        }
    }
    Ok(())
}

/// A git repository, cloned bare into a local directory.
#[derive(Debug, Clone)]
pub struct GitRepo {
    /// The remote: a URL or a local path.
    pub uri: String,
    /// The local clone.
    pub dir: PathBuf,
    /// Fetch only this many commits (`None`: everything).
    pub depth: Option<u32>,
    /// Credentials, trust and ssh options for the remote.
    pub access: RemoteAccess,
}

/// How the remote is reached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteAccess {
    /// HTTP credentials (a token goes in the password).
    pub credentials: Option<Credentials>,
    /// PEM certificates that an `https://` remote's certificate must chain to, instead of
    /// the system's roots (git's `http.sslCAInfo`). Read at every clone and fetch, so a
    /// renewed file is picked up.
    pub ca_file: Option<PathBuf>,
    /// Options for the system's `ssh` on `ssh://` (and `user@host:path`) remotes.
    pub ssh: SshOptions,
}

/// What the system's `ssh` is told, in the spirit of Spring Cloud Config's ssh keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshOptions {
    /// The private key to authenticate with (and only it); unset, ssh's own choice.
    pub private_key_file: Option<PathBuf>,
    /// The known hosts to check the server's key against; unset, ssh's own files.
    pub known_hosts_file: Option<PathBuf>,
    /// Refuse a server whose key is not known (`true`), or accept any key (`false`).
    pub strict_host_key_checking: bool,
    /// How long ssh may take to connect.
    pub connect_timeout: Duration,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            private_key_file: None,
            known_hosts_file: None,
            strict_host_key_checking: true,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl SshOptions {
    /// The command gix runs for ssh remotes (through `sh`, as git runs `core.sshCommand`;
    /// `"$@"` is the port, the host and the remote command gix adds). Batch mode: a server
    /// process has no one to answer a prompt, so a missing key or an unknown host fails at
    /// once instead of hanging. ssh's messages go to `stderr` when given: gix turns only a
    /// few of them into its error and prints the rest, so "Host key verification failed"
    /// would otherwise reach neither `/health` nor the logs.
    pub fn command(&self, stderr: Option<&Path>) -> String {
        let mut command = vec![
            "ssh".to_owned(),
            "-o".to_owned(),
            "BatchMode=yes".to_owned(),
            "-o".to_owned(),
            format!("ConnectTimeout={}", self.connect_timeout.as_secs().max(1)),
        ];
        if let Some(key) = &self.private_key_file {
            command.extend(["-o".to_owned(), "IdentitiesOnly=yes".to_owned(), "-i".to_owned()]);
            command.push(shell_quote(&key.display().to_string()));
        }
        let known_hosts = match (&self.known_hosts_file, self.strict_host_key_checking) {
            (Some(file), _) => Some(shell_quote(&file.display().to_string())),
            // Accepting any key must not write to the user's own known hosts either.
            (None, false) => Some("/dev/null".to_owned()),
            (None, true) => None,
        };
        if let Some(known_hosts) = known_hosts {
            command.extend(["-o".to_owned(), format!("UserKnownHostsFile={known_hosts}")]);
        }
        let strict = if self.strict_host_key_checking { "yes" } else { "no" };
        command.extend(["-o".to_owned(), format!("StrictHostKeyChecking={strict}")]);
        if let Some(stderr) = stderr {
            command.push("\"$@\"".to_owned());
            command.push(format!("2>{}", shell_quote(&stderr.display().to_string())));
        }
        command.join(" ")
    }

    /// Configuration overrides that make gix run [`Self::command`] as OpenSSH.
    fn config_overrides(&self, stderr: &Path) -> [String; 2] {
        [
            format!("core.sshCommand={}", self.command(Some(stderr))),
            "ssh.variant=ssh".to_owned(),
        ]
    }
}

/// Quotes a word for `sh`: single quotes, with embedded ones closed, escaped and reopened.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// A user name and password (or token) for an `http(s)://` remote.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A credential helper answering every request with the configured credentials.
fn helper(
    credentials: Credentials,
) -> impl FnMut(gix::credentials::helper::Action) -> gix::Result<Option<gix::credentials::protocol::Outcome>> + Clone {
    move |action| match action {
        gix::credentials::helper::Action::Get(context) => Ok(Some(gix::credentials::protocol::Outcome {
            credentials: gix::sec::identity::Credentials::UsernamePassword {
                username: credentials.username.clone(),
                password: credentials.password.clone(),
                oauth_refresh_token: None,
            },
            next: context.into(),
        })),
        _ => Ok(None),
    }
}

/// The certificates of a CA file, for reqwest.
pub(crate) fn read_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, RepoError> {
    let pem =
        std::fs::read(path).map_err(|err| unavailable(&format!("reading the CA file {}", path.display()), err))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|err| unavailable(&format!("reading the CA file {}", path.display()), err))?;
    if certificates.is_empty() {
        return Err(RepoError::Unavailable(format!(
            "the CA file {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certificates)
}

/// HTTP transport options that trust exactly `certificates`: gix's own options for the
/// URL (proxy, user agent, … from git configuration), with a reqwest client configured to
/// know no other roots. Verification stays on.
fn trusting(
    repo: &gix::Repository,
    url: &str,
    certificates: Vec<reqwest::Certificate>,
) -> Result<Box<dyn std::any::Any>, RepoError> {
    let mut options = repo
        .transport_options(url, None)
        .map_err(|err| unavailable("reading the HTTP transport options", err))?
        .and_then(|options| options.downcast::<gix_http::Options>().ok())
        .map_or_else(gix_http::Options::default, |options| *options);
    let backend = gix_http::reqwest::Options {
        configure_client: Some(Box::new(
            move |builder| Ok(builder.tls_certs_only(certificates.clone())),
        )),
        configure_request: None,
    };
    options.backend = Some(Arc::new(std::sync::Mutex::new(backend)));
    Ok(Box::new(options))
}

impl GitRepo {
    fn url(&self) -> String {
        let looks_like_url = self.uri.contains("://") || self.uri.starts_with("git@");
        if looks_like_url {
            self.uri.clone()
        } else {
            // A local path: absolute, as a file URL.
            let path = Path::new(&self.uri);
            let absolute = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
            format!("file://{}", absolute.display())
        }
    }

    /// Whether a local clone exists.
    pub fn has_clone(&self) -> bool {
        gix::open(&self.dir).is_ok()
    }

    /// How the clone is opened: fully trusted (it is ours), with the installation's git
    /// configuration as `gix::prepare_clone_bare` reads it, and the ssh command on top.
    fn open_options(&self) -> gix::open::Options {
        let mut options = gix::open::Options::default_for_level(gix::sec::Trust::Full);
        options.permissions.config.git_binary = true;
        options.config_overrides(self.access.ssh.config_overrides(&self.ssh_stderr()))
    }

    /// Where ssh's messages of the last clone or fetch go: beside the clone, not in it.
    fn ssh_stderr(&self) -> PathBuf {
        let mut name = self.dir.file_name().unwrap_or_default().to_owned();
        name.push(".ssh-stderr");
        self.dir.with_file_name(name)
    }

    /// A failure over ssh, with what ssh said (its last lines) appended.
    fn with_ssh_messages(&self, err: RepoError) -> RepoError {
        let RepoError::Unavailable(problem) = err else {
            return err;
        };
        let url = self.url();
        let is_ssh =
            gix::url::parse(gix::bstr::BStr::new(url.as_bytes())).is_ok_and(|url| url.scheme == gix::url::Scheme::Ssh);
        let said = std::fs::read_to_string(self.ssh_stderr()).unwrap_or_default();
        let lines: Vec<&str> = said.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
        if !is_ssh || lines.is_empty() {
            return RepoError::Unavailable(problem);
        }
        let tail = lines[lines.len().saturating_sub(3)..].join(" ");
        let tail: String = tail.chars().take(500).collect();
        RepoError::Unavailable(format!("{problem}; ssh said: {tail}"))
    }

    /// The certificates to trust, when a CA file is configured for an `https://` remote.
    fn certificates(&self) -> Result<Option<Vec<reqwest::Certificate>>, RepoError> {
        match &self.access.ca_file {
            Some(path) if self.uri.starts_with("https://") => read_certificates(path).map(Some),
            _ => Ok(None),
        }
    }

    /// Clones if there is no local clone yet, fetches otherwise. Blocking: run it off
    /// the async runtime. `interrupt` stops it early.
    pub fn sync(&self, interrupt: &AtomicBool) -> Result<(), RepoError> {
        // Only this attempt's messages may explain this attempt's failure.
        let _ = std::fs::remove_file(self.ssh_stderr());
        self.clone_or_fetch(interrupt)
            .map_err(|err| self.with_ssh_messages(err))
    }

    fn clone_or_fetch(&self, interrupt: &AtomicBool) -> Result<(), RepoError> {
        if self.has_clone() {
            return self.fetch(interrupt);
        }
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).map_err(|err| unavailable("clearing a broken clone", err))?;
        }
        std::fs::create_dir_all(&self.dir).map_err(|err| unavailable("creating the clone directory", err))?;
        let certificates = self.certificates()?;
        let url = self.url();
        let mut prepare = gix::clone::PrepareFetch::new(
            url.as_str(),
            &self.dir,
            gix::create::Kind::Bare,
            gix::create::Options::default(),
            self.open_options(),
        )
        .map_err(|err| unavailable("cloning", err))?;
        if let Some(depth) = self.depth.and_then(std::num::NonZeroU32::new) {
            prepare = prepare.with_shallow(gix::remote::fetch::Shallow::DepthAtRemote(depth));
        }
        prepare = prepare.configure_remote(|remote| remote.with_refspecs(REFSPECS, gix::remote::Direction::Fetch));
        let credentials = self.access.credentials.clone();
        if credentials.is_some() || certificates.is_some() {
            prepare = prepare.configure_connection(move |connection| {
                if let Some(credentials) = credentials.clone() {
                    connection.set_credentials(helper(credentials));
                }
                if let Some(certificates) = certificates.clone() {
                    let options = trusting(connection.remote().repo(), &url, certificates)
                        .map_err(|err| gix::Error::from_error(err))?;
                    connection.set_transport_options(options);
                }
                Ok(())
            });
        }
        prepare
            .fetch_only(gix::progress::Discard, interrupt)
            .map_err(|err| unavailable(&format!("cloning {}", self.uri), err))?;
        Ok(())
    }

    fn fetch(&self, interrupt: &AtomicBool) -> Result<(), RepoError> {
        let certificates = self.certificates()?;
        let repo =
            gix::open_opts(&self.dir, self.open_options()).map_err(|err| unavailable("opening the clone", err))?;
        let remote = repo
            .find_default_remote(gix::remote::Direction::Fetch)
            .ok_or_else(|| RepoError::Unavailable("the clone has no remote".to_owned()))?
            .map_err(|err| unavailable("reading the remote", err))?
            .with_refspecs(REFSPECS, gix::remote::Direction::Fetch)
            .map_err(|err| unavailable("configuring the remote", err))?;
        let mut connection = remote
            .connect(gix::remote::Direction::Fetch)
            .map_err(|err| unavailable(&format!("connecting to {}", self.uri), err))?;
        if let Some(credentials) = self.access.credentials.clone() {
            connection.set_credentials(helper(credentials));
        }
        if let Some(certificates) = certificates {
            connection.set_transport_options(trusting(&repo, &self.url(), certificates)?);
        }
        let mut prepare = connection
            .prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(|err| unavailable(&format!("fetching from {}", self.uri), err))?;
        if let Some(depth) = self.depth.and_then(std::num::NonZeroU32::new) {
            prepare = prepare.with_shallow(gix::remote::fetch::Shallow::DepthAtRemote(depth));
        }
        prepare
            .receive(gix::progress::Discard, interrupt)
            .map_err(|err| unavailable(&format!("fetching from {}", self.uri), err))?;
        Ok(())
    }

    /// The commit a label names, from the local clone.
    pub fn resolve(&self, label: &str) -> Result<String, RepoError> {
        let repo = gix::open(&self.dir).map_err(|err| unavailable("opening the clone", err))?;
        resolve(&repo, label).map(|id| id.to_string())
    }

    /// The files at a label, from the local clone.
    pub fn tree(&self, label: &str) -> Result<Tree, RepoError> {
        let repo = gix::open(&self.dir).map_err(|err| unavailable("opening the clone", err))?;
        let id = resolve(&repo, label)?;
        let commit = repo
            .find_commit(id)
            .map_err(|_| RepoError::UnknownLabel(label.to_owned()))?;
        let tree = commit.tree().map_err(|err| unavailable("reading the commit", err))?;
        let mut recorder = gix::traverse::tree::Recorder::default();
        tree.traverse()
            .breadthfirst(&mut recorder)
            .map_err(|err| unavailable("reading the tree", err))?;
        let mut files = BTreeMap::new();
        for entry in recorder.records {
            if !entry.mode.is_blob() {
                continue;
            }
            let object = repo
                .find_object(entry.oid)
                .map_err(|err| unavailable("reading a file", err))?;
            if object.data.len() <= MAX_FILE_BYTES {
                files.insert(entry.filepath.to_string(), Arc::new(object.data.clone()));
            }
        }
        Ok(Tree {
            version: Some(id.to_string()),
            label: label.to_owned(),
            files,
        })
    }
}

fn resolve(repo: &gix::Repository, label: &str) -> Result<gix::ObjectId, RepoError> {
    let candidates = [
        format!("refs/remotes/origin/{label}"),
        format!("refs/heads/{label}"),
        format!("refs/tags/{label}"),
    ];
    for name in &candidates {
        if let Ok(Some(mut reference)) = repo.try_find_reference(name.as_str())
            && let Ok(id) = reference.peel_to_id()
        {
            return Ok(id.detach());
        }
    }
    // A commit id, or anything else git's revision syntax accepts.
    repo.rev_parse_single(label)
        .ok()
        .and_then(|id| id.object().ok())
        .and_then(|object| object.peel_to_commit().ok())
        .map(|commit| commit.id)
        .ok_or_else(|| RepoError::UnknownLabel(label.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn git(dir: &Path, args: &[&str]) {
        let status = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
            .status()
            .expect("git runs");
        assert!(status.success(), "git {args:?}");
    }

    #[test]
    fn clones_reads_labels_and_fetches_new_commits() {
        let origin = tempfile::tempdir().unwrap();
        git(origin.path(), &["init", "-q", "-b", "main"]);
        std::fs::write(origin.path().join("application.yml"), "a: 1\n").unwrap();
        std::fs::create_dir(origin.path().join("sub")).unwrap();
        std::fs::write(origin.path().join("sub/foo.yml"), "b: 2\n").unwrap();
        git(origin.path(), &["add", "."]);
        git(origin.path(), &["commit", "-q", "-m", "one"]);
        git(origin.path(), &["tag", "v1"]);
        let clone = tempfile::tempdir().unwrap();
        let repo = GitRepo {
            uri: origin.path().display().to_string(),
            dir: clone.path().join("repo"),
            depth: None,
            access: RemoteAccess::default(),
        };
        let never = AtomicBool::new(false);
        repo.sync(&never).unwrap();
        let tree = repo.tree("main").unwrap();
        assert_eq!(
            tree.files.keys().collect::<Vec<_>>(),
            ["application.yml", "sub/foo.yml"]
        );
        assert_eq!(tree.files["application.yml"].as_slice(), b"a: 1\n");
        let first = tree.version.clone().unwrap();
        assert_eq!(repo.tree("v1").unwrap().version.as_deref(), Some(first.as_str()));
        assert_eq!(repo.tree(&first).unwrap().version.as_deref(), Some(first.as_str()));
        assert_eq!(repo.tree("nope").unwrap_err(), RepoError::UnknownLabel("nope".into()));

        std::fs::write(origin.path().join("application.yml"), "a: 2\n").unwrap();
        git(origin.path(), &["commit", "-q", "-am", "two"]);
        assert_eq!(
            repo.tree("main").unwrap().version.as_deref(),
            Some(first.as_str()),
            "not before a fetch"
        );
        repo.sync(&never).unwrap();
        let tree = repo.tree("main").unwrap();
        assert_ne!(tree.version.as_deref(), Some(first.as_str()));
        assert_eq!(tree.files["application.yml"].as_slice(), b"a: 2\n");
    }

    #[test]
    fn the_ssh_command_names_the_key_and_known_hosts_quoted_for_the_shell() {
        let options = SshOptions {
            private_key_file: Some(PathBuf::from("/keys/it's here/id")),
            known_hosts_file: Some(PathBuf::from("/keys/known_hosts")),
            strict_host_key_checking: true,
            connect_timeout: Duration::from_millis(2500),
        };
        assert_eq!(
            options.command(Some(Path::new("/clones/a.ssh-stderr"))),
            "ssh -o BatchMode=yes -o ConnectTimeout=2 -o IdentitiesOnly=yes -i '/keys/it'\\''s here/id' \
             -o UserKnownHostsFile='/keys/known_hosts' -o StrictHostKeyChecking=yes \"$@\" 2>'/clones/a.ssh-stderr'"
        );
        let lenient = SshOptions {
            strict_host_key_checking: false,
            ..SshOptions::default()
        };
        assert_eq!(
            lenient.command(None),
            "ssh -o BatchMode=yes -o ConnectTimeout=10 -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no",
            "accepting any host key writes to no known hosts file"
        );
        let quoted = Command::new("sh")
            .args(["-c", &format!("printf %s {}", shell_quote("a 'b' $c"))])
            .output()
            .expect("sh runs");
        assert_eq!(String::from_utf8_lossy(&quoted.stdout), "a 'b' $c");
    }

    #[test]
    fn native_trees_skip_links_that_leave_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.yml"), "x: 1").unwrap();
        std::fs::write(outside.path().join("secret"), "no").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("leak")).unwrap();
        let tree = NativeRepo { dir: dir.path().into() }.tree("main").unwrap();
        assert_eq!(tree.files.keys().collect::<Vec<_>>(), ["app.yml"]);
    }
}
