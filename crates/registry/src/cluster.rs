//! The registry cluster: replication to peers, anti-entropy, and warm-up.
//!
//! Every write a node accepts from a client is queued for every peer and sent in
//! batches by one task per peer, with retries and a doubling backoff; a peer that is
//! down never slows the client, because the client's answer does not wait for the
//! queue. A queue that outgrows `max_backlog` is dropped and the peer is marked for a
//! full resync, which anti-entropy performs as soon as the peer answers again.
//! Anti-entropy runs on its own every `anti_entropy_interval` too: the nodes compare a
//! hash per app, then the entries of the apps that differ, and each side takes what the
//! other holds newer (the newer [`Stamp`] wins). So a healed partition, a lost batch or
//! a restarted node converge without anyone's help.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rtalpha_proto::Instance;
use rtalpha_proto::registry::{Change, ChangeKind};
use rtalpha_proto::replication::{
    ClusterView, Digest, DigestEntry, DigestReply, FetchRequest, NODE_HEADER, PeerHealth, ReplicationBatch,
    ReplicationItem, ReplicationResponse, Snapshot, Stamp, Tombstone,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::ClusterSettings;
use crate::table::{Applied, LeaseTable};

/// A peer's base URL, split for use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerUrl {
    /// `http://host:port`, without credentials or a trailing slash.
    pub base: String,
    /// `host:port`.
    pub authority: String,
    /// The `Authorization` header value, when the URL carries credentials.
    pub authorization: Option<http::HeaderValue>,
}

impl PeerUrl {
    /// Parses `http://[user:password@]host:port[/]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text
            .strip_prefix("http://")
            .ok_or_else(|| format!("`{text}` is not an http:// URL"))?;
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            return Err(format!("`{text}` must be a base URL without a path"));
        }
        let (credentials, authority) = match rest.rsplit_once('@') {
            Some((credentials, authority)) => (Some(credentials), authority),
            None => (None, rest),
        };
        let uri: http::Uri = format!("http://{authority}/")
            .parse()
            .map_err(|err| format!("`{text}`: {err}"))?;
        if uri.host().is_none_or(str::is_empty) || uri.port_u16().is_none() {
            return Err(format!("`{text}` must name a host and a port"));
        }
        let authorization = credentials.and_then(rtalpha_runtime::auth::basic_authorization);
        Ok(PeerUrl {
            base: format!("http://{authority}"),
            authority: authority.to_owned(),
            authorization,
        })
    }
}

/// Why a request to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No answer in time, or the connection failed.
    #[error("{0}")]
    Unreachable(String),
    /// The peer answered with an error status.
    #[error("answered {status}: {body}")]
    Refused {
        /// The status.
        status: StatusCode,
        /// The start of the body.
        body: String,
    },
    /// The URL is this node itself.
    #[error("the peer is this node")]
    IsSelf,
}

#[derive(Debug, Default)]
struct PeerState {
    /// Writes waiting, with the time they were queued.
    queue: VecDeque<(u64, ReplicationItem)>,
    /// When the oldest write of the batch being sent was queued, while one is sent:
    /// those writes are older than any in the queue and count towards the lag.
    in_flight_since: Option<u64>,
    node_id: Option<String>,
    reachable: bool,
    last_success: u64,
    last_error: Option<String>,
    resync_pending: bool,
    dropped_total: u64,
    replicated_total: u64,
    repaired_total: u64,
}

/// One peer and its outgoing queue.
#[derive(Debug)]
pub struct Peer {
    url: PeerUrl,
    state: Mutex<PeerState>,
    wake: Notify,
    is_self: AtomicBool,
}

