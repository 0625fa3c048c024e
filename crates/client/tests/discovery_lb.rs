//! The discovery client and the load balancer against a real registry served
//! in-process, and real upstream HTTP servers on loopback that answer, fail,
//! hang, or refuse connections on demand.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::any;
use bytes::Bytes;
use rtalpha_client::discovery::{DiscoveryClient, DiscoverySettings};
use rtalpha_client::lb::{EjectionSettings, LbClient, LbError, LbSettings, Strategy};
use rtalpha_proto::registry::Registration;
use rtalpha_resilience::breaker::{BreakerConfig, State as BreakerState};
use rtalpha_resilience::retry::RetryConfig;
use rtalpha_runtime::health::{Health, HealthState};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const OK: u8 = 0;
const FAIL_500: u8 = 1;
const FAIL_503: u8 = 2;
const HANG: u8 = 3;

/// An upstream instance whose behaviour a test switches.
struct Upstream {
    port: u16,
    mode: Arc<AtomicU8>,
    hits: Arc<AtomicU64>,
    stop: CancellationToken,
}

#[derive(Clone)]
struct UpstreamState {
    name: &'static str,
    mode: Arc<AtomicU8>,
    hits: Arc<AtomicU64>,
    delay: Duration,
}

async fn answer(
    State(state): State<UpstreamState>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> (StatusCode, String) {
    state.hits.fetch_add(1, Ordering::SeqCst);
    if uri.path() == "/echo-headers" {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        return (
            StatusCode::OK,
            format!("{} {}", header("x-request-id"), header("traceparent")),
        );
    }
    if !state.delay.is_zero() {
        tokio::time::sleep(state.delay).await;
    }
    match state.mode.load(Ordering::SeqCst) {
        FAIL_500 => (StatusCode::INTERNAL_SERVER_ERROR, "broken".into()),
        FAIL_503 => (StatusCode::SERVICE_UNAVAILABLE, "unavailable".into()),
        HANG => std::future::pending().await,
        _ => (StatusCode::OK, state.name.into()),
    }
}

async fn upstream(name: &'static str, delay: Duration) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
    let port = listener.local_addr().expect("address").port();
    let (mode, hits, stop) = (
        Arc::new(AtomicU8::new(OK)),
        Arc::new(AtomicU64::new(0)),
        CancellationToken::new(),
    );
    let state = UpstreamState {
        name,
        mode: mode.clone(),
        hits: hits.clone(),
        delay,
    };
    let app = Router::new().fallback(any(answer)).with_state(state);
    let token = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await;
    });
    Upstream { port, mode, hits, stop }
}

/// A port with nothing listening on it.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("address").port()
}

struct Registry {
    base: String,
    stop: CancellationToken,
}

async fn registry() -> Registry {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind registry");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let stop = CancellationToken::new();
    let mut config = rtalpha_registry::Config::default();
    config.server.shutdown_grace = Duration::from_millis(200);
    // Sweep often, so that a lease the client failed to renew (2 s in these
    // tests) would be evicted within the tests' waits.
    config.registry.eviction_interval = Duration::from_millis(200);
    tokio::spawn(rtalpha_registry::run(config, listener, stop.clone()));
    Registry { base, stop }
}

fn settings(registries: &[&str]) -> DiscoverySettings {
    DiscoverySettings {
        urls: registries.iter().map(|url| url.to_string()).collect(),
        renewal_interval: Duration::from_millis(300),
        lease_duration: Duration::from_secs(2),
        delta_interval: Duration::from_millis(300),
        request_timeout: Duration::from_millis(500),
        retry: rtalpha_resilience::Backoff::new(Duration::from_millis(50), Duration::from_millis(300)),
        ..DiscoverySettings::default()
    }
}

fn registration(id: &str, port: u16) -> Registration {
    Registration {
        instance_id: Some(id.to_owned()),
        host_name: "127.0.0.1".to_owned(),
        ip_addr: Some("127.0.0.1".to_owned()),
        port: Some(port),
        ..Registration::default()
    }
}

/// An instance of `app` registered through its own discovery client.
async fn register(registry: &Registry, app: &str, id: &str, port: u16) -> DiscoveryClient {
    let client = DiscoveryClient::start(
        DiscoverySettings {
            fetch: false,
            ..settings(&[&registry.base])
        },
        app,
        Some(registration(id, port)),
        None,
    )
    .expect("discovery client");
    assert!(client.wait_registered(Duration::from_secs(5)).await, "{id} registered");
    client
}

