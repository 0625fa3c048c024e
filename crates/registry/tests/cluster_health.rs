//! What `/health` says about the cluster: a peer whose requests fail makes a
//! node DEGRADED, and a peer that was down at start counts as reachable soon
//! after it comes up; the lag includes a batch still being sent. Registries
//! served in-process.

#[path = "support/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{quiet_config, start};

fn cluster_check(body: &serde_json::Value) -> Option<(String, String)> {
    let check = &body["checks"]["cluster"];
    Some((
        check["status"].as_str()?.to_owned(),
        check["detail"].as_str().unwrap_or("").to_owned(),
    ))
}

#[tokio::test]
async fn a_peer_that_was_down_at_start_counts_as_reachable_within_seconds_of_coming_up() {
    // B's address is reserved, but B starts only after A: A's warm-up cannot
    // reach it, as when the nodes of a fresh cluster start one after another.
    let b_address = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address")
    };
    let mut config = quiet_config();
    config.registry.peers = vec![format!("http://{b_address}")];
    config.registry.cluster.sync_timeout = Duration::from_millis(300);
    let a = start(config).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health = a.get_json("/health").await.json();
        if cluster_check(&health).is_some_and(|(status, _)| status == "DEGRADED") {
            break;
        }
        assert!(Instant::now() < deadline, "A never reported B unreachable: {health}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listener = tokio::net::TcpListener::bind(b_address).await.expect("B's address");
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(rtalpha_registry::run(quiet_config(), listener, stop.clone()));
    let came_up = Instant::now();
    // Anti-entropy runs every 30 s by default; a failed round is retried after
    // the retry backoff (at most 5 s by default) instead.
    loop {
        let health = a.get_json("/health").await.json();
        if cluster_check(&health).is_some_and(|(status, _)| status == "UP") {
            break;
        }
        assert!(
            came_up.elapsed() < Duration::from_secs(8),
            "B up for {:?} and still unreachable to A: {health}",
            came_up.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    a.stop().await;
}

#[tokio::test]
async fn a_peer_whose_requests_fail_makes_the_node_degraded() {
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", listener.local_addr().expect("address"))
    };
    let mut config = quiet_config();
    config.registry.peers = vec![dead.clone()];
    config.registry.cluster.sync_timeout = Duration::from_millis(200);
    config.registry.cluster.anti_entropy_interval = Duration::from_millis(200);
    let a = start(config).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health = a.get_json("/health").await.json();
        if let Some((status, detail)) = cluster_check(&health)
            && status == "DEGRADED"
        {
            assert!(detail.contains("unreachable") && detail.contains(&dead), "{detail}");
            break;
        }
        assert!(Instant::now() < deadline, "never DEGRADED: {health}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.stop().await;
}

#[tokio::test]
async fn the_lag_counts_a_batch_that_is_still_being_sent() {
    // A peer that accepts connections and never answers: a batch sent to it
    // stays in flight until the request timeout.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hung_url = format!("http://{}", hung.local_addr().expect("address"));
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in hung.incoming().flatten() {
            held.push(stream);
        }
    });
    let mut config = quiet_config();
    config.registry.peers = vec![hung_url];
    config.registry.cluster.sync_timeout = Duration::from_millis(200);
    config.registry.cluster.request_timeout = Duration::from_secs(3);
    let a = start(config).await;
    // Replication starts once the warm-up has given up on the peer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.get("/ready").await.status != 200 {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(a.register("orders", "o1", 8080).await.status.is_success());
    tokio::time::sleep(Duration::from_millis(800)).await;
    let status = a.get_json("/v1/status").await.json();
    let peer = &status["cluster"]["peers"][0];
    assert_eq!(peer["backlog"], 0, "the write left the queue: {peer}");
    let lag = peer["lag_ms"].as_u64().expect("lag_ms");
    assert!(
        lag >= 600,
        "a batch in flight for 800 ms shows a lag of {lag} ms: {peer}"
    );
    a.stop().await;
}