impl Peer {
    fn lock(&self) -> MutexGuard<'_, PeerState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// This node's view of the cluster and the machinery that keeps it current.
#[derive(Debug)]
pub struct Cluster {
    node_id: String,
    table: Arc<LeaseTable>,
    peers: Vec<Arc<Peer>>,
    client: Client<HttpConnector, Full<Bytes>>,
    settings: ClusterSettings,
}

/// The item that replicates a local change, if it is one that replicates (an eviction
/// is each node's own judgement and is not sent).
pub fn item_for(change: &Change) -> Option<ReplicationItem> {
    match change.kind {
        ChangeKind::Registered | ChangeKind::Modified => Some(ReplicationItem::Register {
            instance: Box::new(Instance::clone(&change.instance)),
        }),
        ChangeKind::Cancelled => Some(ReplicationItem::Cancel {
            tombstone: Tombstone {
                app: change.app.clone(),
                instance_id: change.instance_id.clone(),
                stamp: Stamp::of(&change.instance),
            },
        }),
        ChangeKind::Evicted => None,
    }
}

/// The FNV-1a hash of an app's digest entries (ids, stamps, deletion), stable across
/// processes and builds, unlike the standard library's hasher.
pub fn entries_hash(entries: &[DigestEntry]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    for entry in entries {
        feed(entry.instance_id.as_bytes());
        feed(&[0]);
        feed(&entry.stamp.dirty.to_le_bytes());
        feed(&entry.stamp.updated.to_le_bytes());
        feed(&[u8::from(entry.deleted)]);
    }
    hash
}

/// Rendezvous hashing: the node that owns a key among `nodes`, the same on every node
/// that sees the same set.
pub fn owner<'a>(key: &str, nodes: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    nodes.into_iter().max_by_key(|node| {
        let entry = DigestEntry {
            instance_id: format!("{node}/{key}"),
            status: None,
            stamp: Stamp { dirty: 0, updated: 0 },
            deleted: false,
        };
        (entries_hash(std::slice::from_ref(&entry)), *node)
    })
}

