//! The registry cluster's native replication protocol: batches of writes, digests for
//! anti-entropy, and snapshots for warm-up. Peers send these with the header
//! [`NODE_HEADER`] naming themselves, and never re-replicate what they receive.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::instance::{Instance, Status};

/// The header that names the sending node on every replication request and answer.
pub const NODE_HEADER: &str = "x-rtalpha-node";

/// Which of two versions of a record is newer: the instance's own
/// `lastDirtyTimestamp` first (Eureka's rule), then the time the registry last changed
/// the record (operator edits and health verdicts do not move the dirty timestamp).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// The instance's `lastDirtyTimestamp`.
    pub dirty: u64,
    /// The registry's `lastUpdatedTimestamp`.
    pub updated: u64,
}

impl Stamp {
    /// The stamp of a record.
    pub fn of(instance: &Instance) -> Self {
        Stamp {
            dirty: instance.last_dirty_timestamp,
            updated: instance.last_updated_timestamp,
        }
    }
}

/// A cancelled instance, remembered so that anti-entropy does not bring it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// The app.
    pub app: String,
    /// The instance id.
    pub instance_id: String,
    /// The stamp of the cancellation: the record's dirty timestamp, the cancel time.
    pub stamp: Stamp,
}

/// One replicated write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ReplicationItem {
    /// The whole record, after a registration or any change to it.
    Register {
        /// The record as the sender holds it.
        instance: Box<Instance>,
    },
    /// A lease renewal.
    Renew {
        /// The app.
        app: String,
        /// The instance id.
        instance_id: String,
        /// The sender's dirty timestamp of the record: if the receiver's is older, it
        /// answers 404 and the sender sends the record.
        last_dirty_timestamp: u64,
        /// When the sender received the renewal (ms since the epoch).
        renewed_at: u64,
    },
    /// A cancellation.
    Cancel {
        /// What was cancelled, and when.
        tombstone: Tombstone,
    },
}

/// A batch of writes from one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationBatch {
    /// The writes, oldest first.
    pub items: Vec<ReplicationItem>,
}

/// The outcome of one item, in the order of the batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationResult {
    /// 200 applied (or already held), 404 the receiver needs the record, 409 the
    /// receiver holds something newer (given in `instance` or `tombstone`).
    pub status: u16,
    /// The receiver's newer record, with 409.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<Instance>,
    /// The receiver's newer cancellation, with 409.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tombstone: Option<Tombstone>,
}

/// The answer to a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationResponse {
    /// One result per item.
    pub results: Vec<ReplicationResult>,
}

/// One instance (or tombstone) as a digest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestEntry {
    /// The instance id.
    pub instance_id: String,
    /// Its status (`None` for a tombstone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Its stamp.
    pub stamp: Stamp,
    /// True for a cancelled instance.
    #[serde(default)]
    pub deleted: bool,
}

/// Anti-entropy, first step: a hash per app of its entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// App name to the hash of its sorted entries.
    pub apps: BTreeMap<String, u64>,
}

/// Anti-entropy, the answer: the receiver's entries of every app whose hash differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestReply {
    /// App name to the receiver's entries (empty when it holds none).
    pub apps: BTreeMap<String, Vec<DigestEntry>>,
}

/// Records asked for by app and id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    /// `(app, instance id)` pairs.
    pub keys: Vec<(String, String)>,
}

/// Records and tombstones: the answer to a fetch, and the warm-up snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Snapshot {
    /// Live records.
    pub instances: Vec<Instance>,
    /// Cancelled instances still remembered.
    pub tombstones: Vec<Tombstone>,
}

/// How replication to one peer is going.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHealth {
    /// The peer's URL as configured.
    pub url: String,
    /// The node id the peer gave, once it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Whether the last contact succeeded recently.
    pub reachable: bool,
    /// Writes waiting to be sent.
    pub backlog: usize,
    /// How long the oldest waiting write has waited (ms).
    pub lag_ms: u64,
    /// When a batch or digest last succeeded (ms since the epoch; 0 never).
    pub last_success: u64,
    /// The last error, if the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// True when the backlog overflowed and the peer awaits a full resync.
    pub resync_pending: bool,
    /// Writes dropped because the backlog overflowed.
    pub dropped_total: u64,
    /// Writes delivered.
    pub replicated_total: u64,
    /// Records repaired by anti-entropy with this peer (both directions).
    pub repaired_total: u64,
}

/// The cluster as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// This node's id.
    pub node_id: String,
    /// Whether the node is still in its warm-up period (no eviction).
    pub warming_up: bool,
    /// The peers.
    pub peers: Vec<PeerHealth>,
}
