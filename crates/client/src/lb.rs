//! Load-balanced HTTP calls to `lb://service-name/path` URLs.
//!
//! A call picks an instance of the service from the discovery client's live
//! view (UP instances with a plain port, same zone first), by round-robin,
//! random choice, or the power of two choices over in-flight requests times
//! the instance's latency (an exponentially weighted moving average). The
//! stack, outermost first, and why in that order:
//!
//! 1. the service's circuit breaker: when the whole service fails, callers get
//!    the fallback at once instead of trying every instance;
//! 2. retries on another instance within the retry budget: a connection that
//!    was refused never reached the server and is always retried; a timeout
//!    or a 502/503/504 only for idempotent methods;
//! 3. per-instance outlier ejection: consecutive failures (one refused
//!    connection is enough) take an instance out of the rotation for a time
//!    that grows with each ejection, never more than a share of the service;
//! 4. the per-call timeout, around the one HTTP exchange.
//!
//! `x-request-id` and `traceparent` go with every call: kept when the caller
//! set them, made up when not (a new span id under the caller's trace).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use rtalpha_proto::{Instance, Status};
use rtalpha_resilience::breaker::{BreakerConfig, BreakerSnapshot, CircuitBreaker, Outcome, Rejected, WindowKind};
use rtalpha_resilience::retry::{Retry, RetryConfig, Verdict};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::discovery::DiscoveryClient;

/// How an instance is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Each instance in turn.
    RoundRobin,
    /// Any instance, uniformly.
    Random,
    /// The better of two random instances by in-flight requests × latency.
    PowerOfTwo,
}

/// Outlier ejection settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EjectionSettings {
    /// Consecutive failures (timeouts, 5xx) that eject an instance.
    pub consecutive_failures: u32,
    /// A refused connection ejects at once.
    pub eject_on_connect_error: bool,
    /// The first ejection's length; the n-th lasts n times this.
    #[serde(with = "humantime_serde")]
    pub base_time: Duration,
    /// No ejection lasts longer.
    #[serde(with = "humantime_serde")]
    pub max_time: Duration,
    /// At most this percentage of a service's instances is ejected at once.
    pub max_ejected_percent: u32,
}

impl Default for EjectionSettings {
    fn default() -> Self {
        EjectionSettings {
            consecutive_failures: 5,
            eject_on_connect_error: true,
            base_time: Duration::from_secs(5),
            max_time: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// The load balancer's settings (`[lb]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LbSettings {
    /// How an instance is chosen.
    pub strategy: Strategy,
    /// Prefer instances of the caller's zone when there are any.
    pub same_zone: bool,
    /// The caller's zone.
    pub zone: Option<String>,
    /// The deadline of one attempt.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The deadline of a connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Retries on another instance.
    pub retry: RetryConfig,
    /// Outlier ejection of instances.
    pub ejection: EjectionSettings,
    /// The circuit breaker of each service.
    pub breaker: BreakerConfig,
}

impl Default for LbSettings {
    fn default() -> Self {
        LbSettings {
            strategy: Strategy::PowerOfTwo,
            same_zone: true,
            zone: None,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            retry: RetryConfig::default(),
            ejection: EjectionSettings::default(),
            // A time window: its per-thread shards keep concurrent callers
            // of one service from contending (bench/README.md).
            breaker: BreakerConfig {
                window: WindowKind::Time,
                window_size: 10,
                ..BreakerConfig::default()
            },
        }
    }
}

impl LbSettings {
    /// The problems with these settings, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = Vec::new();
        problems.extend(self.retry.problems().into_iter().map(|p| format!("lb.retry.{p}")));
        problems.extend(self.breaker.problems().into_iter().map(|p| format!("lb.breaker.{p}")));
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            problems.push("lb.timeout and lb.connect_timeout must not be zero".to_owned());
        }
        if self.ejection.max_ejected_percent > 100 {
            problems.push("lb.ejection.max_ejected_percent must be at most 100".to_owned());
        }
        if self.ejection.consecutive_failures == 0 {
            problems.push("lb.ejection.consecutive_failures must be at least 1".to_owned());
        }
        problems
    }
}