impl Cluster {
    /// A cluster of `peers` as seen from the node `node_id`; the node's own URL, if it
    /// is in the list, is recognised by `own_authorities`.
    pub fn new(
        node_id: String,
        table: Arc<LeaseTable>,
        peers: &[String],
        own_authorities: &[String],
        settings: ClusterSettings,
    ) -> Self {
        let peers = peers
            .iter()
            .filter_map(|peer| PeerUrl::parse(peer).ok())
            .filter(|url| !own_authorities.contains(&url.authority))
            .map(|url| {
                Arc::new(Peer {
                    url,
                    state: Mutex::new(PeerState::default()),
                    wake: Notify::new(),
                    is_self: AtomicBool::new(false),
                })
            })
            .collect();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(settings.request_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Cluster {
            node_id,
            table,
            peers,
            client,
            settings,
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    fn live_peers(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.peers.iter().filter(|peer| !peer.is_self.load(Ordering::Relaxed))
    }

    /// Queues a local write for every peer.
    pub fn replicate(&self, item: ReplicationItem) {
        for peer in self.live_peers() {
            self.enqueue(peer, item.clone());
        }
    }

    /// Queues the replication of a local change, if it replicates.
    pub fn replicate_change(&self, change: &Change) {
        if let Some(item) = item_for(change) {
            self.replicate(item);
        }
    }

    fn enqueue(&self, peer: &Peer, item: ReplicationItem) {
        let now = self.table.clock().now_ms();
        let mut state = peer.lock();
        if state.queue.len() >= self.settings.max_backlog {
            let dropped = state.queue.len() as u64 + 1;
            state.queue.clear();
            state.dropped_total += dropped;
            if !state.resync_pending {
                tracing::warn!(peer = %peer.url.base, dropped, "replication backlog overflowed; the peer will be resynced");
            }
            state.resync_pending = true;
            return;
        }
        state.queue.push_back((now, item));
        drop(state);
        peer.wake.notify_one();
    }

    /// The node ids of this node and of every peer that answered its last request:
    /// who may own a health check.
    pub fn live_nodes(&self) -> Vec<String> {
        let mut nodes = vec![self.node_id.clone()];
        for peer in self.live_peers() {
            let state = peer.lock();
            if state.reachable
                && let Some(id) = &state.node_id
            {
                nodes.push(id.clone());
            }
        }
        nodes
    }

    /// Replication health for the API, the dashboard and `/metrics`.
    pub fn view(&self) -> ClusterView {
        let now = self.table.clock().now_ms();
        let peers = self
            .live_peers()
            .map(|peer| {
                let state = peer.lock();
                PeerHealth {
                    url: peer.url.base.clone(),
                    node_id: state.node_id.clone(),
                    reachable: state.reachable,
                    backlog: state.queue.len(),
                    lag_ms: state
                        .in_flight_since
                        .or_else(|| state.queue.front().map(|(queued, _)| *queued))
                        .map_or(0, |queued| now.saturating_sub(queued)),
                    last_success: state.last_success,
                    last_error: state.last_error.clone(),
                    resync_pending: state.resync_pending,
                    dropped_total: state.dropped_total,
                    replicated_total: state.replicated_total,
                    repaired_total: state.repaired_total,
                }
            })
            .collect();
        ClusterView {
            node_id: self.node_id.clone(),
            warming_up: self.table.warming_up(),
            peers,
        }
    }

    /// Publishes the replication health as metrics.
    pub fn record_metrics(&self) {
        for peer in self.view().peers {
            let label = [("peer", peer.url.clone())];
            metrics::gauge!("rtalpha_registry_replication_backlog", &label).set(peer.backlog as f64);
            metrics::gauge!("rtalpha_registry_replication_lag_seconds", &label).set(peer.lag_ms as f64 / 1000.0);
            metrics::gauge!("rtalpha_registry_replication_reachable", &label).set(f64::from(u8::from(peer.reachable)));
            metrics::gauge!("rtalpha_registry_replication_resync_pending", &label)
                .set(f64::from(u8::from(peer.resync_pending)));
            metrics::counter!("rtalpha_registry_replication_sent_total", &label).absolute(peer.replicated_total);
            metrics::counter!("rtalpha_registry_replication_dropped_total", &label).absolute(peer.dropped_total);
            metrics::counter!("rtalpha_registry_replication_repaired_total", &label).absolute(peer.repaired_total);
        }
    }

    /// One request to a peer: JSON in, JSON out, with this node's id and the peer's
    /// credentials.
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        peer: &Peer,
        method: Method,
        path: &str,
        body: Option<&Req>,
    ) -> Result<Resp, PeerError> {
        let bytes = match body {
            Some(body) => serde_json::to_vec(body).map_err(|err| PeerError::Unreachable(err.to_string()))?,
            None => Vec::new(),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{}", peer.url.base, path))
            .header(NODE_HEADER, &self.node_id)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json");
        if let Some(authorization) = &peer.url.authorization {
            request = request.header(http::header::AUTHORIZATION, authorization);
        }
        let request = request
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|err| PeerError::Unreachable(err.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|err| PeerError::Unreachable(format!("cannot reach {}: {err}", peer.url.base)))?;
            let status = response.status();
            let their_id = response
                .headers()
                .get(NODE_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|err| PeerError::Unreachable(format!("reading from {}: {err}", peer.url.base)))?
                .to_bytes();
            Ok::<_, PeerError>((status, their_id, body))
        };
        let (status, their_id, body) = tokio::time::timeout(self.settings.request_timeout, exchange)
            .await
            .map_err(|_| PeerError::Unreachable(format!("{} did not answer in time", peer.url.base)))??;
        if their_id.as_deref() == Some(self.node_id.as_str()) || status == StatusCode::LOOP_DETECTED {
            return Err(PeerError::IsSelf);
        }
        if !status.is_success() {
            return Err(PeerError::Refused {
                status,
                body: String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
            });
        }
        if let Some(id) = their_id {
            peer.lock().node_id = Some(id);
        }
        serde_json::from_slice(&body)
            .map_err(|err| PeerError::Unreachable(format!("{}: bad answer: {err}", peer.url.base)))
    }

    fn note_outcome<T>(&self, peer: &Peer, outcome: &Result<T, PeerError>) {
        let now = self.table.clock().now_ms();
        let mut state = peer.lock();
        match outcome {
            Ok(_) => {
                if !state.reachable && state.last_success > 0 {
                    tracing::info!(peer = %peer.url.base, "peer reachable again");
                }
                state.reachable = true;
                state.last_success = now;
                state.last_error = None;
            }
            Err(PeerError::IsSelf) => {}
            Err(err) => {
                if state.reachable {
                    tracing::warn!(peer = %peer.url.base, error = %err, "peer unreachable");
                }
                state.reachable = false;
                state.last_error = Some(err.to_string());
            }
        }
    }

    fn mark_self(&self, peer: &Peer) {
        if !peer.is_self.swap(true, Ordering::Relaxed) {
            tracing::info!(peer = %peer.url.base, "the peer is this node; skipping it");
        }
        let mut state = peer.lock();
        state.queue.clear();
    }

    /// At start: takes a full copy from the first peer that answers, trying for up to
    /// `sync_timeout`, then suspends eviction for the warm-up period. Returns the peer
    /// the copy came from.
    pub async fn warm_up(&self, shutdown: &CancellationToken) -> Option<String> {
        let now = self.table.clock().now_ms();
        self.table
            .suspend_eviction_until(now + self.settings.warmup.as_millis() as u64);
        if self.peers.is_empty() {
            return None;
        }
        let deadline = tokio::time::Instant::now() + self.settings.sync_timeout;
        let mut pause = self.settings.retry_initial;
        loop {
            for peer in self.live_peers() {
                let outcome = self
                    .call::<(), Snapshot>(peer, Method::GET, "/v1/replication/snapshot", None)
                    .await;
                self.note_outcome(peer, &outcome);
                match outcome {
                    Ok(snapshot) => {
                        let (records, tombstones) = (snapshot.instances.len(), snapshot.tombstones.len());
                        self.apply_snapshot(snapshot);
                        tracing::info!(peer = %peer.url.base, records, tombstones, "warmed up from a peer");
                        return Some(peer.url.base.clone());
                    }
                    Err(PeerError::IsSelf) => self.mark_self(peer),
                    Err(err) => tracing::debug!(peer = %peer.url.base, error = %err, "no warm-up copy"),
                }
            }
            if tokio::time::Instant::now() + pause > deadline || self.live_peers().next().is_none() {
                tracing::warn!("no peer gave a copy of the registry; starting with what clients register");
                return None;
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shutdown.cancelled() => return None,
            }
            pause = (pause * 2).min(self.settings.retry_max);
        }
    }

    fn apply_snapshot(&self, snapshot: Snapshot) -> usize {
        let mut applied = 0;
        for tombstone in snapshot.tombstones {
            if matches!(self.table.apply_tombstone(tombstone), Applied::Stored(Some(_))) {
                applied += 1;
            }
        }
        for instance in snapshot.instances {
            if matches!(self.table.apply_record(instance), Applied::Stored(Some(_))) {
                applied += 1;
            }
        }
        applied
    }

    /// Starts one replication task and one anti-entropy task per peer.
    pub fn spawn(self: &Arc<Self>, shutdown: &CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for peer in &self.peers {
            let cluster = self.clone();
            let (peer_for_sender, token) = (peer.clone(), shutdown.clone());
            tasks.push(tokio::spawn(async move {
                cluster.send_loop(&peer_for_sender, &token).await
            }));
            let cluster = self.clone();
            let (peer_for_repair, token) = (peer.clone(), shutdown.clone());
            tasks.push(tokio::spawn(async move {
                cluster.anti_entropy_loop(&peer_for_repair, &token).await
            }));
        }
        tasks
    }

    async fn send_loop(&self, peer: &Peer, shutdown: &CancellationToken) {
        let mut pause = self.settings.retry_initial;
        while !peer.is_self.load(Ordering::Relaxed) {
            let empty = peer.lock().queue.is_empty();
            if empty {
                tokio::select! {
                    () = peer.wake.notified() => {}
                    () = shutdown.cancelled() => return,
                }
                // Let a burst of writes fill the batch.
                tokio::time::sleep(self.settings.batch_delay).await;
            }
            let batch: Vec<(u64, ReplicationItem)> = {
                let mut state = peer.lock();
                let take = state.queue.len().min(self.settings.batch_size);
                let batch: Vec<_> = state.queue.drain(..take).collect();
                state.in_flight_since = batch.first().map(|(queued, _)| *queued);
                batch
            };
            if batch.is_empty() {
                continue;
            }
            let body = ReplicationBatch {
                items: batch.iter().map(|(_, item)| item.clone()).collect(),
            };
            let outcome = self
                .call::<_, ReplicationResponse>(peer, Method::POST, "/v1/replication/batch", Some(&body))
                .await;
            self.note_outcome(peer, &outcome);
            // Delivered, or back in the queue below: no longer in flight either way.
            peer.lock().in_flight_since = None;
            match outcome {
                Ok(response) => {
                    pause = self.settings.retry_initial;
                    let sent = batch.len() as u64;
                    let lag = self
                        .table
                        .clock()
                        .now_ms()
                        .saturating_sub(batch.first().map_or(0, |(queued, _)| *queued));
                    metrics::histogram!("rtalpha_registry_replication_batch_lag_seconds").record(lag as f64 / 1000.0);
                    peer.lock().replicated_total += sent;
                    self.handle_results(peer, &body.items, response);
                    let resync = peer.lock().resync_pending;
                    if resync {
                        self.repair(peer).await;
                    }
                }
                Err(PeerError::IsSelf) => self.mark_self(peer),
                Err(err) => {
                    tracing::debug!(peer = %peer.url.base, error = %err, "replication batch failed; retrying");
                    // Put the batch back in front, oldest first, unless that overflows.
                    {
                        let mut state = peer.lock();
                        if state.queue.len() + batch.len() > self.settings.max_backlog {
                            state.dropped_total += (state.queue.len() + batch.len()) as u64;
                            state.queue.clear();
                            state.resync_pending = true;
                        } else {
                            for entry in batch.into_iter().rev() {
                                state.queue.push_front(entry);
                            }
                        }
                    }
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = shutdown.cancelled() => return,
                    }
                    pause = (pause * 2).min(self.settings.retry_max);
                }
            }
        }
    }

    /// Acts on what the peer said of each item: send the record it lacks, adopt the
    /// newer record or cancellation it holds.
    fn handle_results(&self, peer: &Peer, items: &[ReplicationItem], response: ReplicationResponse) {
        if response.results.len() < items.len() {
            tracing::warn!(
                peer = %peer.url.base,
                sent = items.len(),
                answered = response.results.len(),
                "the peer answered fewer results than items; anti-entropy will repair any loss"
            );
        }
        for (item, result) in items.iter().zip(response.results) {
            match (result.status, item) {
                (404, ReplicationItem::Renew { app, instance_id, .. }) => {
                    if let Some(instance) = self.table.read().instance(app, instance_id) {
                        self.enqueue(
                            peer,
                            ReplicationItem::Register {
                                instance: Box::new(instance),
                            },
                        );
                    }
                }
                (409, _) => {
                    if let Some(instance) = result.instance {
                        self.table.apply_record(instance);
                    } else if let Some(tombstone) = result.tombstone {
                        self.table.apply_tombstone(tombstone);
                    }
                }
                _ => {}
            }
        }
    }

    /// Anti-entropy rounds every interval while the peer answers; after a failed
    /// round (or a warm-up that could not reach it) the next one comes after the
    /// retry backoff instead, so a peer that was down at start or came back from a
    /// partition is reconciled, and counted reachable again, within seconds rather
    /// than a whole interval later.
    async fn anti_entropy_loop(&self, peer: &Peer, shutdown: &CancellationToken) {
        let interval = self.settings.anti_entropy_interval;
        let mut backoff = self.settings.retry_initial;
        let mut wait = if peer.lock().last_error.is_some() {
            backoff.min(interval)
        } else {
            interval
        };
        while !peer.is_self.load(Ordering::Relaxed) {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
            if self.repair(peer).await.is_some() {
                backoff = self.settings.retry_initial;
                wait = interval;
            } else {
                wait = backoff.min(interval);
                backoff = backoff.saturating_mul(2).min(self.settings.retry_max);
            }
        }
    }

    /// One anti-entropy round with a peer: compare, pull what it holds newer, push what
    /// this node holds newer.
    pub async fn repair(&self, peer: &Peer) -> Option<usize> {
        let ours = self.table.digest_entries();
        let digest = Digest {
            apps: ours
                .iter()
                .map(|(app, entries)| (app.clone(), entries_hash(entries)))
                .collect(),
        };
        let outcome = self
            .call::<_, DigestReply>(peer, Method::POST, "/v1/replication/digest", Some(&digest))
            .await;
        self.note_outcome(peer, &outcome);
        let reply = match outcome {
            Ok(reply) => reply,
            Err(PeerError::IsSelf) => {
                self.mark_self(peer);
                return None;
            }
            Err(err) => {
                tracing::debug!(peer = %peer.url.base, error = %err, "anti-entropy round failed");
                return None;
            }
        };
        let plan = plan_repair(&ours, &reply.apps);
        let mut repaired = 0;
        for tombstone in plan.adopt_tombstones {
            if matches!(self.table.apply_tombstone(tombstone), Applied::Stored(Some(_))) {
                repaired += 1;
            }
        }
        if !plan.fetch.is_empty() {
            let request = FetchRequest { keys: plan.fetch };
            let fetched = self
                .call::<_, Snapshot>(peer, Method::POST, "/v1/replication/fetch", Some(&request))
                .await;
            self.note_outcome(peer, &fetched);
            match fetched {
                Ok(snapshot) => repaired += self.apply_snapshot(snapshot),
                Err(err) => {
                    tracing::debug!(peer = %peer.url.base, error = %err, "anti-entropy fetch failed");
                    return None;
                }
            }
        }
        let pushes = self.table.records(&plan.push);
        let now = self.table.clock().now_ms();
        for instance in pushes.instances {
            // A lease that has run out is left to expire everywhere, not spread.
            let expires = instance.lease.last_renewal_timestamp + u64::from(instance.lease.duration_secs) * 1000;
            if expires >= now {
                self.enqueue(
                    peer,
                    ReplicationItem::Register {
                        instance: Box::new(instance),
                    },
                );
                repaired += 1;
            }
        }
        for tombstone in pushes.tombstones {
            self.enqueue(peer, ReplicationItem::Cancel { tombstone });
            repaired += 1;
        }
        let mut state = peer.lock();
        state.repaired_total += repaired as u64;
        if state.resync_pending {
            tracing::info!(peer = %peer.url.base, repaired, "peer resynced");
        }
        state.resync_pending = false;
        drop(state);
        if repaired > 0 {
            tracing::info!(peer = %peer.url.base, repaired, "anti-entropy repaired differences");
        }
        Some(repaired)
    }

    /// Peers as configured, for tests and tooling.
    pub fn peer_urls(&self) -> Vec<String> {
        self.live_peers().map(|peer| peer.url.base.clone()).collect()
    }

    /// Runs one anti-entropy round with every peer now.
    pub async fn repair_all(&self) {
        for peer in self.live_peers() {
            self.repair(peer).await;
        }
    }
}

/// The digest reply for a peer's digest: this node's entries of every app whose hash
/// differs from the peer's (including apps only one side holds).
pub fn answer_digest(table: &LeaseTable, digest: &Digest) -> DigestReply {
    let ours = table.digest_entries();
    let mut apps = BTreeMap::new();
    for (app, entries) in &ours {
        if digest.apps.get(app) != Some(&entries_hash(entries)) {
            apps.insert(app.clone(), entries.clone());
        }
    }
    for app in digest.apps.keys() {
        if !ours.contains_key(app) {
            apps.insert(app.clone(), Vec::new());
        }
    }
    DigestReply { apps }
}

/// What an anti-entropy round does, worked out from both sides' entries.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RepairPlan {
    /// Records the peer holds newer (or this node lacks): fetch them.
    pub fetch: Vec<(String, String)>,
    /// Cancellations the peer holds newer: apply them here.
    pub adopt_tombstones: Vec<Tombstone>,
    /// Records or cancellations this node holds newer (or the peer lacks): send them.
    pub push: Vec<(String, String)>,
}

