//! The repository as the server sees it: the local clone or directory, one immutable
//! [`Snapshot`] per label at its commit, and what went wrong last.
//!
//! Requests read snapshots only. A label seen for the first time is read from the
//! local clone (never the network); the remote is fetched only by [`Store::refresh`],
//! which runs in the background, with a timeout, and swaps each label's snapshot whole.
//! A commit with a file that is not valid configuration does not replace the snapshot
//! being served: the last good one stays, and the problem is reported.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::environment::Snapshot;
use crate::repo::{GitRepo, NativeRepo, RepoError, Tree};

/// A plain directory or a git repository.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A directory.
    Native(NativeRepo),
    /// A git repository and its local clone.
    Git(GitRepo),
}

#[derive(Debug, Default, Clone)]
struct Status {
    /// The last fetch failed with this.
    remote_error: Option<String>,
    /// Files of newer commits that are not valid configuration, by label.
    invalid: BTreeMap<String, BTreeMap<String, String>>,
}

/// What a refresh changed for one label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelChange {
    /// The label.
    pub label: String,
    /// The commit now served.
    pub version: Option<String>,
    /// Paths added, changed or removed.
    pub paths: BTreeSet<String>,
}

/// The served repository.
#[derive(Debug)]
pub struct Store {
    backend: Backend,
    origin: String,
    search_paths: Vec<String>,
    default_label: String,
    timeout: Duration,
    snapshots: RwLock<HashMap<String, Arc<Snapshot>>>,
    status: RwLock<Status>,
}

impl Store {
    /// A store over a backend; nothing is read yet.
    pub fn new(backend: Backend, search_paths: Vec<String>, default_label: String, timeout: Duration) -> Self {
        let origin = match &backend {
            Backend::Native(native) => format!("file:{}", native.dir.display()),
            Backend::Git(git) => git.uri.clone(),
        };
        Store {
            backend,
            origin,
            search_paths,
            default_label,
            timeout,
            snapshots: RwLock::new(HashMap::new()),
            status: RwLock::new(Status::default()),
        }
    }

    /// The label served when a request names none.
    pub fn default_label(&self) -> &str {
        &self.default_label
    }

