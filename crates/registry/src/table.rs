//! The lease table: every registered instance, its lease, and the version index.
//!
//! All writes take the table's write lock, bump the version index once, record the
//! change in a time-bounded log (for deltas and watch resumption) and publish it to
//! watchers while the lock is still held, so that watchers see changes in index order
//! and a new subscriber can read the log and subscribe without a gap. Renewals are
//! the hot path: they take only the read lock and store the renewal time in an atomic,
//! because a renewal changes no version and is invisible to watchers.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use rtalpha_proto::instance::ActionType;
use rtalpha_proto::instance::HealthVerdict;
use rtalpha_proto::registry::{Change, ChangeKind, MetadataPatch, SelfPreservation};
use rtalpha_proto::replication::{DigestEntry, Snapshot, Stamp, Tombstone};
use rtalpha_proto::{Instance, Status};
use tokio::sync::{broadcast, watch};

use crate::clock::Clock;
use crate::config::SelfPreservationSettings;

/// How many changes a slow watcher may fall behind before it is told to resync.
const WATCH_BACKLOG: usize = 4096;

/// A write that names something the registry does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// No instance with this id in this app.
    #[error("instance `{id}` of app `{app}` is not registered")]
    UnknownInstance {
        /// The app.
        app: String,
        /// The instance id.
        id: String,
    },
    /// No such app.
    #[error("app `{0}` is not registered")]
    UnknownApp(String),
}

/// The metadata key by which an instance opts in to active health checks (`http`).
pub const HEALTH_CHECK_KEY: &str = "rtalpha.health-check";
/// The metadata key that overrides the probe interval for one instance (`5s`).
pub const HEALTH_CHECK_INTERVAL_KEY: &str = "rtalpha.health-check.interval";
/// The metadata key that overrides the probe timeout for one instance (`1s`).
pub const HEALTH_CHECK_TIMEOUT_KEY: &str = "rtalpha.health-check.timeout";

/// An instance to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckTarget {
    /// The app.
    pub app: String,
    /// The instance id.
    pub instance_id: String,
    /// Its health-check URL.
    pub url: String,
    /// Its own probe interval, unparsed.
    pub interval: Option<String>,
    /// Its own probe timeout, unparsed.
    pub timeout: Option<String>,
    /// The verdict held now (`None` before the first).
    pub passing: Option<bool>,
}

/// An app's records as shared references, each with its renewal time (ms).
pub type SharedApp = (String, Vec<(Arc<Instance>, u64)>);

/// What a renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The lease was renewed.
    Renewed,
    /// The instance must register again: the caller holds a newer record than the
    /// registry (its `lastDirtyTimestamp` is later), or its status is UNKNOWN since an
    /// override was removed without a new status. Eureka answers this with 404.
    MustRegister,
}

/// What the instance reports with a renewal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RenewalReport {
    /// The status the instance says it has.
    pub status: Option<Status>,
    /// The instance's `lastDirtyTimestamp`.
    pub last_dirty_timestamp: Option<u64>,
}

/// An instance record and the time of its last renewal.
#[derive(Debug)]
struct Lease {
    /// Shared with the change log; edited copy-on-write.
    instance: Arc<Instance>,
    last_renewal_ms: AtomicU64,
}

impl Lease {
    fn new(instance: Arc<Instance>) -> Self {
        let last = instance.lease.last_renewal_timestamp;
        Lease {
            instance,
            last_renewal_ms: AtomicU64::new(last),
        }
    }

    /// The record with the current renewal time.
    fn snapshot(&self) -> Instance {
        let mut instance = Instance::clone(&self.instance);
        instance.lease.last_renewal_timestamp = self.last_renewal_ms.load(Ordering::Relaxed);
        instance
    }

    fn expires_at(&self) -> u64 {
        self.last_renewal_ms.load(Ordering::Relaxed) + u64::from(self.instance.lease.duration_secs) * 1000
    }
}

#[derive(Debug, Default)]
struct App {
    /// The index of the last change to this app.
    index: u64,
    instances: BTreeMap<String, Lease>,
}

#[derive(Debug, Default)]
struct State {
    index: u64,
    apps: BTreeMap<String, App>,
    /// Recent changes with the time they were committed, oldest first.
    log: VecDeque<(u64, Arc<Change>)>,
    /// The highest index no longer in the log.
    pruned_through: u64,
    self_preservation_active: bool,
    last_judgement: Option<SelfPreservation>,
    /// Cancelled instances by `(app, id)`, so that anti-entropy does not revive them.
    tombstones: HashMap<(String, String), Tombstone>,
}