/// Why a load-balanced call gave no answer from the service.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// The URL is not `lb://service/path`.
    #[error("not a load-balanced URL: {0}")]
    BadUrl(String),
    /// The service has no UP instance that could take the call.
    #[error("no instance of {service} can take the call")]
    NoInstance {
        /// The service.
        service: String,
    },
    /// The service's circuit breaker is open.
    #[error(transparent)]
    Open(Rejected),
    /// Every attempt failed; the last failure is named.
    #[error("{service}: {problem} (instance {instance})")]
    Upstream {
        /// The service.
        service: String,
        /// The instance of the last attempt.
        instance: String,
        /// What went wrong.
        problem: String,
    },
    /// The service answered with a server error (with the fallback API only).
    #[error("{service} answered {status}")]
    Status {
        /// The service.
        service: String,
        /// Its answer's status.
        status: StatusCode,
    },
}

/// The client; clones share pools, breakers and instance statistics.
#[derive(Clone, Debug)]
pub struct LbClient {
    shared: Arc<Shared>,
}

/// How one instance is doing, for tests and health pages.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InstanceStats {
    /// The instance id.
    pub instance_id: String,
    /// Requests in flight now.
    pub in_flight: u32,
    /// Latency average, in microseconds.
    pub latency_micros: u64,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Ejections since the last success.
    pub ejections: u32,
    /// Whether it is ejected now.
    pub ejected: bool,
}

#[derive(Debug)]
struct Shared {
    discovery: DiscoveryClient,
    settings: LbSettings,
    http: Client<HttpConnector, Full<Bytes>>,
    retry: Retry,
    services: Mutex<HashMap<String, Arc<ServiceState>>>,
    epoch: Instant,
}

#[derive(Debug)]
struct ServiceState {
    name: String,
    breaker: CircuitBreaker,
    endpoints: RwLock<HashMap<String, Arc<Endpoint>>>,
    next: AtomicUsize,
}

#[derive(Debug)]
struct Endpoint {
    instance_id: String,
    in_flight: AtomicU32,
    /// Latency average in nanoseconds; 0 before the first answer.
    latency: AtomicU64,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    /// Nanoseconds since the client's epoch until which it is ejected.
    ejected_until: AtomicU64,
}

/// One candidate for a call.
#[derive(Clone)]
struct Candidate {
    instance: Arc<Instance>,
    endpoint: Arc<Endpoint>,
}

enum Attempt {
    Answered(Response<Bytes>),
    Refused(String),
    Failed(String),
}