/// Compares this node's entries with a peer's for the apps the peer listed.
pub fn plan_repair(
    ours: &BTreeMap<String, Vec<DigestEntry>>,
    theirs: &BTreeMap<String, Vec<DigestEntry>>,
) -> RepairPlan {
    let mut plan = RepairPlan::default();
    let empty = Vec::new();
    for (app, their_entries) in theirs {
        let our_entries: HashMap<&str, &DigestEntry> = ours
            .get(app)
            .unwrap_or(&empty)
            .iter()
            .map(|entry| (entry.instance_id.as_str(), entry))
            .collect();
        let their_map: HashMap<&str, &DigestEntry> = their_entries
            .iter()
            .map(|entry| (entry.instance_id.as_str(), entry))
            .collect();
        for (id, theirs) in &their_map {
            let newer_there = our_entries.get(id).is_none_or(|ours| theirs.stamp > ours.stamp);
            if !newer_there {
                continue;
            }
            if theirs.deleted {
                // A cancellation of something this node does not hold changes nothing.
                if our_entries.get(id).is_some_and(|ours| !ours.deleted) {
                    plan.adopt_tombstones.push(Tombstone {
                        app: app.clone(),
                        instance_id: (*id).to_owned(),
                        stamp: theirs.stamp,
                    });
                }
            } else {
                plan.fetch.push((app.clone(), (*id).to_owned()));
            }
        }
        for (id, ours) in &our_entries {
            let newer_here = their_map.get(id).is_none_or(|theirs| ours.stamp > theirs.stamp);
            let worth_sending = !ours.deleted || their_map.get(id).is_some_and(|theirs| !theirs.deleted);
            if newer_here && worth_sending {
                plan.push.push((app.clone(), (*id).to_owned()));
            }
        }
    }
    plan.fetch.sort();
    plan.push.sort();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, dirty: u64, updated: u64, deleted: bool) -> DigestEntry {
        DigestEntry {
            instance_id: id.to_owned(),
            status: None,
            stamp: Stamp { dirty, updated },
            deleted,
        }
    }

    #[test]
    fn peer_urls_parse_credentials_and_refuse_what_they_cannot_use() {
        let url = PeerUrl::parse("http://ops:pw@127.0.0.1:8762/").unwrap();
        assert_eq!(url.base, "http://127.0.0.1:8762");
        assert_eq!(url.authority, "127.0.0.1:8762");
        assert_eq!(
            url.authorization.as_ref().and_then(|value| value.to_str().ok()),
            Some("Basic b3BzOnB3")
        );
        for bad in [
            "https://a:1",
            "http://a",
            "http://a:1/eureka",
            "127.0.0.1:8761",
            "http://:80",
        ] {
            assert!(PeerUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_repair_plan_takes_the_newer_side_of_every_difference() {
        let ours = BTreeMap::from([(
            "A".to_owned(),
            vec![
                entry("same", 1, 1, false),
                entry("newer-here", 5, 5, false),
                entry("newer-there", 1, 1, false),
                entry("only-here", 1, 1, false),
                entry("cancelled-here", 9, 9, true),
                entry("revived-there", 1, 2, true),
            ],
        )]);
        let theirs = BTreeMap::from([
            (
                "A".to_owned(),
                vec![
                    entry("same", 1, 1, false),
                    entry("newer-here", 4, 9, false),
                    entry("newer-there", 1, 3, false),
                    entry("only-there", 1, 1, false),
                    entry("cancelled-here", 8, 8, false),
                    entry("revived-there", 2, 3, false),
                    entry("gone-everywhere", 1, 1, true),
                ],
            ),
            ("B".to_owned(), vec![entry("b1", 1, 1, false)]),
        ]);
        let plan = plan_repair(&ours, &theirs);
        let key = |app: &str, id: &str| (app.to_owned(), id.to_owned());
        assert_eq!(
            plan.fetch,
            vec![
                key("A", "newer-there"),
                key("A", "only-there"),
                key("A", "revived-there"),
                key("B", "b1")
            ]
        );
        assert_eq!(
            plan.push,
            vec![
                key("A", "cancelled-here"),
                key("A", "newer-here"),
                key("A", "only-here")
            ]
        );
        assert!(plan.adopt_tombstones.is_empty());

        let cancelled_there = BTreeMap::from([("A".to_owned(), vec![entry("x", 2, 2, true)])]);
        let live_here = BTreeMap::from([("A".to_owned(), vec![entry("x", 1, 1, false)])]);
        let plan = plan_repair(&live_here, &cancelled_there);
        assert_eq!(plan.adopt_tombstones.len(), 1);
        assert!(plan.fetch.is_empty() && plan.push.is_empty());
    }

    #[test]
    fn hashes_are_stable_and_sensitive_to_stamps() {
        let a = [entry("x", 1, 2, false)];
        assert_eq!(entries_hash(&a), entries_hash(&[entry("x", 1, 2, false)]));
        assert_ne!(entries_hash(&a), entries_hash(&[entry("x", 1, 3, false)]));
        assert_ne!(entries_hash(&a), entries_hash(&[entry("x", 1, 2, true)]));
        assert_ne!(entries_hash(&a), entries_hash(&[]));
    }

    #[test]
    fn ownership_is_deterministic_and_spreads_over_nodes() {
        let nodes = ["n1:1", "n2:2", "n3:3"];
        let mut counts = HashMap::new();
        for i in 0..300 {
            let key = format!("instance-{i}");
            let first = owner(&key, nodes.iter().copied()).unwrap();
            let reversed = owner(&key, nodes.iter().rev().copied()).unwrap();
            assert_eq!(first, reversed, "the order of nodes does not matter");
            *counts.entry(first).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|&n| n > 50), "{counts:?}");
        // Removing a node only moves the keys it owned.
        for i in 0..300 {
            let key = format!("instance-{i}");
            let before = owner(&key, nodes.iter().copied()).unwrap();
            let after = owner(&key, ["n1:1", "n2:2"]).unwrap();
            if before != "n3:3" {
                assert_eq!(before, after);
            }
        }
    }
}