/// A caller: a fetch-only discovery client and a load balancer over it.
async fn caller(registry: &Registry, lb: LbSettings) -> (DiscoveryClient, LbClient) {
    let discovery = DiscoveryClient::start(
        DiscoverySettings {
            register: false,
            ..settings(&[&registry.base])
        },
        "caller",
        None,
        None,
    )
    .expect("discovery client");
    assert!(discovery.wait_loaded(Duration::from_secs(5)).await, "view loaded");
    let lb = LbClient::new(discovery.clone(), lb).expect("lb client");
    (discovery, lb)
}

async fn wait_for_instances(discovery: &DiscoveryClient, app: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while discovery.instances(app).len() != count {
        assert!(
            Instant::now() < deadline,
            "{app} never had {count} instances in the view"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn lb_settings() -> LbSettings {
    LbSettings {
        strategy: Strategy::RoundRobin,
        timeout: Duration::from_millis(500),
        retry: RetryConfig {
            backoff: rtalpha_resilience::Backoff::new(Duration::from_millis(1), Duration::from_millis(5)),
            ..RetryConfig::default()
        },
        ejection: EjectionSettings {
            base_time: Duration::from_millis(400),
            max_ejected_percent: 50,
            ..EjectionSettings::default()
        },
        breaker: BreakerConfig {
            window_size: 6,
            minimum_calls: 6,
            open_wait: Duration::from_millis(400),
            half_open_calls: 1,
            half_open_max_time: Duration::from_millis(300),
            ..BreakerConfig::default()
        },
        ..LbSettings::default()
    }
}

async fn body_of(lb: &LbClient, url: &str) -> Result<String, LbError> {
    let response = lb.get(url).await?;
    Ok(String::from_utf8_lossy(response.body()).into_owned())
}

#[tokio::test]
async fn an_instance_registers_renews_and_deregisters() {
    let registry = registry().await;
    let instance = register(&registry, "orders", "orders-1", 9).await;
    let (discovery, _) = caller(&registry, lb_settings()).await;
    wait_for_instances(&discovery, "orders", 1).await;
    // Well past the 2 s lease: only renewals keep it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(discovery.instances("orders").len(), 1, "renewals kept the lease");
    let started = Instant::now();
    instance.shutdown().await;
    wait_for_instances(&discovery, "orders", 0).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the cancellation was pushed"
    );
    registry.stop.cancel();
}

#[tokio::test]
async fn a_renewal_answered_404_leads_to_a_new_registration() {
    let registry = registry().await;
    let _instance = register(&registry, "orders", "orders-1", 9).await;
    let (discovery, _) = caller(&registry, lb_settings()).await;
    wait_for_instances(&discovery, "orders", 1).await;
    // The registry forgets the instance behind the client's back.
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    let cancel = http::Request::delete(format!("{}/v1/apps/ORDERS/orders-1", registry.base))
        .body(http_body_util::Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(http.request(cancel).await.expect("cancel").status(), 200);
    wait_for_instances(&discovery, "orders", 0).await;
    // The next renewal gets 404 and registers again.
    wait_for_instances(&discovery, "orders", 1).await;
    registry.stop.cancel();
}

#[tokio::test]
async fn the_first_answering_registry_is_used_when_others_are_down() {
    let registry = registry().await;
    let dead = format!("http://127.0.0.1:{}", closed_port().await);
    let instance = DiscoveryClient::start(
        settings(&[&dead, &registry.base]),
        "orders",
        Some(registration("o1", 9)),
        None,
    )
    .expect("client");
    assert!(instance.wait_registered(Duration::from_secs(5)).await);
    assert!(instance.wait_loaded(Duration::from_secs(5)).await);
    wait_for_instances(&instance, "orders", 1).await;
    assert_eq!(instance.status().registry.as_deref(), Some(registry.base.as_str()));
    registry.stop.cancel();
}

#[tokio::test]
async fn calls_are_spread_over_the_up_instances() {
    let registry = registry().await;
    let (a, b) = (upstream("a", Duration::ZERO).await, upstream("b", Duration::ZERO).await);
    let _ra = register(&registry, "orders", "a", a.port).await;
    let _rb = register(&registry, "orders", "b", b.port).await;
    let (discovery, lb) = caller(&registry, lb_settings()).await;
    wait_for_instances(&discovery, "orders", 2).await;
    for _ in 0..20 {
        body_of(&lb, "lb://orders/hello").await.expect("answer");
    }
    assert_eq!((a.hits.load(Ordering::SeqCst), b.hits.load(Ordering::SeqCst)), (10, 10));
    assert!(matches!(lb.get("lb://nobody/x").await, Err(LbError::NoInstance { .. })));
    assert!(matches!(lb.get("http://orders/x").await, Err(LbError::BadUrl(_))));
    registry.stop.cancel();
}

#[tokio::test]
async fn a_deregistered_instance_stops_getting_calls_within_a_second() {
    let registry = registry().await;
    let (a, b) = (upstream("a", Duration::ZERO).await, upstream("b", Duration::ZERO).await);
    let ra = register(&registry, "orders", "a", a.port).await;
    let _rb = register(&registry, "orders", "b", b.port).await;
    let (discovery, lb) = caller(&registry, lb_settings()).await;
    wait_for_instances(&discovery, "orders", 2).await;
    let load = {
        let lb = lb.clone();
        tokio::spawn(async move {
            let until = Instant::now() + Duration::from_millis(2000);
            while Instant::now() < until {
                let _ = lb.get("lb://orders/x").await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    ra.shutdown().await;
    let left = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hits_after_a_second = a.hits.load(Ordering::SeqCst);
    load.await.expect("load");
    assert!(hits_after_a_second > 0, "a served before it left");
    assert_eq!(
        a.hits.load(Ordering::SeqCst),
        hits_after_a_second,
        "a still got calls more than {:?} after it deregistered",
        left.elapsed()
    );
    assert!(b.hits.load(Ordering::SeqCst) > 0);
    registry.stop.cancel();
}

#[tokio::test]
async fn an_instance_that_refuses_connections_is_ejected_at_once_and_the_call_goes_elsewhere() {
    let registry = registry().await;
    let live = upstream("live", Duration::ZERO).await;
    let dead_port = closed_port().await;
    let _live = register(&registry, "orders", "live", live.port).await;
    let _dead = register(&registry, "orders", "dead", dead_port).await;
    let (discovery, lb) = caller(&registry, lb_settings()).await;
    wait_for_instances(&discovery, "orders", 2).await;
    for _ in 0..10 {
        assert_eq!(
            body_of(&lb, "lb://orders/x").await.expect("every call answered"),
            "live"
        );
    }
    let stats = lb.instance_stats("orders");
    let dead = stats.iter().find(|s| s.instance_id == "dead").expect("dead known");
    assert!(dead.ejected, "{stats:?}");
    assert_eq!(dead.ejections, 1, "one refused connection, one ejection: {stats:?}");
    assert_eq!(live.hits.load(Ordering::SeqCst), 10);
    // The ejection grows: after it ends the next refusal ejects for longer.
    tokio::time::sleep(Duration::from_millis(450)).await;
    for _ in 0..4 {
        body_of(&lb, "lb://orders/x").await.expect("answered");
    }
    let stats = lb.instance_stats("orders");
    let dead = stats.iter().find(|s| s.instance_id == "dead").expect("dead known");
    assert_eq!((dead.ejected, dead.ejections), (true, 2), "{stats:?}");
    tokio::time::sleep(Duration::from_millis(450)).await;
    let dead = lb
        .instance_stats("orders")
        .into_iter()
        .find(|s| s.instance_id == "dead")
        .expect("dead");
    assert!(dead.ejected, "the second ejection lasts 800 ms, not 400 ms");
    registry.stop.cancel();
}

#[tokio::test]
async fn a_post_that_may_have_arrived_is_not_retried_but_a_get_is() {
    let registry = registry().await;
    let (a, b) = (upstream("a", Duration::ZERO).await, upstream("b", Duration::ZERO).await);
    a.mode.store(FAIL_503, Ordering::SeqCst);
    b.mode.store(FAIL_503, Ordering::SeqCst);
    let _ra = register(&registry, "orders", "a", a.port).await;
    let _rb = register(&registry, "orders", "b", b.port).await;
    let (discovery, lb) = caller(&registry, lb_settings()).await;
    wait_for_instances(&discovery, "orders", 2).await;
    let post = http::Request::post("lb://orders/orders")
        .body(Bytes::from_static(b"{}"))
        .expect("request");
    let answer = lb.request(post).await.expect("an answer");
    assert_eq!(answer.status(), 503);
    assert_eq!(
        a.hits.load(Ordering::SeqCst) + b.hits.load(Ordering::SeqCst),
        1,
        "the POST went once"
    );
    let answer = lb.get("lb://orders/orders").await.expect("an answer");
    assert_eq!(answer.status(), 503);
    assert_eq!(
        a.hits.load(Ordering::SeqCst) + b.hits.load(Ordering::SeqCst),
        3,
        "the GET went to both instances"
    );
    registry.stop.cancel();
}

#[tokio::test]
async fn the_service_breaker_opens_answers_by_fallback_probes_and_recovers() {
    let registry = registry().await;
    let email = upstream("email", Duration::ZERO).await;
    email.mode.store(FAIL_500, Ordering::SeqCst);
    let _r = register(&registry, "email-service", "e1", email.port).await;
    let (discovery, lb) = caller(&registry, lb_settings()).await;
    wait_for_instances(&discovery, "email-service", 1).await;
    let send = || {
        let request = http::Request::post("lb://email-service/validation-mail")
            .body(Bytes::from_static(b"{}"))
            .expect("request");
        lb.request_or_fallback(request, |err| async move {
            Ok(http::Response::builder()
                .status(202)
                .body(Bytes::from(format!("queued for later: {err}")))
                .expect("response"))
        })
    };
    for _ in 0..6 {
        assert_eq!(send().await.expect("fallback").status(), 202);
    }
    assert_eq!(email.hits.load(Ordering::SeqCst), 6);
    assert_eq!(lb.breaker("email-service").state, BreakerState::Open);
    // While open, the fallback answers at once and nothing reaches email.
    let started = Instant::now();
    for _ in 0..20 {
        let answer = send().await.expect("fallback");
        assert!(String::from_utf8_lossy(answer.body()).contains("is open"));
    }
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(email.hits.load(Ordering::SeqCst), 6);
    // After the open wait a probe goes through; email hangs now, so the probe
    // hangs, and the half-open limit sends the breaker back to open.
    email.mode.store(HANG, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(450)).await;
    let probe = {
        let lb = lb.clone();
        tokio::spawn(async move { lb.get("lb://email-service/validation-mail").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(email.hits.load(Ordering::SeqCst), 7, "one probe");
    assert_eq!(lb.breaker("email-service").state, BreakerState::HalfOpen);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        lb.breaker("email-service").state,
        BreakerState::Open,
        "a hanging probe must not hold half-open"
    );
    let _ = probe.await;
    // Email recovers: the next probe (after a doubled wait) closes the breaker.
    email.mode.store(OK, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let answer = send().await.expect("answer");
        if answer.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the breaker never closed again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lb.breaker("email-service").state, BreakerState::Closed);
    registry.stop.cancel();
}

#[tokio::test]
async fn with_every_registry_down_calls_go_on_against_the_last_view() {
    let registry = registry().await;
    let a = upstream("a", Duration::ZERO).await;
    let _ra = register(&registry, "orders", "a", a.port).await;
    let health = Health::new();
    let discovery = DiscoveryClient::start(
        DiscoverySettings {
            register: false,
            ..settings(&[&registry.base])
        },
        "caller",
        None,
        Some(health.clone()),
    )
    .expect("client");
    assert!(discovery.wait_loaded(Duration::from_secs(5)).await);
    wait_for_instances(&discovery, "orders", 1).await;
    assert_eq!(health.report().checks["discovery"].status, HealthState::Up);
    let lb = LbClient::new(discovery.clone(), lb_settings()).expect("lb");
    registry.stop.cancel();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !discovery.status().stale {
        assert!(Instant::now() < deadline, "never noticed the registry went away");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = health.report();
    assert_eq!(report.checks["discovery"].status, HealthState::Degraded, "{report:?}");
    assert!(
        report.checks["discovery"].detail.contains("last known view"),
        "{report:?}"
    );
    for _ in 0..5 {
        assert_eq!(
            body_of(&lb, "lb://orders/x").await.expect("served from the last view"),
            "a"
        );
    }
    a.stop.cancel();
}

#[tokio::test]
async fn power_of_two_choices_prefers_the_faster_instance() {
    let registry = registry().await;
    let (fast, slow) = (
        upstream("fast", Duration::ZERO).await,
        upstream("slow", Duration::from_millis(30)).await,
    );
    let _rf = register(&registry, "orders", "fast", fast.port).await;
    let _rs = register(&registry, "orders", "slow", slow.port).await;
    let (discovery, lb) = caller(
        &registry,
        LbSettings {
            strategy: Strategy::PowerOfTwo,
            ..lb_settings()
        },
    )
    .await;
    wait_for_instances(&discovery, "orders", 2).await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let lb = lb.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                lb.get("lb://orders/x").await.expect("answer");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let (fast, slow) = (fast.hits.load(Ordering::SeqCst), slow.hits.load(Ordering::SeqCst));
    assert_eq!(fast + slow, 100);
    assert!(fast > 3 * slow, "fast {fast}, slow {slow}");
    registry.stop.cancel();
}

#[tokio::test]
async fn a_killed_and_a_flapping_instance_cost_the_callers_nothing() {
    let registry = registry().await;
    let (stable, flapper, victim) = (
        upstream("stable", Duration::ZERO).await,
        upstream("flapper", Duration::ZERO).await,
        upstream("victim", Duration::ZERO).await,
    );
    let _rs = register(&registry, "orders", "stable", stable.port).await;
    let _rf = register(&registry, "orders", "flapper", flapper.port).await;
    let _rv = register(&registry, "orders", "victim", victim.port).await;
    let (discovery, lb) = caller(
        &registry,
        LbSettings {
            ejection: EjectionSettings {
                consecutive_failures: 2,
                base_time: Duration::from_millis(200),
                max_ejected_percent: 67,
                ..EjectionSettings::default()
            },
            ..lb_settings()
        },
    )
    .await;
    wait_for_instances(&discovery, "orders", 3).await;
    // The flapper answers 503 and 200 in turns of 100 ms.
    let flapping = {
        let mode = flapper.mode.clone();
        tokio::spawn(async move {
            for turn in 0..20u32 {
                mode.store(if turn % 2 == 0 { FAIL_503 } else { OK }, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut statuses = Vec::new();
    let started = Instant::now();
    let mut killed_at = None;
    while started.elapsed() < Duration::from_millis(1500) {
        if killed_at.is_none() && started.elapsed() > Duration::from_millis(500) {
            // Killed without deregistering: its port refuses connections.
            victim.stop.cancel();
            killed_at = Some(Instant::now());
        }
        statuses.push(lb.get("lb://orders/x").await.map(|r| r.status().as_u16()));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    flapping.await.expect("flapping");
    let failed: Vec<_> = statuses.iter().filter(|s| !matches!(s, Ok(200))).collect();
    assert!(failed.is_empty(), "callers saw {} failures: {failed:?}", failed.len());
    assert!(
        flapper.hits.load(Ordering::SeqCst) > 0,
        "the flapper served while it was up"
    );
    let victim_stats = lb
        .instance_stats("orders")
        .into_iter()
        .find(|s| s.instance_id == "victim")
        .expect("victim known");
    assert!(
        victim_stats.ejections >= 1,
        "the killed instance was ejected: {victim_stats:?}"
    );
    assert!(killed_at.is_some());
    registry.stop.cancel();
}

#[tokio::test]
async fn the_request_id_and_the_trace_reach_the_instance() {
    let registry = registry().await;
    let a = upstream("a", Duration::ZERO).await;
    let _ra = register(&registry, "orders", "a", a.port).await;
    let (discovery, lb) = caller(&registry, lb_settings()).await;
    wait_for_instances(&discovery, "orders", 1).await;
    let request = http::Request::get("lb://orders/echo-headers")
        .header("x-request-id", "req-42")
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .body(Bytes::new())
        .expect("request");
    let answer = lb.request(request).await.expect("answer");
    let seen = String::from_utf8_lossy(answer.body()).into_owned();
    let (request_id, traceparent) = seen.split_once(' ').expect("two headers");
    assert_eq!(request_id, "req-42");
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{traceparent}"
    );
    assert!(
        !traceparent.contains("00f067aa0ba902b7"),
        "a new span id: {traceparent}"
    );
    // Without them, both are made up.
    let seen = body_of(&lb, "lb://orders/echo-headers").await.expect("answer");
    let (request_id, traceparent) = seen.split_once(' ').expect("two headers");
    assert_eq!(request_id.len(), 32, "{seen}");
    assert_eq!(traceparent.split('-').count(), 4, "{seen}");
    registry.stop.cancel();
}