impl LbClient {
    /// A client over `discovery`'s view.
    pub fn new(discovery: DiscoveryClient, settings: LbSettings) -> Result<LbClient, String> {
        let problems = settings.problems();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(settings.connect_timeout));
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(LbClient {
            shared: Arc::new(Shared {
                retry: Retry::new("lb", settings.retry.clone()),
                discovery,
                settings,
                http,
                services: Mutex::new(HashMap::new()),
                epoch: Instant::now(),
            }),
        })
    }

    /// Sends `req` (its URI `lb://service/path`) to an instance of the
    /// service. A server error is an answer (`Ok`); see
    /// [`request_or_fallback`](Self::request_or_fallback) to treat it as a
    /// failure.
    pub async fn request(&self, req: Request<Bytes>) -> Result<Response<Bytes>, LbError> {
        self.shared.call(req).await
    }

    /// Sends `req`; when the service cannot answer (breaker open, no
    /// instance, every attempt failed, or a 5xx answer) the answer comes from
    /// `fallback`, which is told why.
    pub async fn request_or_fallback<F>(
        &self,
        req: Request<Bytes>,
        fallback: impl FnOnce(LbError) -> F,
    ) -> Result<Response<Bytes>, LbError>
    where
        F: Future<Output = Result<Response<Bytes>, LbError>>,
    {
        let service = req.uri().host().unwrap_or_default().to_owned();
        match self.shared.call(req).await {
            Ok(response) if response.status().is_server_error() => {
                let status = response.status();
                fallback(LbError::Status { service, status }).await
            }
            Ok(response) => Ok(response),
            Err(err) => fallback(err).await,
        }
    }

    /// A GET of `url` (`lb://service/path`).
    pub async fn get(&self, url: &str) -> Result<Response<Bytes>, LbError> {
        let req = Request::get(url)
            .body(Bytes::new())
            .map_err(|_| LbError::BadUrl(url.to_owned()))?;
        self.request(req).await
    }

    /// The instance the next call to `service` would go to (for diagnostics,
    /// and to measure the cost of a pick).
    pub fn choose(&self, service: &str) -> Option<Arc<Instance>> {
        let state = self.shared.service(service);
        self.shared.pick(&state, &[]).map(|candidate| candidate.instance)
    }

    /// The service's breaker, as it is now.
    pub fn breaker(&self, service: &str) -> BreakerSnapshot {
        self.shared.service(service).breaker.snapshot()
    }

    /// How each known instance of `service` is doing.
    pub fn instance_stats(&self, service: &str) -> Vec<InstanceStats> {
        let state = self.shared.service(service);
        let now = self.shared.nanos();
        let endpoints = state.endpoints.read().map(|e| e.clone()).unwrap_or_default();
        let mut stats: Vec<_> = endpoints
            .values()
            .map(|endpoint| InstanceStats {
                instance_id: endpoint.instance_id.clone(),
                in_flight: endpoint.in_flight.load(Ordering::Relaxed),
                latency_micros: endpoint.latency.load(Ordering::Relaxed) / 1000,
                consecutive_failures: endpoint.consecutive_failures.load(Ordering::Relaxed),
                ejections: endpoint.ejections.load(Ordering::Relaxed),
                ejected: endpoint.ejected_until.load(Ordering::Relaxed) > now,
            })
            .collect();
        stats.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        stats
    }
}

/// The client as a tower service, so that it can sit under the same layers
/// as any other (the gateway stacks its own on top).
impl tower::Service<Request<Bytes>> for LbClient {
    type Response = Response<Bytes>;
    type Error = LbError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Response<Bytes>, LbError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), LbError>> {
        // Admission is decided per call (breaker, instances), not here.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move { shared.call(req).await })
    }
}