/// Renewals counted in one-second steps, for the self-preservation window.
#[derive(Debug)]
struct RenewalMeter {
    total: AtomicU64,
    /// `(time ms, total at that time)`, one sample per sweep or tick, oldest first.
    samples: RwLock<VecDeque<(u64, u64)>>,
}

/// How long the table remembers, and when it suspends eviction.
#[derive(Debug, Clone)]
pub struct TableSettings {
    /// How long changes are kept for deltas and watch resumption.
    pub delta_retention: Duration,
    /// How long a cancellation is remembered for anti-entropy.
    pub tombstone_retention: Duration,
    /// Self-preservation.
    pub preservation: SelfPreservationSettings,
}

/// What applying a peer's record or cancellation came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Stored; the change, if the record differed from the one held.
    Stored(Option<Arc<Change>>),
    /// Refused: this table holds a newer record.
    NewerRecord(Box<Instance>),
    /// Refused: this table holds a newer cancellation.
    NewerTombstone(Tombstone),
}

/// The registry's state. Cheap to share: wrap it in an `Arc`.
#[derive(Debug)]
pub struct LeaseTable {
    state: RwLock<State>,
    clock: Clock,
    started_at: u64,
    delta_retention_ms: u64,
    tombstone_retention_ms: u64,
    preservation: SelfPreservationSettings,
    /// No eviction before this time (ms since the epoch): the warm-up period.
    evict_after: AtomicU64,
    changes: broadcast::Sender<Arc<Change>>,
    version: watch::Sender<u64>,
    renewals: RenewalMeter,
    evictions_total: AtomicU64,
}

/// A new watcher's start: the live feed, what it missed, and where the table stands.
#[derive(Debug)]
pub struct Subscription {
    /// Every change committed from now on.
    pub receiver: broadcast::Receiver<Arc<Change>>,
    /// The changes after the asked-for index still in the log; `None` when some were
    /// pruned and the watcher must resync.
    pub backlog: Option<Vec<Arc<Change>>>,
    /// The version index at subscription.
    pub index: u64,
}

/// The result of one eviction sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    /// The instances evicted.
    pub evicted: Vec<(String, String)>,
    /// The self-preservation judgement the sweep made.
    pub self_preservation: SelfPreservation,
    /// Instances whose lease had expired but were kept because self-preservation is on.
    pub spared: usize,
}

/// A consistent read of the whole table.
pub struct ReadView<'a> {
    state: RwLockReadGuard<'a, State>,
}

impl ReadView<'_> {
    /// The version index.
    pub fn index(&self) -> u64 {
        self.state.index
    }

    /// Every app name with its instances, ordered by name and id.
    pub fn apps(&self) -> impl Iterator<Item = (&str, Vec<Instance>)> {
        self.state
            .apps
            .iter()
            .map(|(name, app)| (name.as_str(), app.instances.values().map(Lease::snapshot).collect()))
    }

    /// Every app's records as shared references with their renewal times: a snapshot
    /// that costs no copy of a record, for encoding off the lock.
    pub fn shared_apps(&self) -> Vec<SharedApp> {
        self.state
            .apps
            .iter()
            .map(|(name, app)| {
                let leases = app
                    .instances
                    .values()
                    .map(|lease| (lease.instance.clone(), lease.last_renewal_ms.load(Ordering::Relaxed)))
                    .collect();
                (name.clone(), leases)
            })
            .collect()
    }

    /// One app's instances and the index of its last change.
    pub fn app(&self, name: &str) -> Option<(u64, Vec<Instance>)> {
        self.state
            .apps
            .get(name)
            .map(|app| (app.index, app.instances.values().map(Lease::snapshot).collect()))
    }

    /// One instance.
    pub fn instance(&self, app: &str, id: &str) -> Option<Instance> {
        self.state.apps.get(app)?.instances.get(id).map(Lease::snapshot)
    }

    /// The first instance with this id in any app (Eureka's `/instances/{id}`).
    pub fn find_instance(&self, id: &str) -> Option<Instance> {
        self.state
            .apps
            .values()
            .find_map(|app| app.instances.get(id).map(Lease::snapshot))
    }

    /// The `lastDirtyTimestamp` of an instance's record, without copying the record.
    pub fn last_dirty(&self, app: &str, id: &str) -> Option<u64> {
        self.state
            .apps
            .get(app)?
            .instances
            .get(id)
            .map(|lease| lease.instance.last_dirty_timestamp)
    }

    /// The instances that opted in to active health checks (metadata
    /// `rtalpha.health-check: http` and a health-check URL), with their current verdict.
    pub fn health_check_targets(&self) -> Vec<HealthCheckTarget> {
        self.state
            .apps
            .iter()
            .flat_map(|(app, entry)| {
                entry.instances.iter().filter_map(move |(id, lease)| {
                    let instance = &lease.instance;
                    let opted_in = instance
                        .metadata
                        .get(HEALTH_CHECK_KEY)
                        .is_some_and(|kind| kind.eq_ignore_ascii_case("http"));
                    let url = instance.health_check_url.as_ref().filter(|_| opted_in)?;
                    Some(HealthCheckTarget {
                        app: app.clone(),
                        instance_id: id.clone(),
                        url: url.clone(),
                        interval: instance.metadata.get(HEALTH_CHECK_INTERVAL_KEY).cloned(),
                        timeout: instance.metadata.get(HEALTH_CHECK_TIMEOUT_KEY).cloned(),
                        passing: instance.health_check.as_ref().map(|verdict| verdict.passing),
                    })
                })
            })
            .collect()
    }

    /// Every instance's status, for the reconcile hash code.
    pub fn statuses(&self) -> impl Iterator<Item = Status> + '_ {
        self.state
            .apps
            .values()
            .flat_map(|app| app.instances.values().map(|lease| lease.instance.status))
    }

    /// How many instances are registered.
    pub fn instance_count(&self) -> usize {
        self.state.apps.values().map(|app| app.instances.len()).sum()
    }

    /// The changes after `since`, or `None` when some of them are no longer kept.
    pub fn changes_since(&self, since: u64) -> Option<Vec<Arc<Change>>> {
        if since < self.state.pruned_through {
            return None;
        }
        let start = self.state.log.partition_point(|(_, change)| change.index <= since);
        Some(
            self.state
                .log
                .range(start..)
                .map(|(_, change)| change.clone())
                .collect(),
        )
    }

    /// Every change still kept, oldest first.
    pub fn recent_changes(&self) -> impl Iterator<Item = &Arc<Change>> {
        self.state.log.iter().map(|(_, change)| change)
    }
}

