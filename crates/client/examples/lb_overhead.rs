//! What the load-balanced client adds to a call: the same upstream called
//! with a bare hyper client and through `lb://`, in alternating blocks so that
//! both see the same machine; and the cost of one pick among three
//! instances. Run by bench/client/run.sh; prints one JSON line.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rtalpha_client::discovery::{DiscoveryClient, DiscoverySettings};
use rtalpha_client::lb::{LbClient, LbSettings, Strategy};
use rtalpha_proto::registry::Registration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let requests: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let stop = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind registry");
    let registry = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(rtalpha_registry::run(
        rtalpha_registry::Config::default(),
        listener,
        stop.clone(),
    ));

    let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
    let port = upstream.local_addr().expect("address").port();
    let app = axum::Router::new().fallback(|| async { "hello" });
    tokio::spawn(async move { axum::serve(upstream, app).await });

    let settings = DiscoverySettings {
        urls: vec![registry.clone()],
        ..DiscoverySettings::default()
    };
    let instance = DiscoveryClient::start(
        DiscoverySettings {
            fetch: false,
            ..settings.clone()
        },
        "bench",
        Some(registration("upstream", port)),
        None,
    )
    .expect("client");
    assert!(instance.wait_registered(Duration::from_secs(5)).await);
    let discovery = DiscoveryClient::start(
        DiscoverySettings {
            register: false,
            ..settings.clone()
        },
        "caller",
        None,
        None,
    )
    .expect("client");
    while discovery.instances("bench").is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let lb = LbClient::new(discovery.clone(), LbSettings::default()).expect("lb");
    let raw = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let direct = format!("http://127.0.0.1:{port}/hello");

    let (mut raw_samples, mut lb_samples) = (Vec::with_capacity(requests), Vec::with_capacity(requests));
    let block = 1000;
    // Warm both connection pools first.
    for _ in 0..200 {
        let _ = raw
            .get(direct.parse().expect("uri"))
            .await
            .expect("raw")
            .into_body()
            .collect()
            .await;
        let _ = lb.get("lb://bench/hello").await.expect("lb");
    }
    while raw_samples.len() < requests {
        for _ in 0..block {
            let started = Instant::now();
            let response = raw.get(direct.parse().expect("uri")).await.expect("raw call");
            let _ = response.into_body().collect().await.expect("raw body");
            raw_samples.push(started.elapsed());
        }
        for _ in 0..block {
            let started = Instant::now();
            let response = lb.get("lb://bench/hello").await.expect("lb call");
            assert_eq!(response.status(), 200);
            lb_samples.push(started.elapsed());
        }
    }

    // Pick cost among three instances with the power of two choices.
    for n in 2..=3 {
        let client = DiscoveryClient::start(
            DiscoverySettings {
                fetch: false,
                ..settings.clone()
            },
            "bench",
            Some(registration(&format!("upstream-{n}"), port)),
            None,
        )
        .expect("client");
        assert!(client.wait_registered(Duration::from_secs(5)).await);
        std::mem::forget(client);
    }
    while discovery.instances("bench").len() < 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let picker = LbClient::new(
        discovery.clone(),
        LbSettings {
            strategy: Strategy::PowerOfTwo,
            ..LbSettings::default()
        },
    )
    .expect("lb");
    let picks = 1_000_000;
    let started = Instant::now();
    for _ in 0..picks {
        std::hint::black_box(picker.choose("bench"));
    }
    let pick_ns = started.elapsed().as_nanos() as f64 / picks as f64;

    let (raw50, raw99) = (percentile(&mut raw_samples, 50.0), percentile(&mut raw_samples, 99.0));
    let (lb50, lb99) = (percentile(&mut lb_samples, 50.0), percentile(&mut lb_samples, 99.0));
    println!(
        "{}",
        serde_json::json!({
            "requests": requests,
            "raw_p50_us": raw50.as_secs_f64() * 1e6,
            "raw_p99_us": raw99.as_secs_f64() * 1e6,
            "lb_p50_us": lb50.as_secs_f64() * 1e6,
            "lb_p99_us": lb99.as_secs_f64() * 1e6,
            "added_p50_us": (lb50.as_secs_f64() - raw50.as_secs_f64()) * 1e6,
            "ratio_p50": lb50.as_secs_f64() / raw50.as_secs_f64(),
            "ratio_p99": lb99.as_secs_f64() / raw99.as_secs_f64(),
            "pick_ns_3_instances": pick_ns,
        })
    );
    stop.cancel();
}