impl Shared {
    fn nanos(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn service(&self, name: &str) -> Arc<ServiceState> {
        let key = name.to_ascii_uppercase();
        let mut services = match self.services.lock() {
            Ok(services) => services,
            Err(poisoned) => poisoned.into_inner(),
        };
        services
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(ServiceState {
                    breaker: CircuitBreaker::new(format!("service:{key}"), self.settings.breaker.clone()),
                    name: key,
                    endpoints: RwLock::new(HashMap::new()),
                    next: AtomicUsize::new(0),
                })
            })
            .clone()
    }

    async fn call(&self, mut req: Request<Bytes>) -> Result<Response<Bytes>, LbError> {
        let uri = req.uri().clone();
        let (Some("lb"), Some(service)) = (uri.scheme_str(), uri.host()) else {
            return Err(LbError::BadUrl(uri.to_string()));
        };
        let service = self.service(service);
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_owned();
        propagate_trace(req.headers_mut());
        let permit = service.breaker.try_acquire().map_err(LbError::Open)?;
        let result = self.attempts(&service, &path, &req).await;
        permit.record(match &result {
            Ok(response) if !response.status().is_server_error() => Outcome::Success,
            _ => Outcome::Failure,
        });
        let outcome = match &result {
            Ok(response) => response.status().as_str().to_owned(),
            Err(_) => "error".to_owned(),
        };
        metrics::counter!("rtalpha_client_requests_total", "service" => service.name.clone(), "outcome" => outcome)
            .increment(1);
        result
    }

    async fn attempts(
        &self,
        service: &ServiceState,
        path: &str,
        req: &Request<Bytes>,
    ) -> Result<Response<Bytes>, LbError> {
        let idempotent = matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
        );
        self.retry.deposit();
        let mut tried: Vec<String> = Vec::new();
        let mut attempt = 0u32;
        let mut last: Option<Attempt> = None;
        loop {
            let Some(candidate) = self.pick(service, &tried) else {
                // Nobody left to try: the last attempt's result stands.
                return match last {
                    None => Err(LbError::NoInstance {
                        service: service.name.clone(),
                    }),
                    Some(outcome) => self.conclude(service, tried.last().map(String::as_str), outcome),
                };
            };
            tried.push(candidate.endpoint.instance_id.clone());
            let outcome = self.send(service, &candidate, path, req).await;
            let verdict = match &outcome {
                Attempt::Answered(response) if is_retryable_status(response.status()) => Verdict::MayHaveBeenSent,
                Attempt::Answered(_) => Verdict::Done,
                Attempt::Refused(_) => Verdict::NotSent,
                Attempt::Failed(_) => Verdict::MayHaveBeenSent,
            };
            if !(self.retry.may_retry(attempt, verdict, idempotent) && self.retry.withdraw()) {
                return self.conclude(service, Some(&candidate.endpoint.instance_id), outcome);
            }
            tracing::debug!(service = %service.name, instance = %candidate.endpoint.instance_id, "retrying on another instance");
            last = Some(outcome);
            tokio::time::sleep(self.retry.delay(attempt)).await;
            attempt += 1;
        }
    }

    fn conclude(
        &self,
        service: &ServiceState,
        instance: Option<&str>,
        outcome: Attempt,
    ) -> Result<Response<Bytes>, LbError> {
        match outcome {
            Attempt::Answered(response) => Ok(response),
            Attempt::Refused(problem) | Attempt::Failed(problem) => Err(LbError::Upstream {
                service: service.name.clone(),
                instance: instance.unwrap_or_default().to_owned(),
                problem,
            }),
        }
    }

    /// Chooses an instance that has not been tried for this call.
    fn pick(&self, service: &ServiceState, tried: &[String]) -> Option<Candidate> {
        let instances = self.discovery.instances(&service.name);
        let now = self.nanos();
        let mut candidates: Vec<Candidate> = self
            .candidates(service, &instances)
            .into_iter()
            .filter(|c| {
                !tried.contains(&c.instance.instance_id) && c.endpoint.ejected_until.load(Ordering::Acquire) <= now
            })
            .collect();
        if self.settings.same_zone
            && let Some(zone) = &self.settings.zone
            && candidates.iter().any(|c| c.instance.zone.as_deref() == Some(zone))
        {
            candidates.retain(|c| c.instance.zone.as_deref() == Some(zone));
        }
        match candidates.len() {
            0 => None,
            1 => candidates.pop(),
            count => {
                let chosen = match self.settings.strategy {
                    Strategy::RoundRobin => service.next.fetch_add(1, Ordering::Relaxed) % count,
                    Strategy::Random => rand::rng().random_range(0..count),
                    Strategy::PowerOfTwo => {
                        let mut rng = rand::rng();
                        let first = rng.random_range(0..count);
                        let second = (first + rng.random_range(1..count)) % count;
                        if load(&candidates[second].endpoint) < load(&candidates[first].endpoint) {
                            second
                        } else {
                            first
                        }
                    }
                };
                Some(candidates.swap_remove(chosen))
            }
        }
    }

    /// The UP instances with a plain port, each with its statistics; the
    /// statistics of instances that left the view are dropped now and then.
    fn candidates(&self, service: &ServiceState, instances: &[Arc<Instance>]) -> Vec<Candidate> {
        let usable = || instances.iter().filter(|instance| can_take_calls(instance));
        {
            let endpoints = match service.endpoints.read() {
                Ok(endpoints) => endpoints,
                Err(poisoned) => poisoned.into_inner(),
            };
            let known: Option<Vec<Candidate>> = usable()
                .map(|instance| {
                    endpoints.get(&instance.instance_id).map(|endpoint| Candidate {
                        instance: instance.clone(),
                        endpoint: endpoint.clone(),
                    })
                })
                .collect();
            if let Some(known) = known {
                return known;
            }
        }
        // A new instance: add its statistics under the write lock.
        let mut endpoints = match service.endpoints.write() {
            Ok(endpoints) => endpoints,
            Err(poisoned) => poisoned.into_inner(),
        };
        if endpoints.len() > instances.len() * 2 + 8 {
            endpoints.retain(|id, _| instances.iter().any(|i| &i.instance_id == id));
        }
        usable()
            .map(|instance| {
                let endpoint = endpoints
                    .entry(instance.instance_id.clone())
                    .or_insert_with(|| {
                        Arc::new(Endpoint {
                            instance_id: instance.instance_id.clone(),
                            in_flight: AtomicU32::new(0),
                            latency: AtomicU64::new(0),
                            consecutive_failures: AtomicU32::new(0),
                            ejections: AtomicU32::new(0),
                            ejected_until: AtomicU64::new(0),
                        })
                    })
                    .clone();
                Candidate {
                    instance: instance.clone(),
                    endpoint,
                }
            })
            .collect()
    }

    async fn send(&self, service: &ServiceState, candidate: &Candidate, path: &str, req: &Request<Bytes>) -> Attempt {
        let instance = &candidate.instance;
        let endpoint = &candidate.endpoint;
        let host = if instance.ip_addr.is_empty() {
            instance.host_name.as_str()
        } else {
            instance.ip_addr.as_str()
        };
        let target = format!("http://{host}:{}{path}", instance.port.number);
        let uri: Uri = match target.parse() {
            Ok(uri) => uri,
            Err(err) => return Attempt::Refused(format!("{target}: {err}")),
        };
        let mut outgoing = Request::builder().method(req.method().clone()).uri(uri);
        for (name, value) in req.headers() {
            if name != http::header::HOST {
                outgoing = outgoing.header(name, value);
            }
        }
        let Ok(outgoing) = outgoing.body(Full::new(req.body().clone())) else {
            return Attempt::Refused(format!("{target}: cannot build the request"));
        };
        endpoint.in_flight.fetch_add(1, Ordering::AcqRel);
        let started = Instant::now();
        let exchange = async {
            let response = self.http.request(outgoing).await?;
            let (parts, body) = response.into_parts();
            let bytes = body.collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Response::from_parts(parts, bytes))
        };
        let result = tokio::time::timeout(self.settings.timeout, exchange).await;
        endpoint.in_flight.fetch_sub(1, Ordering::AcqRel);
        let elapsed = started.elapsed();
        let attempt = match result {
            Ok(Ok(response)) => Attempt::Answered(response),
            Ok(Err(err)) if is_connect_error(err.as_ref()) => {
                Attempt::Refused(format!("{target}: cannot connect: {err}"))
            }
            Ok(Err(err)) => Attempt::Failed(format!("{target}: {err}")),
            Err(_) => Attempt::Failed(format!("{target}: no answer within {:?}", self.settings.timeout)),
        };
        self.observe(service, endpoint, &attempt, elapsed);
        metrics::histogram!("rtalpha_client_request_duration_seconds", "service" => instance.app.clone(), "instance" => instance.instance_id.clone())
            .record(elapsed.as_secs_f64());
        attempt
    }

    /// Updates the instance's latency and failure record, ejecting it when it
    /// has failed enough.
    fn observe(&self, service: &ServiceState, endpoint: &Endpoint, attempt: &Attempt, elapsed: Duration) {
        let sample = elapsed.as_nanos() as u64;
        let old = endpoint.latency.load(Ordering::Relaxed);
        // EWMA with weight 1/4 for the new sample; the first sample is taken whole.
        let average = if old == 0 { sample } else { old - old / 4 + sample / 4 };
        endpoint.latency.store(average.max(1), Ordering::Relaxed);
        let (failed, refused) = match attempt {
            Attempt::Answered(response) => (is_retryable_status(response.status()), false),
            Attempt::Refused(_) => (true, true),
            Attempt::Failed(_) => (true, false),
        };
        if !failed {
            endpoint.consecutive_failures.store(0, Ordering::Release);
            endpoint.ejections.store(0, Ordering::Release);
            return;
        }
        let failures = endpoint.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        let ejection = &self.settings.ejection;
        if failures >= ejection.consecutive_failures || (refused && ejection.eject_on_connect_error) {
            self.eject(service, endpoint);
        }
    }

    fn eject(&self, service: &ServiceState, endpoint: &Endpoint) {
        let now = self.nanos();
        if endpoint.ejected_until.load(Ordering::Acquire) > now {
            return;
        }
        let total = self
            .discovery
            .instances(&service.name)
            .iter()
            .filter(|instance| can_take_calls(instance))
            .count();
        let ejected = service
            .endpoints
            .read()
            .map(|endpoints| {
                endpoints
                    .values()
                    .filter(|e| e.ejected_until.load(Ordering::Acquire) > now)
                    .count()
            })
            .unwrap_or_default();
        // Never more than the share, and never the last instance standing
        // unless the share is 100 %: a service that is down altogether is the
        // service breaker's to handle.
        let limit = total * self.settings.ejection.max_ejected_percent as usize / 100;
        if ejected + 1 > limit.max(1) || (total <= 1 && self.settings.ejection.max_ejected_percent < 100) {
            tracing::warn!(instance = %endpoint.instance_id, ejected, total, "not ejecting: the ejection limit is reached");
            return;
        }
        let ejections = endpoint.ejections.fetch_add(1, Ordering::AcqRel) + 1;
        let length = self
            .settings
            .ejection
            .base_time
            .saturating_mul(ejections)
            .min(self.settings.ejection.max_time);
        endpoint
            .ejected_until
            .store(now + length.as_nanos() as u64, Ordering::Release);
        endpoint.consecutive_failures.store(0, Ordering::Release);
        metrics::counter!("rtalpha_client_ejections_total", "instance" => endpoint.instance_id.clone()).increment(1);
        tracing::warn!(instance = %endpoint.instance_id, ?length, ejections, "instance ejected");
    }
}

