//! Two instances of a service started from configuration alone: a real
//! registry and a real config server (for its bus relay) in-process; each
//! instance registers, sees the other, and a write to a near cache on one is
//! seen on the other.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtalpha_client::platform::{Platform, PlatformSettings};
use rtalpha_proto::registry::Registration;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

async fn registry(stop: &CancellationToken) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind registry");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let mut config = rtalpha_registry::Config::default();
    config.server.shutdown_grace = Duration::from_millis(100);
    tokio::spawn(rtalpha_registry::run(config, listener, stop.clone()));
    base
}

async fn relay(stop: &CancellationToken, dir: &std::path::Path) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind config server");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let mut config = rtalpha_config_server::Config::default();
    config.config_server.native_dir = Some(dir.to_path_buf());
    config.server.shutdown_grace = Duration::from_millis(100);
    tokio::spawn(rtalpha_config_server::run(config, listener, stop.clone()));
    base
}

fn registration(id: &str, port: u16) -> Registration {
    serde_json::from_value(serde_json::json!({
        "instance_id": id, "host_name": "127.0.0.1", "port": port
    }))
    .expect("registration")
}

async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn two_instances_started_from_configuration_register_and_share_cache_invalidations() {
    let stop = CancellationToken::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let (registry, relay) = (registry(&stop).await, relay(&stop, dir.path()).await);
    // The sections as a service's configuration file would give them.
    let settings: PlatformSettings = serde_json::from_value(serde_json::json!({
        "discovery": {"urls": [registry], "renewal_interval": "300ms", "lease_duration": "3s"},
        "lb": {"strategy": "round-robin"},
        "cache": {"heartbeat": "200ms", "caches": {"products": {"ttl": "60s"}}},
        "bus": relay,
    }))
    .expect("settings");
    assert!(settings.problems().is_empty(), "{:?}", settings.problems());
    let a = Platform::start("products", Some(registration("a", 9001)), &settings, None, stop.clone()).expect("a");
    let b = Platform::start("products", Some(registration("b", 9002)), &settings, None, stop.clone()).expect("b");
    assert!(a.discovery.wait_registered(Duration::from_secs(5)).await);
    assert!(b.discovery.wait_registered(Duration::from_secs(5)).await);
    assert!(
        eventually(Duration::from_secs(5), async || b.discovery.instances("products").len()
            == 2)
        .await,
        "b sees both instances"
    );

    // The database both instances read, and the near caches over it.
    let database = Arc::new(Mutex::new("v1".to_owned()));
    let read = |database: Arc<Mutex<String>>| async move { Ok::<_, String>(database.lock().expect("lock").clone()) };
    let (cache_a, cache_b) = (
        a.caches.cache::<String>("products"),
        b.caches.cache::<String>("products"),
    );
    // Both caches have heard their own announcements back: they serve from memory.
    assert!(
        eventually(Duration::from_secs(10), async || cache_a.is_synchronised()
            && cache_b.is_synchronised())
        .await,
        "the caches never synchronised over the relay"
    );
    let value = cache_b
        .get_or_load("p-1", || read(database.clone()))
        .await
        .expect("load");
    assert_eq!(*value, "v1");
    // A change behind the caches' backs is not seen: B serves from memory.
    *database.lock().expect("lock") = "changed behind the caches".to_owned();
    let value = cache_b
        .get_or_load("p-1", || read(database.clone()))
        .await
        .expect("hit");
    assert_eq!(*value, "v1", "b answers from its near cache");
    // A writes: the database first, then its cache, which tells B.
    *database.lock().expect("lock") = "v2".to_owned();
    cache_a.put("p-1", "v2".to_owned()).await;
    assert!(
        eventually(Duration::from_secs(2), async || {
            cache_b
                .get_or_load("p-1", || read(database.clone()))
                .await
                .is_ok_and(|value| *value == "v2")
        })
        .await,
        "b still serves the old value"
    );

    a.shutdown().await;
    assert!(
        eventually(Duration::from_secs(2), async || b.discovery.instances("products").len()
            == 1)
        .await,
        "a's cancellation reached b"
    );
    stop.cancel();
}

#[test]
fn bad_sections_are_named() {
    let settings: PlatformSettings = serde_json::from_value(serde_json::json!({
        "discovery": {"urls": ["registry:8761"]},
        "bus": "kafka://broker",
    }))
    .expect("settings");
    let problems = settings.problems();
    assert!(problems.iter().any(|p| p.starts_with("discovery.urls")), "{problems:?}");
    assert!(problems.iter().any(|p| p.starts_with("bus:")), "{problems:?}");
    assert!(
        serde_json::from_value::<PlatformSettings>(serde_json::json!({"discovery": {"nope": 1}})).is_err(),
        "unknown keys are refused"
    );
}
