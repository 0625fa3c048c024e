//! The registry's native JSON API (docs/api/registry.md): requests, views and change
//! events. Every response also carries the registry's version index in the
//! `X-Rtalpha-Index` header.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::instance::{Instance, Status};

/// The header that carries the registry's version index on every response.
pub const INDEX_HEADER: &str = "x-rtalpha-index";

/// The body of a native registration: what an instance says about itself. The registry
/// fills in everything else (lease timestamps, upper-cased app name, defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Unique within the application; defaults to `host_name:port`.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// The host name clients should use.
    pub host_name: String,
    /// The IP address; defaults to the host name.
    #[serde(default)]
    pub ip_addr: Option<String>,
    /// The plain HTTP port; absent means no plain port.
    #[serde(default)]
    pub port: Option<u16>,
    /// The HTTPS port; absent means no secure port.
    #[serde(default)]
    pub secure_port: Option<u16>,
    /// The virtual address; defaults to the app name in lower case.
    #[serde(default)]
    pub vip_address: Option<String>,
    /// The secure virtual address.
    #[serde(default)]
    pub secure_vip_address: Option<String>,
    /// The status to start with; `UP` when absent.
    #[serde(default)]
    pub status: Option<Status>,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The zone the instance runs in.
    #[serde(default)]
    pub zone: Option<String>,
    /// The instance's home page.
    #[serde(default)]
    pub home_page_url: Option<String>,
    /// The instance's status page.
    #[serde(default)]
    pub status_page_url: Option<String>,
    /// The instance's health check URL.
    #[serde(default)]
    pub health_check_url: Option<String>,
    /// How often it will renew, in seconds (default 30).
    #[serde(default)]
    pub renewal_interval_secs: Option<u32>,
    /// How long a renewal lasts, in seconds (default 90).
    #[serde(default)]
    pub lease_duration_secs: Option<u32>,
}

/// The body of a status override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusOverride {
    /// The status to force.
    pub status: Status,
}

/// A metadata update: a `null` value removes the key.
pub type MetadataPatch = BTreeMap<String, Option<String>>;

/// One application and its instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppView {
    /// The application name (upper-case).
    pub name: String,
    /// Its instances, ordered by instance id.
    pub instances: Vec<Instance>,
}

/// The whole registry, or one application of it, at a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppsView {
    /// The version index this view was taken at.
    pub index: u64,
    /// The applications, ordered by name.
    pub apps: Vec<AppView>,
}

/// One instance at a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceView {
    /// The version index this view was taken at.
    pub index: u64,
    /// The instance.
    pub instance: Instance,
}

/// What happened to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// It registered (or re-registered after it was gone).
    Registered,
    /// Its record changed: status, override, metadata, or a re-registration.
    Modified,
    /// It cancelled its lease.
    Cancelled,
    /// Its lease expired and the registry evicted it.
    Evicted,
}

/// One change to the registry, as watches and deltas report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The version index this change produced.
    pub index: u64,
    /// What happened.
    pub kind: ChangeKind,
    /// The application (upper-case).
    pub app: String,
    /// The instance.
    pub instance_id: String,
    /// The instance as it is after the change; for a cancellation or eviction, as it
    /// was when it left. Shared with the registry's table, so the change log costs no
    /// copy of the record.
    pub instance: Arc<Instance>,
}

/// The changes since a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// The version index now.
    pub index: u64,
    /// The version the caller asked from.
    pub since: u64,
    /// True when the registry no longer holds every change since `since`: the caller
    /// must fetch the whole registry instead of applying `changes`.
    pub resync_required: bool,
    /// The changes after `since`, oldest first.
    pub changes: Vec<Change>,
    /// The reconcile hash of the whole registry now, in Eureka's form
    /// (`DOWN_1_UP_3_`, effective statuses counted): a client that applied the
    /// changes compares it with its own view's and fetches everything when they
    /// differ.
    #[serde(default)]
    pub apps_hash: String,
}

/// The self-preservation state: whether eviction is suspended because renewals fell
/// below the expected rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelfPreservation {
    /// Whether the mode may engage at all.
    pub enabled: bool,
    /// Whether it is engaged now (eviction suspended).
    pub active: bool,
    /// Renewals received in the last window.
    pub renewals_in_window: u64,
    /// Renewals expected in the last window from the live leases.
    pub expected_renewals: f64,
    /// The share of the expected renewals below which the mode engages.
    pub threshold_share: f64,
    /// The window length in seconds.
    pub window_secs: u64,
}

/// The registry's own state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistryStatus {
    /// The version index now.
    pub index: u64,
    /// How many applications are registered.
    pub apps: usize,
    /// How many instances are registered.
    pub instances: usize,
    /// Instances per status.
    pub instances_by_status: BTreeMap<Status, usize>,
    /// Self-preservation.
    pub self_preservation: SelfPreservation,
    /// Instances evicted since start.
    pub evictions_total: u64,
    /// When the registry started (ms since the epoch).
    pub started_at: u64,
    /// The cluster, when peers are configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::replication::ClusterView>,
}