/// Whether an instance may be sent calls: UP, with a plain port.
fn can_take_calls(instance: &Instance) -> bool {
    instance.status == Status::Up && instance.port.enabled
}

/// The load of an endpoint for the power of two choices: (in flight + 1) ×
/// latency; an instance without a latency yet counts as fast, so it is tried.
fn load(endpoint: &Endpoint) -> u128 {
    let in_flight = u128::from(endpoint.in_flight.load(Ordering::Relaxed)) + 1;
    in_flight * u128::from(endpoint.latency.load(Ordering::Relaxed).max(1))
}

fn is_retryable_status(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// Whether the request failed before a connection was made, so the server
/// cannot have seen it.
fn is_connect_error(err: &(dyn std::error::Error + 'static)) -> bool {
    err.downcast_ref::<hyper_util::client::legacy::Error>()
        .is_some_and(|err| err.is_connect())
}

/// Keeps the caller's `x-request-id` or makes one; keeps the caller's trace
/// with a new span id, or starts a trace.
fn propagate_trace(headers: &mut http::HeaderMap) {
    let mut rng = rand::rng();
    if !headers.contains_key("x-request-id") {
        let id = format!("{:032x}", rng.random::<u128>());
        if let Ok(value) = HeaderValue::from_str(&id) {
            headers.insert("x-request-id", value);
        }
    }
    let span = format!("{:016x}", rng.random::<u64>().max(1));
    let traceparent = headers
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let parts: Vec<&str> = value.split('-').collect();
            (parts.len() == 4 && parts[1].len() == 32).then(|| format!("00-{}-{span}-{}", parts[1], parts[3]))
        })
        .unwrap_or_else(|| format!("00-{:032x}-{span}-01", rng.random::<u128>().max(1)));
    if let Ok(value) = HeaderValue::from_str(&traceparent) {
        headers.insert("traceparent", value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_is_continued_with_a_new_span() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        headers.insert("x-request-id", HeaderValue::from_static("abc"));
        propagate_trace(&mut headers);
        let traceparent = headers["traceparent"].to_str().expect("ascii");
        assert!(traceparent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
        assert!(traceparent.ends_with("-01"));
        assert!(!traceparent.contains("b7ad6b7169203331"));
        assert_eq!(headers["x-request-id"], "abc");
    }

    #[test]
    fn a_trace_is_started_when_there_is_none() {
        let mut headers = http::HeaderMap::new();
        propagate_trace(&mut headers);
        let traceparent = headers["traceparent"].to_str().expect("ascii");
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "01")
        );
        assert_eq!(headers["x-request-id"].len(), 32);
    }
}
