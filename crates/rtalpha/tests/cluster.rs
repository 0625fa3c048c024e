//! The registry cluster as real processes on loopback: replication, a node killed and
//! restarted, a partition healed by anti-entropy, a lost batch repaired, and active
//! health checks seen on every node.

#[path = "support/node.rs"]
mod node;
#[path = "support/proxy.rs"]
mod proxy;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use node::{Node, eventually, fast_cluster_env, free_port};
use proxy::{Mode, Proxy};

fn env_with(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = fast_cluster_env();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// Three nodes that know each other directly; every node gets the same list, itself
/// included.
fn three_nodes(env: &[(String, String)]) -> (Node, Node, Node) {
    let ports = [free_port(), free_port(), free_port()];
    let urls: Vec<String> = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
    let a = Node::start(ports[0], &urls, env);
    let b = Node::start(ports[1], &urls, env);
    let c = Node::start(ports[2], &urls, env);
    for node in [&a, &b, &c] {
        node.wait_ready(Duration::from_secs(10));
    }
    (a, b, c)
}

fn converged(nodes: &[&Node]) -> bool {
    let views: Vec<_> = nodes.iter().map(|n| n.instances()).collect();
    views.iter().all(|v| v.is_some() && *v == views[0])
}

#[test]
fn an_instance_registered_on_one_node_is_seen_on_the_others_within_a_second() {
    let (a, b, c) = three_nodes(&fast_cluster_env());
    // A watch on C, opened before the write.
    let mut watch = std::net::TcpStream::connect(("127.0.0.1", c.port)).expect("connect");
    watch
        .write_all(b"GET /v1/watch HTTP/1.1\r\nhost: x\r\n\r\n")
        .expect("watch");
    watch.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    std::thread::sleep(Duration::from_millis(200));

    let started = Instant::now();
    a.register("orders", "o1", "");
    for node in [&b, &c] {
        let seen = eventually(Duration::from_secs(1), || {
            node.instances()
                .is_some_and(|all| all.iter().any(|(_, id, _)| id == "o1"))
        });
        assert!(seen, "o1 not on node {} within 1 s", node.port);
    }
    let elapsed = started.elapsed();
    let mut streamed = String::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(3);
    while !streamed.contains("\"o1\"") && Instant::now() < deadline {
        match watch.read(&mut buffer) {
            Ok(n) if n > 0 => streamed.push_str(&String::from_utf8_lossy(&buffer[..n])),
            _ => break,
        }
    }
    assert!(
        streamed.contains("event: change") && streamed.contains("\"o1\""),
        "the watch on C: {streamed}"
    );
    eprintln!("replicated to both peers in {elapsed:?}");

    // Every node skipped itself in the shared list and sees the two others.
    for node in [&a, &b, &c] {
        let peers = node.status()["cluster"]["peers"].as_array().expect("peers").len();
        assert_eq!(peers, 2, "node {}", node.port);
    }
    // The cancellation travels too.
    b.cancel("ORDERS", "o1");
    assert!(eventually(Duration::from_secs(1), || converged(&[&a, &b, &c])
        && a.instances().is_some_and(|all| all.is_empty())));
}

#[test]
fn a_killed_node_warms_up_from_a_peer_and_nothing_is_lost_or_wrongly_evicted() {
    // Short leases, renewed every 500 ms through A and C only: B sees renewals only by
    // replication, so a B that evicted on its own would show it at once.
    let env = env_with(&[("RTALPHA_REGISTRY__CLUSTER__WARMUP", "8s")]);
    let (a, mut b, c) = three_nodes(&env);
    let lease = r#","renewal_interval_secs":1,"lease_duration_secs":4"#;
    let mut ids = Vec::new();
    for i in 0..20 {
        let id = format!("i{i}");
        if i % 2 == 0 {
            a.register("orders", &id, lease)
        } else {
            c.register("orders", &id, lease)
        }
        ids.push(id);
    }
    let renewing = Arc::new(AtomicBool::new(true));
    let renewer = {
        let (running, ids, a_port, c_port) = (renewing.clone(), ids.clone(), a.port, c.port);
        std::thread::spawn(move || {
            while running.load(Ordering::SeqCst) {
                for (n, id) in ids.iter().enumerate() {
                    let port = if n % 2 == 0 { a_port } else { c_port };
                    let _ = node::http("PUT", port, &format!("/v1/apps/ORDERS/{id}/heartbeat"), None);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    assert!(eventually(Duration::from_secs(3), || converged(&[&a, &b, &c])));

    b.kill_hard();
    // Writes go on while B is gone.
    for i in 20..30 {
        let id = format!("i{i}");
        if i % 2 == 0 {
            a.register("orders", &id, lease)
        } else {
            c.register("orders", &id, lease)
        }
    }
    a.cancel("ORDERS", "i0");
    c.cancel("ORDERS", "i1");
    std::thread::sleep(Duration::from_secs(2));
    b.restart();
    b.wait_ready(Duration::from_secs(10));
    let after_warm_up = b.instances().expect("B answers");
    assert_eq!(
        after_warm_up.len(),
        28,
        "B holds the registry as soon as it is ready: {after_warm_up:?}"
    );
    // The new instances are renewed from now on too.
    let renewing_new = {
        let (running, a_port, c_port) = (renewing.clone(), a.port, c.port);
        std::thread::spawn(move || {
            while running.load(Ordering::SeqCst) {
                for i in 20..30 {
                    let port = if i % 2 == 0 { a_port } else { c_port };
                    let _ = node::http("PUT", port, &format!("/v1/apps/ORDERS/i{i}/heartbeat"), None);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    assert!(
        eventually(Duration::from_secs(5), || converged(&[&a, &b, &c])),
        "the nodes converge"
    );
    // Longer than a lease and the warm-up: still nothing evicted anywhere.
    std::thread::sleep(Duration::from_secs(10));
    assert!(converged(&[&a, &b, &c]));
    for node in [&a, &b, &c] {
        let status = node.status();
        assert_eq!(status["instances"], 28, "node {}: {status}", node.port);
        assert_eq!(
            status["evictions_total"], 0,
            "node {} evicted a renewed lease",
            node.port
        );
    }
    renewing.store(false, Ordering::SeqCst);
    let _ = renewer.join();
    let _ = renewing_new.join();
}

/// Every link into and out of B goes through a proxy, so B can be cut off from the
/// others; A and C reach each other directly.
struct PartitionedCluster {
    a: Node,
    b: Node,
    c: Node,
    /// A's link to B.
    a_to_b: Proxy,
    /// The other three links that touch B.
    others: [Proxy; 3],
}

impl PartitionedCluster {
    fn cut_b(&self, mode: Mode) {
        self.a_to_b.set(mode);
        for proxy in &self.others {
            proxy.set(mode);
        }
    }
}

fn partitioned_cluster(env: &[(String, String)]) -> PartitionedCluster {
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let (a_to_b, c_to_b, b_to_a, b_to_c) = (Proxy::start(pb), Proxy::start(pb), Proxy::start(pa), Proxy::start(pc));
    let url = |p: u16| format!("http://127.0.0.1:{p}");
    let a = Node::start(pa, &[a_to_b.url(), url(pc)], env);
    let b = Node::start(pb, &[b_to_a.url(), b_to_c.url()], env);
    let c = Node::start(pc, &[url(pa), c_to_b.url()], env);
    for node in [&a, &b, &c] {
        node.wait_ready(Duration::from_secs(10));
    }
    PartitionedCluster {
        a,
        b,
        c,
        a_to_b,
        others: [c_to_b, b_to_a, b_to_c],
    }
}

#[test]
fn a_healed_partition_converges_through_anti_entropy() {
    let cluster = partitioned_cluster(&fast_cluster_env());
    let (a, b, c) = (&cluster.a, &cluster.b, &cluster.c);
    a.register("orders", "before-a", "");
    b.register("orders", "before-b", "");
    assert!(eventually(Duration::from_secs(3), || converged(&[a, b, c])));

    // B is cut off from A and C for 30 s while both sides register and cancel.
    cluster.cut_b(Mode::Cut);
    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < Duration::from_secs(30) {
        a.register("orders", &format!("a-{round}"), "");
        b.register("billing", &format!("b-{round}"), "");
        if round == 3 {
            b.cancel("ORDERS", "before-a");
            a.cancel("ORDERS", "before-b");
        }
        round += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(!converged(&[a, b]), "the sides diverged during the partition");
    cluster.cut_b(Mode::Pass);
    let healed = Instant::now();
    assert!(
        eventually(Duration::from_secs(15), || converged(&[a, b, c])),
        "no convergence 15 s after healing: A {:?} B {:?}",
        a.instances().map(|v| v.len()),
        b.instances().map(|v| v.len())
    );
    eprintln!("converged {:?} after healing", healed.elapsed());
    let all = a.instances().expect("A");
    assert_eq!(
        all.len(),
        2 * round,
        "every instance registered during the partition is there"
    );
    assert!(
        !all.iter().any(|(_, id, _)| id.starts_with("before-")),
        "both cancellations hold everywhere"
    );
}

#[test]
fn a_lost_batch_is_repaired_by_anti_entropy() {
    let env = env_with(&[("RTALPHA_REGISTRY__CLUSTER__ANTI_ENTROPY_INTERVAL", "2s")]);
    let mut cluster = partitioned_cluster(&env);
    // Without C, only A's replication and anti-entropy can bring B the write.
    assert_eq!(cluster.c.stop(), Some(0));
    let (a, b) = (&cluster.a, &cluster.b);
    // B must not pull the write from A by its own anti-entropy before the check.
    let b_to_a = &cluster.others[1];
    b_to_a.set(Mode::Cut);
    cluster.a_to_b.set(Mode::AckAndDrop);
    a.register("orders", "lost", "");
    assert!(
        eventually(Duration::from_secs(3), || cluster.a_to_b.dropped() > 0),
        "the batch reached the proxy and was acknowledged there"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !b.instances().expect("B").iter().any(|(_, id, _)| id == "lost"),
        "the batch never reached B"
    );
    cluster.a_to_b.set(Mode::Pass);
    b_to_a.set(Mode::Pass);
    assert!(
        eventually(Duration::from_secs(6), || b
            .instances()
            .is_some_and(|all| all.iter().any(|(_, id, _)| id == "lost"))),
        "anti-entropy brought the lost write to B"
    );
    let repaired: u64 = [a, b]
        .iter()
        .flat_map(|node| {
            node.status()["cluster"]["peers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|peer| peer["repaired_total"].as_u64().unwrap_or(0))
        .sum();
    assert!(repaired >= 1, "the repair is counted in the replication health");
}

#[test]
fn an_overflowing_backlog_marks_the_peer_for_resync_and_it_converges() {
    let env = env_with(&[("RTALPHA_REGISTRY__CLUSTER__MAX_BACKLOG", "5")]);
    let mut cluster = partitioned_cluster(&env);
    assert_eq!(cluster.c.stop(), Some(0));
    let (a, b) = (&cluster.a, &cluster.b);
    cluster.cut_b(Mode::Cut);
    for i in 0..20 {
        a.register("orders", &format!("burst-{i}"), "");
    }
    let peer_of_b = |status: &serde_json::Value| {
        status["cluster"]["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .find(|p| p["url"] == cluster.a_to_b.url())
            .cloned()
            .expect("the peer behind the proxy")
    };
    let peer = peer_of_b(&a.status());
    assert_eq!(peer["resync_pending"], true, "{peer}");
    assert!(peer["dropped_total"].as_u64().is_some_and(|n| n > 0), "{peer}");
    assert!(
        peer["backlog"].as_u64().is_some_and(|n| n <= 5),
        "the backlog stays bounded: {peer}"
    );
    cluster.cut_b(Mode::Pass);
    assert!(
        eventually(Duration::from_secs(8), || b
            .instances()
            .is_some_and(|all| all.len() == 20)),
        "B resynced: {:?}",
        b.instances().map(|v| v.len())
    );
    assert!(eventually(
        Duration::from_secs(3),
        || peer_of_b(&a.status())["resync_pending"] == false
    ));
}

/// A tiny health endpoint whose behaviour the test switches: 0 healthy, 1 answers
/// 500, 2 accepts and never answers.
fn health_endpoint() -> (u16, Arc<AtomicU8>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let behaviour = Arc::new(AtomicU8::new(0));
    let shared = behaviour.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let behaviour = shared.clone();
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buffer = [0u8; 1024];
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                let _ = stream.read(&mut buffer);
                match behaviour.load(Ordering::SeqCst) {
                    0 => {
                        let _ =
                            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
                    }
                    1 => {
                        let _ = stream.write_all(
                            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        );
                    }
                    _ => std::thread::sleep(Duration::from_secs(5)),
                }
            });
        }
    });
    (port, behaviour)
}

#[test]
fn failing_and_hung_health_checks_take_an_instance_down_on_every_node() {
    let (a, b, c) = three_nodes(&env_with(&[
        ("RTALPHA_REGISTRY__HEALTH_CHECKS__FAILURES_BEFORE_DOWN", "2"),
        ("RTALPHA_REGISTRY__HEALTH_CHECKS__SUCCESSES_BEFORE_UP", "2"),
    ]));
    let (health_port, behaviour) = health_endpoint();
    let extra = format!(
        r#","health_check_url":"http://127.0.0.1:{health_port}/health","metadata":{{"rtalpha.health-check":"http","rtalpha.health-check.interval":"200ms","rtalpha.health-check.timeout":"300ms"}}"#
    );
    a.register("orders", "checked", &extra);
    let status_everywhere = |wanted: &str| {
        [&a, &b, &c].iter().all(|node| {
            node.instances()
                .is_some_and(|all| all.iter().any(|(_, id, status)| id == "checked" && status == wanted))
        })
    };
    assert!(eventually(Duration::from_secs(3), || status_everywhere("UP")));

    behaviour.store(1, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || status_everywhere("DOWN")),
        "500s take it DOWN everywhere"
    );
    let record = node::get_json(b.port, "/v1/apps/ORDERS/checked").expect("record");
    assert_eq!(record["instance"]["health_check"]["passing"], false);
    assert!(
        record["instance"]["health_check"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("500"))
    );

    behaviour.store(0, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || status_everywhere("UP")),
        "it comes back UP everywhere"
    );

    // Hung: it still heartbeats, but its health endpoint never answers.
    behaviour.store(2, Ordering::SeqCst);
    let started = Instant::now();
    let caught = eventually(Duration::from_secs(6), || {
        assert_eq!(a.heartbeat("ORDERS", "checked"), Some(200));
        status_everywhere("DOWN")
    });
    assert!(caught, "a heartbeating but hung instance is caught");
    eprintln!("hung instance DOWN everywhere after {:?}", started.elapsed());
    behaviour.store(0, Ordering::SeqCst);
    assert!(eventually(Duration::from_secs(5), || status_everywhere("UP")));
}
