//! The config client against real config servers started in-process, over the embedded
//! relay and over a real RabbitMQ (`RTALPHA_TEST_AMQP_URL`): start-up, failover,
//! fail-fast, the local fallback, live refresh with acknowledgements, and refusal of an
//! invalid change.

#[path = "support/config_harness.rs"]
mod harness;
#[path = "support/config_proxy.rs"]
mod proxy;

use std::sync::atomic::Ordering;
use std::time::Duration;

use harness::{
    ConfigServer, Observer, Slammer, amqp_url, commit, eventually, git_config, is_ack, local_file, native_config,
    refresh_id, refusing_url, repository, unique_app, write_file,
};
use proxy::Proxy;
use rtalpha_client::config::{
    BusStatus, ConfigChange, ConfigClient, ConfigClientError, ConfigClientSettings, ConfigOrigin, EndpointError,
    HEALTH_CHECK, RefreshOutcome,
};
use rtalpha_proto::bus::RemoteEvent;
use rtalpha_resilience::backoff::Backoff;
use rtalpha_runtime::config::{Overrides, Validate};
use rtalpha_runtime::{ConfigError, Health, HealthState};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// A service's typed configuration, strict as the platform's are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Sample {
    greeting: String,
    pool: Pool,
    tags: Vec<String>,
    password: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Pool {
    min: u32,
    max: u32,
    idle_ms: u64,
}

impl Default for Sample {
    fn default() -> Self {
        Sample {
            greeting: "default".to_owned(),
            pool: Pool::default(),
            tags: Vec::new(),
            password: None,
        }
    }
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            min: 1,
            max: 4,
            idle_ms: 1000,
        }
    }
}

impl Validate for Sample {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.pool.max < self.pool.min {
            return Err(ConfigError::invalid("pool.max", "must be at least `pool.min`"));
        }
        Ok(())
    }
}

const WAIT: Duration = Duration::from_secs(10);
const PORT: u16 = 9100;

fn settings(app: &str, uris: &[&str]) -> ConfigClientSettings {
    ConfigClientSettings {
        uris: uris.iter().map(|uri| (*uri).to_owned()).collect(),
        name: app.to_owned(),
        retry: Backoff::new(Duration::from_millis(20), Duration::from_millis(200)),
        max_attempts: 3,
        timeout: Duration::from_secs(2),
        ..ConfigClientSettings::default()
    }
}

async fn next_change(changes: &mut broadcast::Receiver<ConfigChange>) -> ConfigChange {
    tokio::time::timeout(WAIT, changes.recv())
        .await
        .expect("a change notification in time")
        .expect("a change notification")
}

fn config_check(health: &Health) -> (HealthState, String) {
    let report = health.report();
    let check = report.checks.get(HEALTH_CHECK).expect("the config check");
    (check.status, check.detail.clone())
}

async fn bus_connected(client: &ConfigClient<Sample>) {
    assert!(
        eventually(WAIT, async || client.status().bus == BusStatus::Connected).await,
        "the client's bus connects: {:?}",
        client.status()
    );
}