    /// Clones or fetches (git), within the timeout. A failure is remembered for
    /// `/health` and the `state` of answers.
    pub async fn sync(&self) -> Result<(), RepoError> {
        let Backend::Git(git) = &self.backend else {
            return Ok(());
        };
        let git = git.clone();
        let interrupt = Arc::new(AtomicBool::new(false));
        let flag = interrupt.clone();
        let work = tokio::task::spawn_blocking(move || git.sync(&flag));
        let outcome = match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(RepoError::Unavailable(format!("the fetch task failed: {join}"))),
            Err(_) => {
                interrupt.store(true, Ordering::Relaxed);
                Err(RepoError::Unavailable(format!(
                    "no answer from the remote within {:?}",
                    self.timeout
                )))
            }
        };
        let mut status = self.status.write().unwrap_or_else(|p| p.into_inner());
        match &outcome {
            Ok(()) => {
                if status.remote_error.take().is_some() {
                    tracing::info!(origin = %self.origin, "the remote answers again");
                }
            }
            Err(err) => {
                tracing::warn!(origin = %self.origin, error = %err, "cannot fetch; serving the local copy");
                status.remote_error = Some(err.to_string());
            }
        }
        outcome
    }

    /// The directory to watch for changes, when the source is on this machine: a plain
    /// directory, or a git repository given by path or `file://` URL.
    pub fn local_source(&self) -> Option<std::path::PathBuf> {
        match &self.backend {
            Backend::Native(native) => Some(native.dir.clone()),
            Backend::Git(git) => {
                let path = git.uri.strip_prefix("file://").unwrap_or(&git.uri);
                (!git.uri.contains("://") || git.uri.starts_with("file://"))
                    .then(|| std::path::PathBuf::from(path))
                    .filter(|path| path.exists())
            }
        }
    }

    /// Whether there is anything local to serve from.
    pub fn has_local_copy(&self) -> bool {
        match &self.backend {
            Backend::Native(native) => native.dir.is_dir(),
            Backend::Git(git) => git.has_clone(),
        }
    }

    async fn read_tree(&self, label: &str) -> Result<Tree, RepoError> {
        let backend = self.backend.clone();
        let label = label.to_owned();
        tokio::task::spawn_blocking(move || match backend {
            Backend::Native(native) => native.tree(&label),
            Backend::Git(git) => git.tree(&label),
        })
        .await
        .map_err(|err| RepoError::Unavailable(format!("the read task failed: {err}")))?
    }

    /// The snapshot of a label, read from the local copy the first time.
    pub async fn snapshot(&self, label: &str) -> Result<Arc<Snapshot>, RepoError> {
        if let Some(snapshot) = self.snapshots.read().unwrap_or_else(|p| p.into_inner()).get(label) {
            return Ok(snapshot.clone());
        }
        let tree = self.read_tree(label).await?;
        let snapshot = Arc::new(Snapshot::new(tree, self.origin.clone(), self.search_paths.clone()));
        self.report_invalid(label, &snapshot);
        let mut snapshots = self.snapshots.write().unwrap_or_else(|p| p.into_inner());
        Ok(snapshots.entry(label.to_owned()).or_insert(snapshot).clone())
    }

    fn report_invalid(&self, label: &str, snapshot: &Snapshot) {
        let mut status = self.status.write().unwrap_or_else(|p| p.into_inner());
        if snapshot.invalid.is_empty() {
            status.invalid.remove(label);
        } else {
            for (path, problem) in &snapshot.invalid {
                tracing::warn!(label, path = %path, problem = %problem, "not valid configuration");
            }
            status.invalid.insert(label.to_owned(), snapshot.invalid.clone());
        }
    }

    /// Fetches, then re-reads every label served so far; returns what changed. A new
    /// tree with invalid files does not replace a snapshot already served.
    pub async fn refresh(&self) -> Vec<LabelChange> {
        let _ = self.sync().await;
        let labels: Vec<String> = {
            let snapshots = self.snapshots.read().unwrap_or_else(|p| p.into_inner());
            let mut labels: Vec<String> = snapshots.keys().cloned().collect();
            if !labels.contains(&self.default_label) {
                labels.push(self.default_label.clone());
            }
            labels
        };
        let mut changes = Vec::new();
        for label in labels {
            let Ok(tree) = self.read_tree(&label).await else {
                continue;
            };
            let held = self
                .snapshots
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&label)
                .cloned();
            if held.as_ref().is_some_and(|held| held.tree == tree) {
                continue;
            }
            let fresh = Arc::new(Snapshot::new(tree, self.origin.clone(), self.search_paths.clone()));
            self.report_invalid(&label, &fresh);
            if held.is_some() && !fresh.invalid.is_empty() {
                continue;
            }
            let paths = match &held {
                Some(held) => changed_paths(&held.tree, &fresh.tree),
                None => fresh.tree.files.keys().cloned().collect(),
            };
            changes.push(LabelChange {
                label: label.clone(),
                version: fresh.tree.version.clone(),
                paths,
            });
            self.snapshots
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(label, fresh);
        }
        changes
    }

    /// What answers should say about their freshness, if anything.
    pub fn state(&self, label: &str) -> Option<String> {
        let status = self.status.read().unwrap_or_else(|p| p.into_inner());
        let mut parts = Vec::new();
        if let Some(error) = &status.remote_error {
            parts.push(format!(
                "stale: the remote cannot be fetched ({error}); serving the last good copy"
            ));
        }
        if let Some(invalid) = status.invalid.get(label) {
            let files: Vec<String> = invalid
                .iter()
                .map(|(path, problem)| format!("{path}: {problem}"))
                .collect();
            parts.push(format!("invalid files not served: {}", files.join("; ")));
        }
        (!parts.is_empty()).then(|| parts.join(" | "))
    }

    /// Problems for `/health`: the remote, and invalid files of any label.
    pub fn problems(&self) -> (Option<String>, Vec<String>) {
        let status = self.status.read().unwrap_or_else(|p| p.into_inner());
        let invalid = status
            .invalid
            .iter()
            .flat_map(|(label, files)| {
                files
                    .iter()
                    .map(move |(path, problem)| format!("{label}:{path}: {problem}"))
            })
            .collect();
        (status.remote_error.clone(), invalid)
    }
}

fn changed_paths(old: &Tree, new: &Tree) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for (path, bytes) in &new.files {
        if old.files.get(path) != Some(bytes) {
            paths.insert(path.clone());
        }
    }
    for path in old.files.keys() {
        if !new.files.contains_key(path) {
            paths.insert(path.clone());
        }
    }
    paths
}

/// The bus destinations a changed file touches: `application.*` touches every
/// application (`**`); `user-service-dev.yml` touches `user-service-dev`,
/// `user-service` and `user` (any of them may be the application name).
pub fn destinations(paths: &BTreeSet<String>) -> BTreeSet<String> {
    let mut destinations = BTreeSet::new();
    for path in paths {
        let file = path.rsplit('/').next().unwrap_or(path);
        let stem = file.rsplit_once('.').map_or(file, |(stem, _)| stem);
        if stem == crate::environment::SHARED_NAME || stem.starts_with("application-") {
            destinations.insert("**".to_owned());
            continue;
        }
        let mut name = stem;
        loop {
            destinations.insert(format!("{name}:**"));
            match name.rsplit_once('-') {
                Some((shorter, _)) if !shorter.is_empty() => name = shorter,
                _ => break,
            }
        }
    }
    if destinations.contains("**") {
        return BTreeSet::from(["**".to_owned()]);
    }
    destinations
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_files_map_to_the_applications_they_may_configure() {
        let paths: BTreeSet<String> = ["user-service-dev.yml".to_owned(), "conf/email.properties".to_owned()].into();
        let found: Vec<String> = destinations(&paths).into_iter().collect();
        assert_eq!(found, ["email:**", "user-service-dev:**", "user-service:**", "user:**"]);
        let shared: BTreeSet<String> = ["application-dev.yml".to_owned(), "a.yml".to_owned()].into();
        assert_eq!(destinations(&shared), BTreeSet::from(["**".to_owned()]));
    }
}