impl LeaseTable {
    /// An empty table.
    pub fn new(clock: Clock, settings: TableSettings) -> Self {
        let TableSettings {
            delta_retention,
            tombstone_retention,
            preservation,
        } = settings;
        let (changes, _) = broadcast::channel(WATCH_BACKLOG);
        let (version, _) = watch::channel(0);
        let started_at = clock.now_ms();
        LeaseTable {
            state: RwLock::new(State::default()),
            clock,
            started_at,
            delta_retention_ms: delta_retention.as_millis() as u64,
            tombstone_retention_ms: tombstone_retention.as_millis() as u64,
            preservation,
            evict_after: AtomicU64::new(0),
            changes,
            version,
            renewals: RenewalMeter {
                total: AtomicU64::new(0),
                samples: RwLock::new(VecDeque::from([(started_at, 0)])),
            },
            evictions_total: AtomicU64::new(0),
        }
    }

    /// The clock the table runs on.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// When the table was created (ms since the epoch).
    pub fn started_at(&self) -> u64 {
        self.started_at
    }

    /// A consistent read of everything.
    pub fn read(&self) -> ReadView<'_> {
        ReadView {
            state: self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner()),
        }
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The version index now.
    pub fn index(&self) -> u64 {
        *self.version.borrow()
    }

    /// A receiver of the version index, for blocking queries.
    pub fn version_watch(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Subscribes to changes and returns, atomically with it, the changes after
    /// `since` still in the log (`None` if some were pruned) and the index now.
    pub fn subscribe(&self, since: Option<u64>) -> Subscription {
        // Writers publish under the write lock, so holding the read lock here means no
        // change can fall between the backlog and the subscription.
        let view = self.read();
        let receiver = self.changes.subscribe();
        let backlog = since.map_or(Some(Vec::new()), |since| view.changes_since(since));
        Subscription {
            receiver,
            backlog,
            index: view.index(),
        }
    }

    /// Registers an instance, or re-registers it. Returns the change, or `None` when
    /// the record is unchanged (a re-registration that only refreshes the lease) or
    /// older than the one held (the newer `lastDirtyTimestamp` wins).
    pub fn register(&self, mut instance: Instance) -> Option<Arc<Change>> {
        let now = self.clock.now_ms();
        let mut state = self.write();
        let app = state.apps.entry(instance.app.clone()).or_default();
        let previous = app.instances.get(&instance.instance_id);
        if let Some(previous) = previous {
            previous.last_renewal_ms.store(now, Ordering::Relaxed);
            let held = &previous.instance;
            if instance.last_dirty_timestamp != 0 && instance.last_dirty_timestamp < held.last_dirty_timestamp {
                return None;
            }
            // An operator's override outlives re-registration, as in Eureka.
            if held.overridden_status != Status::Unknown {
                instance.overridden_status = held.overridden_status;
            }
            instance.lease.registration_timestamp = held.lease.registration_timestamp;
            instance.lease.service_up_timestamp = held.lease.service_up_timestamp;
            // The registry's health verdict outlives re-registration too; while it fails,
            // what the instance reports is remembered for when it passes again.
            if let Some(verdict) = &held.health_check {
                let mut verdict = verdict.clone();
                verdict.reported_status = instance.status;
                if !verdict.passing {
                    instance.status = Status::Down;
                }
                instance.health_check = Some(verdict);
            }
        } else {
            instance.lease.registration_timestamp = now;
            instance.lease.service_up_timestamp = 0;
        }
        if instance.overridden_status != Status::Unknown {
            instance.status = instance.overridden_status;
        }
        if instance.status == Status::Up && instance.lease.service_up_timestamp == 0 {
            instance.lease.service_up_timestamp = now;
        }
        if instance.last_dirty_timestamp == 0 {
            // A client that sends no dirty timestamp keeps the one held, or gets now.
            instance.last_dirty_timestamp = previous.map_or(now, |held| held.instance.last_dirty_timestamp);
        }
        instance.lease.last_renewal_timestamp = now;
        instance.lease.eviction_timestamp = 0;
        instance.zone = instance.declared_zone();
        let kind = match previous {
            Some(previous)
                if same_record(&previous.instance, &instance)
                    && previous.instance.last_dirty_timestamp == instance.last_dirty_timestamp =>
            {
                return None;
            }
            Some(_) => ChangeKind::Modified,
            None => ChangeKind::Registered,
        };
        self.renewals.total.fetch_add(1, Ordering::Relaxed);
        instance.action_type = Some(if kind == ChangeKind::Registered {
            ActionType::Added
        } else {
            ActionType::Modified
        });
        instance.last_updated_timestamp = now;
        let id = instance.instance_id.clone();
        let app_name = instance.app.clone();
        let instance = Arc::new(instance);
        app.instances.insert(id.clone(), Lease::new(instance.clone()));
        state.tombstones.remove(&(app_name.clone(), id.clone()));
        Some(self.commit(&mut state, kind, app_name, id, instance, now))
    }

    /// Renews a lease. A renewal changes no version and notifies no one, unless the
    /// reported status differs from the one held (and no override is in force).
    pub fn renew(&self, app: &str, id: &str, report: RenewalReport) -> Result<Renewal, TableError> {
        self.renew_reporting(app, id, report).map(|(renewal, _)| renewal)
    }

    /// [`LeaseTable::renew`], also returning the change a reported status made.
    pub fn renew_reporting(
        &self,
        app: &str,
        id: &str,
        report: RenewalReport,
    ) -> Result<(Renewal, Option<Arc<Change>>), TableError> {
        let now = self.clock.now_ms();
        let status_change = {
            let state = self.read().state;
            let lease = state
                .apps
                .get(app)
                .and_then(|a| a.instances.get(id))
                .ok_or_else(|| unknown(app, id))?;
            let newer_elsewhere = report
                .last_dirty_timestamp
                .is_some_and(|theirs| theirs > lease.instance.last_dirty_timestamp);
            if newer_elsewhere || lease.instance.status == Status::Unknown {
                return Ok((Renewal::MustRegister, None));
            }
            lease.last_renewal_ms.store(now, Ordering::Relaxed);
            self.renewals.total.fetch_add(1, Ordering::Relaxed);
            report.status.filter(|reported| {
                let shown = match &lease.instance.health_check {
                    Some(verdict) if !verdict.passing => verdict.reported_status,
                    _ => lease.instance.status,
                };
                lease.instance.overridden_status == Status::Unknown && *reported != shown
            })
        };
        let mut change = None;
        if let Some(status) = status_change {
            change = self.modify(app, id, |instance| {
                match &mut instance.health_check {
                    Some(verdict) if !verdict.passing => verdict.reported_status = status,
                    _ => instance.status = status,
                }
                true
            })?;
        }
        Ok((Renewal::Renewed, change))
    }

    /// Cancels a lease: the instance leaves at once and watchers are told.
    pub fn cancel(&self, app: &str, id: &str) -> Result<Arc<Change>, TableError> {
        self.remove(app, id, ChangeKind::Cancelled)
    }

    /// Forces a status until the override is cleared.
    pub fn set_override(&self, app: &str, id: &str, status: Status) -> Result<Option<Arc<Change>>, TableError> {
        self.modify(app, id, |instance| {
            let changed = instance.overridden_status != status || instance.status != status;
            instance.overridden_status = status;
            instance.status = status;
            changed
        })
    }

    /// Removes the override; the instance takes `status` (Eureka's `value=`, UNKNOWN
    /// when absent) until it reports its own.
    pub fn clear_override(
        &self,
        app: &str,
        id: &str,
        status: Option<Status>,
    ) -> Result<Option<Arc<Change>>, TableError> {
        let status = status.unwrap_or(Status::Unknown);
        self.modify(app, id, |instance| {
            let changed = instance.overridden_status != Status::Unknown || instance.status != status;
            instance.overridden_status = Status::Unknown;
            instance.status = status;
            changed
        })
    }

    /// Sets or removes (`None`) metadata keys.
    pub fn update_metadata(
        &self,
        app: &str,
        id: &str,
        patch: &MetadataPatch,
    ) -> Result<Option<Arc<Change>>, TableError> {
        self.modify(app, id, |instance| {
            let before = instance.metadata.clone();
            for (key, value) in patch {
                match value {
                    Some(value) => instance.metadata.insert(key.clone(), value.clone()),
                    None => instance.metadata.remove(key),
                };
            }
            instance.zone = instance.declared_zone();
            instance.metadata != before
        })
    }

    /// Applies `edit` to an instance; when it reports a change, watchers are told. The
    /// instance's own `lastDirtyTimestamp` is left alone, as Eureka does: it dates the
    /// instance's record, which an operator's edit does not make newer.
    fn modify(
        &self,
        app: &str,
        id: &str,
        edit: impl FnOnce(&mut Instance) -> bool,
    ) -> Result<Option<Arc<Change>>, TableError> {
        self.modify_with(app, id, true, edit)
    }

    fn modify_with(
        &self,
        app: &str,
        id: &str,
        renews: bool,
        edit: impl FnOnce(&mut Instance) -> bool,
    ) -> Result<Option<Arc<Change>>, TableError> {
        let now = self.clock.now_ms();
        let mut state = self.write();
        let lease = state
            .apps
            .get_mut(app)
            .and_then(|a| a.instances.get_mut(id))
            .ok_or_else(|| unknown(app, id))?;
        // An operator's call renews the lease, as in Eureka; a health verdict does not.
        if renews {
            lease.last_renewal_ms.store(now, Ordering::Relaxed);
        }
        // Edit a copy: the record held is shared with the change log.
        let mut edited = Instance::clone(&lease.instance);
        if !edit(&mut edited) {
            return Ok(None);
        }
        edited.lease.last_renewal_timestamp = lease.last_renewal_ms.load(Ordering::Relaxed);
        if edited.status == Status::Up && edited.lease.service_up_timestamp == 0 {
            edited.lease.service_up_timestamp = now;
        }
        edited.last_updated_timestamp = now;
        edited.action_type = Some(ActionType::Modified);
        let shared = Arc::new(edited);
        lease.instance = shared.clone();
        Ok(Some(self.commit(
            &mut state,
            ChangeKind::Modified,
            app.to_owned(),
            id.to_owned(),
            shared,
            now,
        )))
    }

    fn remove(&self, app: &str, id: &str, kind: ChangeKind) -> Result<Arc<Change>, TableError> {
        let now = self.clock.now_ms();
        let mut state = self.write();
        let entry = state.apps.get_mut(app).ok_or_else(|| unknown(app, id))?;
        let lease = entry.instances.remove(id).ok_or_else(|| unknown(app, id))?;
        if entry.instances.is_empty() {
            state.apps.remove(app);
        }
        let mut instance = lease.snapshot();
        instance.lease.eviction_timestamp = now;
        instance.last_updated_timestamp = now;
        instance.action_type = Some(ActionType::Deleted);
        // Only a cancellation is remembered: an eviction is this node's own judgement and
        // must not delete, through anti-entropy, a lease a peer still sees renewed.
        if kind == ChangeKind::Cancelled {
            let tombstone = Tombstone {
                app: app.to_owned(),
                instance_id: id.to_owned(),
                stamp: Stamp::of(&instance),
            };
            state.tombstones.insert((app.to_owned(), id.to_owned()), tombstone);
        }
        Ok(self.commit(&mut state, kind, app.to_owned(), id.to_owned(), Arc::new(instance), now))
    }

    /// Bumps the index, logs the change and tells watchers, under the write lock.
    fn commit(
        &self,
        state: &mut State,
        kind: ChangeKind,
        app: String,
        instance_id: String,
        instance: Arc<Instance>,
        now: u64,
    ) -> Arc<Change> {
        state.index += 1;
        let index = state.index;
        if let Some(entry) = state.apps.get_mut(&app) {
            entry.index = index;
        }
        let change = Arc::new(Change {
            index,
            kind,
            app,
            instance_id,
            instance,
        });
        state.log.push_back((now, change.clone()));
        self.prune_log(state, now);
        // No receivers is not an error: nobody is watching.
        let _ = self.changes.send(change.clone());
        self.version.send_replace(index);
        metrics::counter!("rtalpha_registry_changes_total", "kind" => kind_name(kind)).increment(1);
        change
    }

    fn prune_log(&self, state: &mut State, now: u64) {
        let horizon = now.saturating_sub(self.delta_retention_ms);
        while let Some((committed_at, oldest)) = state.log.front() {
            if *committed_at >= horizon {
                break;
            }
            state.pruned_through = oldest.index;
            state.log.pop_front();
        }
    }

    /// Takes a renewal sample for the self-preservation window; called every second.
    pub fn sample_renewals(&self) {
        let now = self.clock.now_ms();
        let total = self.renewals.total.load(Ordering::Relaxed);
        let window_ms = self.preservation.window.as_millis() as u64;
        let mut samples = self.renewals.samples.write().unwrap_or_else(|p| p.into_inner());
        samples.push_back((now, total));
        // Keep the newest sample at or before the window's start, so the window is full.
        while samples.len() > 1 && samples[1].0 <= now.saturating_sub(window_ms) {
            samples.pop_front();
        }
    }

    /// Judges self-preservation from the live leases and the renewals counted over the
    /// window, without changing anything.
    pub fn judge_self_preservation(&self) -> SelfPreservation {
        let view = self.read();
        self.judge(&view.state)
    }

    fn judge(&self, state: &State) -> SelfPreservation {
        let now = self.clock.now_ms();
        let (window_start, total_then) = {
            let samples = self.renewals.samples.read().unwrap_or_else(|p| p.into_inner());
            samples.front().copied().unwrap_or((self.started_at, 0))
        };
        let renewals = self.renewals.total.load(Ordering::Relaxed).saturating_sub(total_then);
        let span_ms = now.saturating_sub(window_start) as f64;
        // A lease younger than the window is expected to have renewed only for its age;
        // its registration counts as its first sign of life, as the meter counts it too.
        let mut expected = 0.0;
        let mut instances = 0usize;
        for app in state.apps.values() {
            for lease in app.instances.values() {
                instances += 1;
                let age_ms = now.saturating_sub(lease.instance.lease.registration_timestamp) as f64;
                let interval_ms = f64::from(lease.instance.lease.renewal_interval_secs) * 1000.0;
                let covered = age_ms.min(span_ms);
                expected += covered / interval_ms;
                if age_ms <= span_ms {
                    expected += 1.0;
                }
            }
        }
        let settings = &self.preservation;
        let active = settings.enabled
            && instances >= settings.min_instances
            && expected > 0.0
            && (renewals as f64) < settings.threshold * expected;
        SelfPreservation {
            enabled: settings.enabled,
            active,
            renewals_in_window: renewals,
            expected_renewals: (expected * 100.0).round() / 100.0,
            threshold_share: settings.threshold,
            window_secs: settings.window.as_secs(),
        }
    }

    /// The self-preservation state as the last sweep left it.
    pub fn self_preservation(&self) -> SelfPreservation {
        let view = self.read();
        view.state
            .last_judgement
            .clone()
            .unwrap_or_else(|| self.judge(&view.state))
    }

    /// Evicts every instance whose lease has expired, unless self-preservation is on.
    pub fn sweep(&self) -> Sweep {
        let now = self.clock.now_ms();
        let (judgement, expired) = {
            let view = self.read();
            let judgement = self.judge(&view.state);
            let expired: Vec<(String, String)> = view
                .state
                .apps
                .iter()
                .flat_map(|(app, entry)| {
                    entry
                        .instances
                        .iter()
                        .filter(|(_, lease)| lease.expires_at() < now)
                        .map(|(id, _)| (app.clone(), id.clone()))
                })
                .collect();
            (judgement, expired)
        };
        {
            let mut state = self.write();
            if state.self_preservation_active != judgement.active {
                if judgement.active {
                    tracing::warn!(
                        renewals = judgement.renewals_in_window,
                        expected = judgement.expected_renewals,
                        "self-preservation engaged: renewals fell below the threshold; eviction suspended"
                    );
                } else {
                    tracing::info!("self-preservation released; eviction resumes");
                }
            }
            state.self_preservation_active = judgement.active;
            state.last_judgement = Some(judgement.clone());
            self.prune_log(&mut state, now);
            let tombstone_horizon = now.saturating_sub(self.tombstone_retention_ms);
            state.tombstones.retain(|_, t| t.stamp.updated >= tombstone_horizon);
        }
        if judgement.active || self.warming_up() {
            return Sweep {
                spared: expired.len(),
                evicted: Vec::new(),
                self_preservation: judgement,
            };
        }
        let mut evicted = Vec::new();
        for (app, id) in expired {
            // Renewed between the read and now? Then it stays.
            let still_expired = self
                .read()
                .state
                .apps
                .get(&app)
                .and_then(|a| a.instances.get(&id))
                .is_some_and(|lease| lease.expires_at() < now);
            if still_expired && self.remove(&app, &id, ChangeKind::Evicted).is_ok() {
                tracing::info!(app = %app, instance = %id, "evicted: lease expired");
                self.evictions_total.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("rtalpha_registry_evictions_total").increment(1);
                evicted.push((app, id));
            }
        }
        Sweep {
            evicted,
            self_preservation: judgement,
            spared: 0,
        }
    }

    /// Suspends eviction until `until` (ms since the epoch): a node that just started
    /// cannot yet tell a dead instance from one whose renewals go to another node.
    pub fn suspend_eviction_until(&self, until: u64) {
        self.evict_after.fetch_max(until, Ordering::Relaxed);
    }

    /// Whether eviction is suspended for warm-up.
    pub fn warming_up(&self) -> bool {
        self.clock.now_ms() < self.evict_after.load(Ordering::Relaxed)
    }

    /// Applies a record from a peer: stored when it is at least as new as what this table
    /// holds (the newer stamp wins), refused with the newer record or cancellation
    /// otherwise. The record keeps the peer's timestamps, so that every node ends with
    /// the same stamps and anti-entropy sees no difference.
    pub fn apply_record(&self, mut instance: Instance) -> Applied {
        let now = self.clock.now_ms();
        let incoming = Stamp::of(&instance);
        let key = (instance.app.clone(), instance.instance_id.clone());
        let mut state = self.write();
        if let Some(tombstone) = state.tombstones.get(&key)
            && tombstone.stamp >= incoming
        {
            return Applied::NewerTombstone(tombstone.clone());
        }
        let held = state.apps.get(&key.0).and_then(|app| app.instances.get(&key.1));
        let kind = match held {
            Some(lease) => {
                let held_stamp = Stamp::of(&lease.instance);
                if held_stamp > incoming {
                    return Applied::NewerRecord(Box::new(lease.snapshot()));
                }
                let renewed = lease.last_renewal_ms.load(Ordering::Relaxed);
                instance.lease.last_renewal_timestamp = instance.lease.last_renewal_timestamp.max(renewed);
                if held_stamp == incoming && same_record(&lease.instance, &instance) {
                    lease
                        .last_renewal_ms
                        .store(instance.lease.last_renewal_timestamp, Ordering::Relaxed);
                    return Applied::Stored(None);
                }
                ChangeKind::Modified
            }
            None => ChangeKind::Registered,
        };
        instance.zone = instance.declared_zone();
        state.tombstones.remove(&key);
        let entry = state.apps.entry(key.0.clone()).or_default();
        let instance = Arc::new(instance);
        entry.instances.insert(key.1.clone(), Lease::new(instance.clone()));
        Applied::Stored(Some(self.commit(&mut state, kind, key.0, key.1, instance, now)))
    }

    /// Applies a peer's renewal. `MustRegister` when this table's record is older than
    /// the peer's, so that the peer sends it.
    pub fn apply_renewal(&self, app: &str, id: &str, dirty: u64, renewed_at: u64) -> Result<Renewal, TableError> {
        let state = self.read().state;
        let lease = state
            .apps
            .get(app)
            .and_then(|a| a.instances.get(id))
            .ok_or_else(|| unknown(app, id))?;
        if dirty > lease.instance.last_dirty_timestamp {
            return Ok(Renewal::MustRegister);
        }
        lease.last_renewal_ms.fetch_max(renewed_at, Ordering::Relaxed);
        self.renewals.total.fetch_add(1, Ordering::Relaxed);
        Ok(Renewal::Renewed)
    }

    /// Applies a peer's cancellation: removes the record unless it is newer than the
    /// cancellation, and remembers the tombstone either way.
    pub fn apply_tombstone(&self, tombstone: Tombstone) -> Applied {
        let now = self.clock.now_ms();
        let key = (tombstone.app.clone(), tombstone.instance_id.clone());
        let mut state = self.write();
        if let Some(held) = state.tombstones.get(&key)
            && held.stamp >= tombstone.stamp
        {
            return Applied::Stored(None);
        }
        let held = state.apps.get(&key.0).and_then(|app| app.instances.get(&key.1));
        if let Some(lease) = held
            && Stamp::of(&lease.instance) > tombstone.stamp
        {
            return Applied::NewerRecord(Box::new(lease.snapshot()));
        }
        state.tombstones.insert(key.clone(), tombstone.clone());
        let Some(entry) = state.apps.get_mut(&key.0) else {
            return Applied::Stored(None);
        };
        let Some(lease) = entry.instances.remove(&key.1) else {
            return Applied::Stored(None);
        };
        if entry.instances.is_empty() {
            state.apps.remove(&key.0);
        }
        let mut instance = lease.snapshot();
        instance.lease.eviction_timestamp = tombstone.stamp.updated;
        instance.last_updated_timestamp = tombstone.stamp.updated;
        instance.action_type = Some(ActionType::Deleted);
        Applied::Stored(Some(self.commit(
            &mut state,
            ChangeKind::Cancelled,
            key.0,
            key.1,
            Arc::new(instance),
            now,
        )))
    }

    /// Records the registry's own health verdict of an instance; a failing one makes its
    /// status DOWN until it passes again (an operator's override still wins).
    pub fn set_health_verdict(
        &self,
        app: &str,
        id: &str,
        passing: bool,
        detail: &str,
    ) -> Result<Option<Arc<Change>>, TableError> {
        let now = self.clock.now_ms();
        self.modify_with(app, id, false, |instance| {
            let held = instance.health_check.as_ref().map(|v| v.passing);
            if held == Some(passing) {
                return false;
            }
            let reported = match &instance.health_check {
                Some(verdict) if !verdict.passing => verdict.reported_status,
                _ => instance.status,
            };
            instance.health_check = Some(HealthVerdict {
                passing,
                since: now,
                detail: if passing { String::new() } else { detail.to_owned() },
                reported_status: reported,
            });
            if instance.overridden_status == Status::Unknown {
                instance.status = if passing { reported } else { Status::Down };
            }
            // A first passing verdict changes no status; it is recorded all the same.
            true
        })
    }

    /// Every app's entries (live records and tombstones), sorted by id.
    pub fn digest_entries(&self) -> BTreeMap<String, Vec<DigestEntry>> {
        let view = self.read();
        let state = &view.state;
        let mut apps: BTreeMap<String, BTreeMap<String, DigestEntry>> = BTreeMap::new();
        for ((app, id), tombstone) in &state.tombstones {
            apps.entry(app.clone()).or_default().insert(
                id.clone(),
                DigestEntry {
                    instance_id: id.clone(),
                    status: None,
                    stamp: tombstone.stamp,
                    deleted: true,
                },
            );
        }
        for (name, app) in &state.apps {
            let entries = apps.entry(name.clone()).or_default();
            for (id, lease) in &app.instances {
                entries.insert(
                    id.clone(),
                    DigestEntry {
                        instance_id: id.clone(),
                        status: Some(lease.instance.status),
                        stamp: Stamp::of(&lease.instance),
                        deleted: false,
                    },
                );
            }
        }
        apps.into_iter()
            .map(|(app, entries)| (app, entries.into_values().collect()))
            .collect()
    }

    /// The records and tombstones for the given keys (what is held of them).
    pub fn records(&self, keys: &[(String, String)]) -> Snapshot {
        let view = self.read();
        let mut snapshot = Snapshot::default();
        for (app, id) in keys {
            if let Some(instance) = view.instance(app, id) {
                snapshot.instances.push(instance);
            } else if let Some(tombstone) = view.state.tombstones.get(&(app.clone(), id.clone())) {
                snapshot.tombstones.push(tombstone.clone());
            }
        }
        snapshot
    }

    /// Everything: every record and tombstone.
    pub fn snapshot(&self) -> Snapshot {
        let view = self.read();
        Snapshot {
            instances: view.apps().flat_map(|(_, instances)| instances).collect(),
            tombstones: view.state.tombstones.values().cloned().collect(),
        }
    }

    /// Instances evicted since start.
    pub fn evictions_total(&self) -> u64 {
        self.evictions_total.load(Ordering::Relaxed)
    }
}

fn same_record(held: &Instance, new: &Instance) -> bool {
    let strip = |instance: &Instance| {
        let mut copy = instance.clone();
        copy.lease.last_renewal_timestamp = 0;
        copy.last_updated_timestamp = 0;
        copy.last_dirty_timestamp = 0;
        copy.action_type = None;
        copy
    };
    strip(held) == strip(new)
}

fn unknown(app: &str, id: &str) -> TableError {
    TableError::UnknownInstance {
        app: app.to_owned(),
        id: id.to_owned(),
    }
}

fn kind_name(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Registered => "registered",
        ChangeKind::Modified => "modified",
        ChangeKind::Cancelled => "cancelled",
        ChangeKind::Evicted => "evicted",
    }
}

#[cfg(test)]
mod tests;