/// The path every live-refresh test takes once the client runs: a change to the
/// application's file reaches it as a refresh event, the new typed value is in force,
/// subscribers hear the right keys, and the event is acknowledged on the bus.
async fn change_is_refreshed_and_acknowledged(
    client: &ConfigClient<Sample>,
    observer: &mut Observer,
    change: impl FnOnce() -> Option<String>,
) {
    bus_connected(client).await;
    let mut changes = client.changes();
    let before = client.config();
    // When the server's announcement goes by on the bus, to tell the client's share of
    // the time from the change to the new configuration in force.
    let app = client.bus_id().split(':').next().expect("name").to_owned();
    let announced = {
        let mut deliveries = observer.bus.subscribe();
        let destination = format!("{app}:**");
        tokio::spawn(async move {
            loop {
                match deliveries.recv().await {
                    Ok(rtalpha_bus::Delivery::Event(event))
                        if refresh_id(&event).is_some() && event.destination() == destination =>
                    {
                        return Some(tokio::time::Instant::now());
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                    _ => {}
                }
            }
        })
    };
    let changed_at = tokio::time::Instant::now();
    let version = change();
    let notified = next_change(&mut changes).await;
    let in_force = changed_at.elapsed();
    if let Ok(Ok(Some(at))) = tokio::time::timeout(WAIT, announced).await {
        eprintln!(
            "{app}: change to event on the bus {:?}, change to new configuration in force {in_force:?}",
            at - changed_at
        );
    }
    assert_eq!(notified.changed_keys, ["greeting", "pool.max", "tags[0]", "tags[1]"]);
    assert_eq!(notified.generation, before.generation() + 1);
    if version.is_some() {
        assert_eq!(notified.version, version, "the commit now in force");
    }
    let after = client.config();
    assert_eq!((after.greeting.as_str(), after.pool.max), ("changed", 9));
    assert_eq!(after.tags, ["a", "b"]);
    assert_eq!(
        after.pool.min, 2,
        "the local file still fills what the server leaves out"
    );
    assert_eq!(
        before.greeting, "hello",
        "a snapshot taken earlier does not change under its reader"
    );

    let refresh = observer
        .wait_for(WAIT, |event| {
            refresh_id(event).is_some() && event.destination() == format!("{app}:**")
        })
        .await
        .expect("the config server announced the change");
    let id = refresh_id(&refresh).expect("id").to_owned();
    let ack = observer
        .wait_for(WAIT, |event| is_ack(event, client.bus_id(), Some(&id)))
        .await
        .expect("the client acknowledged the refresh event");
    let RemoteEvent::AckRemoteApplicationEvent {
        ack_destination_service,
        event,
        ..
    } = &ack
    else {
        unreachable!("an acknowledgement")
    };
    assert_eq!(ack_destination_service, &format!("{app}:**"));
    assert_eq!(event, rtalpha_proto::bus::REFRESH_EVENT_CLASS);

    // Asking again finds the same answer: nothing swapped, nobody told.
    assert_eq!(client.refresh().await, Ok(RefreshOutcome::Unchanged));
    assert_eq!(client.config().generation(), notified.generation);
    assert!(matches!(changes.try_recv(), Err(broadcast::error::TryRecvError::Empty)));
}

const INITIAL: &str = "greeting: hello\npool:\n  max: 8\n";
const CHANGED: &str = "greeting: changed\npool:\n  max: 9\ntags: [a, b]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_refreshed_over_the_embedded_relay_and_acknowledged() {
    let repo = tempfile::tempdir().expect("dir");
    let app = unique_app("relay");
    write_file(repo.path(), &format!("{app}.yml"), INITIAL);
    let server = ConfigServer::start(native_config(repo.path())).await;
    let shutdown = CancellationToken::new();
    let mut observer = Observer::connect(&server.base, &shutdown).await;
    let local = tempfile::tempdir().expect("dir");
    let file = local_file(local.path(), "greeting = \"local\"\n[pool]\nmin = 2\n");
    let health = Health::new();
    let client = ConfigClient::<Sample>::builder(ConfigClientSettings {
        bus: Some(server.base.clone()),
        ..settings(&app, &[&server.base])
    })
    .file(Some(file))
    .port(PORT)
    .health(health.clone())
    .start(shutdown.clone())
    .await
    .expect("starts");

    let config = client.config();
    assert_eq!(config.greeting, "hello", "the server's value over the local file's");
    assert_eq!((config.pool.min, config.pool.max), (2, 8));
    assert_eq!(
        config.origin(),
        &ConfigOrigin::Remote {
            uri: server.base.clone()
        }
    );
    assert_eq!(config.version(), None, "a plain directory has no version");
    assert!(
        client.bus_id().starts_with(&format!("{app}:{PORT}:")),
        "{}",
        client.bus_id()
    );

    let dir = repo.path().to_path_buf();
    change_is_refreshed_and_acknowledged(&client, &mut observer, || {
        write_file(&dir, &format!("{app}.yml"), CHANGED);
        None
    })
    .await;
    assert_eq!(config_check(&health).0, HealthState::Up, "{:?}", config_check(&health));
    shutdown.cancel();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_is_refreshed_over_rabbitmq_and_acknowledged() {
    let Some(url) = amqp_url() else { return };
    let app = unique_app("amqp");
    let repo = repository(&[(&format!("{app}.yml"), INITIAL)]);
    let basedir = tempfile::tempdir().expect("basedir");
    let mut config = git_config(&repo.path().display().to_string(), &basedir.path().join("clone"));
    config.config_server.bus.url = Some(url.clone());
    let server = ConfigServer::start(config).await;
    let shutdown = CancellationToken::new();
    let mut observer = Observer::connect(&url, &shutdown).await;
    let local = tempfile::tempdir().expect("dir");
    let file = local_file(local.path(), "[pool]\nmin = 2\n");
    let client = ConfigClient::<Sample>::builder(ConfigClientSettings {
        bus: Some(url.clone()),
        ..settings(&app, &[&server.base])
    })
    .file(Some(file))
    .port(PORT)
    .start(shutdown.clone())
    .await
    .expect("starts");
    let first = harness::git(repo.path(), &["rev-parse", "HEAD"]);
    assert_eq!(client.config().version(), Some(first.as_str()), "the commit served");
    assert_eq!(client.config().greeting, "hello");

    let dir = repo.path().to_path_buf();
    change_is_refreshed_and_acknowledged(&client, &mut observer, || {
        Some(commit(&dir, &[(&format!("{app}.yml"), CHANGED)], "change"))
    })
    .await;
    assert_eq!(client.status().version, client.config().version().map(str::to_owned));
    shutdown.cancel();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_change_is_refused_whole_and_a_later_valid_one_applies() {
    let repo = tempfile::tempdir().expect("dir");
    let app = unique_app("invalid");
    let file_name = format!("{app}.yml");
    write_file(repo.path(), &file_name, INITIAL);
    let server = ConfigServer::start(native_config(repo.path())).await;
    let shutdown = CancellationToken::new();
    let mut observer = Observer::connect(&server.base, &shutdown).await;
    let health = Health::new();
    let client = ConfigClient::<Sample>::builder(ConfigClientSettings {
        bus: Some(server.base.clone()),
        ..settings(&app, &[&server.base])
    })
    .port(PORT)
    .health(health.clone())
    .start(shutdown.clone())
    .await
    .expect("starts");
    bus_connected(&client).await;
    let mut changes = client.changes();

    // Each change also alters `greeting`, which alone would be valid: nothing of a
    // refused configuration may be applied.
    let invalid = [
        ("greeting: half\npool:\n  max: 0\n", "pool.max", "must be at least"),
        ("greeting: half\npool:\n  max: many\n", "pool.max", "many"),
    ];
    for (text, key, problem) in invalid {
        write_file(repo.path(), &file_name, text);
        assert!(
            eventually(WAIT, async || client
                .status()
                .refused
                .is_some_and(|refusal| refusal.contains(key) && refusal.contains(problem)))
            .await,
            "refused, naming `{key}`: {:?}",
            client.status()
        );
        let config = client.config();
        assert_eq!(
            (config.greeting.as_str(), config.pool.max, config.generation()),
            ("hello", 8, 0),
            "the old configuration stays in force, whole"
        );
        let (state, detail) = config_check(&health);
        assert_eq!(state, HealthState::Degraded, "{detail}");
        assert!(detail.contains("refused") && detail.contains(key), "{detail}");
        // Asked again by hand, the same answer is refused again.
        let again = client.refresh().await.expect_err("still refused");
        assert!(again.to_string().contains(key), "{again}");
    }
    assert!(
        matches!(changes.try_recv(), Err(broadcast::error::TryRecvError::Empty)),
        "nobody was told"
    );

    write_file(repo.path(), &file_name, "greeting: fixed\npool:\n  max: 6\n");
    let change = next_change(&mut changes).await;
    assert_eq!(change.changed_keys, ["greeting", "pool.max"]);
    assert_eq!(
        (client.config().greeting.as_str(), client.config().pool.max),
        ("fixed", 6)
    );
    assert_eq!(client.status().refused, None);
    assert_eq!(config_check(&health).0, HealthState::Up, "{:?}", config_check(&health));

    // Only the configuration that went into force was acknowledged.
    let destination = format!("{app}:**");
    let refreshes_before_fix = invalid.len();
    let mut refreshes = Vec::new();
    while refreshes.len() < refreshes_before_fix + 1 {
        let event = observer
            .wait_for(WAIT, |event| {
                refresh_id(event).is_some_and(|id| !refreshes.iter().any(|seen: &String| seen == id))
                    && event.destination() == destination
            })
            .await
            .expect("a refresh event per change");
        refreshes.push(refresh_id(&event).expect("id").to_owned());
    }
    let last = refreshes.last().cloned().expect("the fix's event");
    observer
        .wait_for(WAIT, |event| is_ack(event, client.bus_id(), Some(&last)))
        .await
        .expect("the fix acknowledged");
    let acknowledged: Vec<&RemoteEvent> = observer
        .seen
        .iter()
        .filter(|event| is_ack(event, client.bus_id(), None))
        .collect();
    assert_eq!(
        acknowledged.len(),
        1,
        "refused changes are not acknowledged: {acknowledged:?}"
    );
    shutdown.cancel();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_for_another_destination_or_from_itself_causes_no_refresh() {
    // The configuration comes from one server; the bus is another's relay, on which the
    // test alone sends refresh events.
    let repo = tempfile::tempdir().expect("dir");
    let app = unique_app("dest");
    write_file(repo.path(), &format!("{app}.yml"), INITIAL);
    let server = ConfigServer::start(native_config(repo.path())).await;
    let empty = tempfile::tempdir().expect("dir");
    let relay = ConfigServer::start(native_config(empty.path())).await;
    let shutdown = CancellationToken::new();
    let mut observer = Observer::connect(&relay.base, &shutdown).await;
    let client = ConfigClient::<Sample>::builder(ConfigClientSettings {
        bus: Some(relay.base.clone()),
        ..settings(&app, &[&server.base])
    })
    .port(PORT)
    .start(shutdown.clone())
    .await
    .expect("starts");
    bus_connected(&client).await;
    let mut changes = client.changes();
    write_file(repo.path(), &format!("{app}.yml"), CHANGED);
    assert!(
        server.serves(&app, "greeting", "changed".into()).await,
        "the server has the change"
    );

    let not_for_it = [
        rtalpha_bus::refresh_event("test:0:x", "someone-else"),
        rtalpha_bus::refresh_event("test:0:x", &format!("{app}:{}", PORT + 1)),
        rtalpha_bus::refresh_event(client.bus_id(), "**"),
    ];
    for event in &not_for_it {
        observer.bus.publish(event).await.expect("published");
    }
    let last = refresh_id(&not_for_it[2]).expect("id").to_owned();
    observer
        .wait_for(WAIT, |event| refresh_id(event) == Some(last.as_str()))
        .await
        .expect("the events went round");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(client.config().greeting, "hello", "not refreshed");
    assert!(matches!(changes.try_recv(), Err(broadcast::error::TryRecvError::Empty)));

    let for_it = rtalpha_bus::refresh_event("test:0:x", &format!("{app}:{PORT}"));
    observer.bus.publish(&for_it).await.expect("published");
    let change = next_change(&mut changes).await;
    assert_eq!(change.changed_keys, ["greeting", "pool.max", "tags[0]", "tags[1]"]);
    let id = refresh_id(&for_it).expect("id").to_owned();
    observer
        .wait_for(WAIT, |event| is_ack(event, client.bus_id(), Some(&id)))
        .await
        .expect("acknowledged");
    let acks: Vec<&RemoteEvent> = observer
        .seen
        .iter()
        .filter(|event| is_ack(event, client.bus_id(), None))
        .collect();
    assert_eq!(acks.len(), 1, "only the matching event was acted on: {acks:?}");
    shutdown.cancel();
    relay.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_announced_while_the_bus_was_cut_off_is_fetched_on_reconnection() {
    let repo = tempfile::tempdir().expect("dir");
    let app = unique_app("missed");
    write_file(repo.path(), &format!("{app}.yml"), INITIAL);
    let server = ConfigServer::start(native_config(repo.path())).await;
    // The client reaches the relay through a link the test can cut.
    let link = Proxy::start(&server.base).await;
    let shutdown = CancellationToken::new();
    let health = Health::new();
    let client = ConfigClient::<Sample>::builder(ConfigClientSettings {
        bus: Some(link.url.clone()),
        ..settings(&app, &[&server.base])
    })
    .health(health.clone())
    .start(shutdown.clone())
    .await
    .expect("starts");
    bus_connected(&client).await;
    let mut changes = client.changes();

    link.cut();
    assert!(
        eventually(WAIT, async || config_check(&health).1.contains("bus is not connected")).await,
        "{:?}",
        config_check(&health)
    );
    assert_eq!(config_check(&health).0, HealthState::Degraded);
    // The server announces the change on its relay; the client cannot hear it.
    write_file(repo.path(), &format!("{app}.yml"), CHANGED);
    assert!(server.serves(&app, "greeting", "changed".into()).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(client.config().greeting, "hello", "the event did not reach the client");

    // Back on the bus, the client knows it may have missed events, and asks.
    link.restore();
    let change = next_change(&mut changes).await;
    assert_eq!(change.changed_keys, ["greeting", "pool.max", "tags[0]", "tags[1]"]);
    assert_eq!(client.config().greeting, "changed");
    assert!(
        eventually(WAIT, async || config_check(&health).0 == HealthState::Up).await,
        "{:?}",
        config_check(&health)
    );
    shutdown.cancel();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_to_the_next_config_server_with_its_credentials() {
    let repo = tempfile::tempdir().expect("dir");
    let app = unique_app("failover");
    write_file(repo.path(), &format!("{app}.yml"), INITIAL);
    let mut config = native_config(repo.path());
    config.config_server.username = Some("reader".to_owned());
    config.config_server.password = Some("s3cret".to_owned());
    let server = ConfigServer::start(config).await;
    let dead = refusing_url();
    let with_credentials = server.base.replace("http://", "http://reader:s3cret@");
    let shutdown = CancellationToken::new();
    let client = ConfigClient::<Sample>::builder(ConfigClientSettings {
        fail_fast: true,
        ..settings(&app, &[&dead, &with_credentials])
    })
    .start(shutdown.clone())
    .await
    .expect("the second server answers");
    assert_eq!(client.config().greeting, "hello");
    assert_eq!(
        client.config().origin(),
        &ConfigOrigin::Remote {
            uri: server.base.clone()
        },
        "named without its credentials"
    );

    // The same servers, without credentials: the dead one is unreachable, the live one
    // refuses; the refusal is not worth retrying, the outage is.
    let err = ConfigClient::<Sample>::builder(ConfigClientSettings {
        fail_fast: true,
        ..settings(&app, &[&dead, &server.base])
    })
    .start(shutdown.clone())
    .await
    .map(|_| ())
    .expect_err("no credentials");
    let ConfigClientError::Unavailable(fetch) = err else {
        panic!("unavailable: {err}")
    };
    assert_eq!(fetch.failures.len(), 2, "{fetch}");
    assert!(matches!(fetch.failures[0].1, EndpointError::Unreachable(_)), "{fetch}");
    assert!(
        matches!(fetch.failures[1].1, EndpointError::Status { status: 401, .. }),
        "{fetch}"
    );
    shutdown.cancel();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_with_no_server_answering_stops_start_up_after_the_attempts() {
    let slammer = Slammer::start();
    let dead = refusing_url();
    let shutdown = CancellationToken::new();
    let started = tokio::time::Instant::now();
    let err = ConfigClient::<Sample>::builder(ConfigClientSettings {
        fail_fast: true,
        max_attempts: 3,
        ..settings("nobody", &[&slammer.url, &dead])
    })
    .start(shutdown.clone())
    .await
    .map(|_| ())
    .expect_err("nothing answers");
    assert!(started.elapsed() < WAIT, "bounded: {:?}", started.elapsed());
    let ConfigClientError::Unavailable(fetch) = &err else {
        panic!("unavailable: {err}")
    };
    assert_eq!(fetch.failures.len(), 2, "both URLs in the last round: {fetch}");
    assert_eq!(
        slammer.connections.load(Ordering::SeqCst),
        3,
        "one request per round, three rounds"
    );
    assert!(
        err.to_string().starts_with("fail_fast: no config server answered"),
        "{err}"
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_on_the_local_config_until_a_server_comes_up_then_applies_its_config() {
    let repo = tempfile::tempdir().expect("dir");
    let app = unique_app("late");
    write_file(repo.path(), &format!("{app}.yml"), INITIAL);
    // Bound but not yet serving: requests wait unanswered, as with a server that hangs.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let local = tempfile::tempdir().expect("dir");
    let file = local_file(local.path(), "greeting = \"local\"\n[pool]\nmin = 2\n");
    let health = Health::new();
    let shutdown = CancellationToken::new();
    let started = tokio::time::Instant::now();
    let client = ConfigClient::<Sample>::builder(ConfigClientSettings {
        timeout: Duration::from_millis(300),
        ..settings(&app, &[&base])
    })
    .file(Some(file))
    .health(health.clone())
    .start(shutdown.clone())
    .await
    .expect("starts on the local configuration");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "one round, not the retries: {:?}",
        started.elapsed()
    );
    let config = client.config();
    assert_eq!(
        (config.greeting.as_str(), config.pool.min, config.pool.max),
        ("local", 2, 4)
    );
    assert_eq!(config.origin(), &ConfigOrigin::Local);
    let (state, detail) = config_check(&health);
    assert_eq!(state, HealthState::Degraded);
    assert!(
        detail.contains("running on the local configuration") && detail.contains("no answer within"),
        "{detail}"
    );

    let mut changes = client.changes();
    let server = ConfigServer::start_on(listener, native_config(repo.path()));
    let change = next_change(&mut changes).await;
    assert_eq!(change.changed_keys, ["greeting", "pool.max"]);
    let config = client.config();
    assert_eq!(
        (config.greeting.as_str(), config.pool.min, config.pool.max),
        ("hello", 2, 8)
    );
    assert_eq!(config.origin(), &ConfigOrigin::Remote { uri: base.clone() });
    assert_eq!(config_check(&health).0, HealthState::Up, "{:?}", config_check(&health));
    shutdown.cancel();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_layer_sits_between_the_local_file_and_the_command_line() {
    let repo = tempfile::tempdir().expect("dir");
    let app = unique_app("layers");
    write_file(
        repo.path(),
        "application.yml",
        "greeting: shared\nplatform:\n  registry: http://127.0.0.1:8761\n",
    );
    // `.properties` values are strings; the list replaces the local one whole.
    write_file(
        repo.path(),
        &format!("{app}.properties"),
        "pool.idle_ms=250\npool.max=7\ntags[0]=remote\n",
    );
    write_file(repo.path(), &format!("{app}-dev.yml"), "greeting: dev\n");
    let server = ConfigServer::start(native_config(repo.path())).await;
    let local = tempfile::tempdir().expect("dir");
    let file = local_file(
        local.path(),
        "greeting = \"local\"\ntags = [\"l1\", \"l2\", \"l3\"]\n[pool]\nmin = 3\nmax = 5\n",
    );
    let mut overrides = Overrides::new();
    overrides.set("pool.max", Some(12));
    let shutdown = CancellationToken::new();
    let layered = ConfigClientSettings {
        profiles: vec!["dev".to_owned()],
        ..settings(&app, &[&server.base])
    };
    let client = ConfigClient::<Sample>::builder(layered.clone())
        .file(Some(file.clone()))
        .overrides(overrides.clone())
        .start(shutdown.clone())
        .await
        .expect("starts");
    let config = client.config();
    assert_eq!(
        config.greeting, "dev",
        "the profile's file over the application's, over the local file"
    );
    assert_eq!(config.pool.idle_ms, 250, "a .properties string read as a number");
    assert_eq!(config.pool.min, 3, "the local file where the server is silent");
    assert_eq!(config.pool.max, 12, "the command line over the server");
    assert_eq!(config.tags, ["remote"], "a list is replaced whole");

    // The shared file's `platform` key is someone else's: left out by default, refused
    // when the service asks to be strict.
    let err = ConfigClient::<Sample>::builder(ConfigClientSettings {
        ignore_unknown_keys: false,
        ..layered
    })
    .file(Some(file))
    .overrides(overrides)
    .start(shutdown.clone())
    .await
    .map(|_| ())
    .expect_err("strict");
    assert!(
        matches!(&err, ConfigClientError::Config(_)) && err.to_string().contains("platform"),
        "{err}"
    );
    shutdown.cancel();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_the_server_cannot_decrypt_stops_start_up_rather_than_falling_back() {
    let repo = tempfile::tempdir().expect("dir");
    let app = unique_app("secret");
    // No `encrypt.key` on the server: it cannot decrypt, and says so as `invalid.password`.
    write_file(
        repo.path(),
        &format!("{app}.yml"),
        "password: '{cipher}00ff00ff00ff00ff00ff00ff00ff00ff'\n",
    );
    let server = ConfigServer::start(native_config(repo.path())).await;
    let shutdown = CancellationToken::new();
    let err = ConfigClient::<Sample>::builder(settings(&app, &[&server.base]))
        .start(shutdown.clone())
        .await
        .map(|_| ())
        .expect_err("refused");
    assert!(err.to_string().contains("could not decrypt `password`"), "{err}");
    shutdown.cancel();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switched_off_it_runs_on_the_local_config_alone() {
    let local = tempfile::tempdir().expect("dir");
    let file = local_file(local.path(), "greeting = \"local\"\n");
    let health = Health::new();
    let client = ConfigClient::<Sample>::builder(ConfigClientSettings {
        enabled: false,
        uris: vec![refusing_url()],
        ..ConfigClientSettings::default()
    })
    .file(Some(file))
    .health(health.clone())
    .start(CancellationToken::new())
    .await
    .expect("starts");
    assert_eq!(client.config().greeting, "local");
    assert_eq!(client.refresh().await, Ok(RefreshOutcome::Unchanged));
    assert_eq!(config_check(&health).0, HealthState::Up);
}
