//! Lease table behaviour on Tokio's paused clock.

use std::time::Duration;

use rtalpha_proto::registry::ChangeKind;
use rtalpha_proto::{DataCenter, Instance, LeaseInfo, Port, Status};

use rtalpha_proto::replication::{Stamp, Tombstone};

use super::*;
use crate::clock::Clock;
use crate::config::SelfPreservationSettings;

fn instance(app: &str, id: &str) -> Instance {
    Instance {
        app: app.to_owned(),
        instance_id: id.to_owned(),
        host_name: format!("{id}.local"),
        ip_addr: "10.0.0.1".to_owned(),
        port: Port {
            number: 8080,
            enabled: true,
        },
        secure_port: Port {
            number: 8443,
            enabled: false,
        },
        vip_address: Some(app.to_lowercase()),
        secure_vip_address: None,
        status: Status::Up,
        overridden_status: Status::Unknown,
        metadata: Default::default(),
        data_center: DataCenter::default(),
        zone: None,
        home_page_url: None,
        status_page_url: None,
        health_check_url: None,
        secure_health_check_url: None,
        country_id: 1,
        lease: LeaseInfo {
            renewal_interval_secs: 30,
            duration_secs: 90,
            ..LeaseInfo::default()
        },
        is_coordinating_discovery_server: false,
        last_updated_timestamp: 0,
        last_dirty_timestamp: 0,
        action_type: None,
        health_check: None,
    }
}

fn table(preservation: SelfPreservationSettings) -> LeaseTable {
    LeaseTable::new(
        Clock::new(),
        TableSettings {
            delta_retention: Duration::from_secs(180),
            tombstone_retention: Duration::from_secs(600),
            preservation,
        },
    )
}

fn without_preservation() -> SelfPreservationSettings {
    SelfPreservationSettings {
        enabled: false,
        ..SelfPreservationSettings::default()
    }
}

/// Advances the paused clock one second at a time, sampling renewals as the registry's
/// ticker does, and renewing the given instances on their 30 s schedule.
async fn run_for(table: &LeaseTable, seconds: u64, renewing: &[(&str, &str)]) {
    for _ in 0..seconds {
        tokio::time::advance(Duration::from_secs(1)).await;
        let now_secs = table.clock().now_ms() / 1000;
        if now_secs.is_multiple_of(30) {
            for (app, id) in renewing {
                table.renew(app, id, RenewalReport::default()).unwrap();
            }
        }
        table.sample_renewals();
    }
}

#[tokio::test(start_paused = true)]
async fn evicts_instance_after_lease_expires() {
    let table = table(without_preservation());
    table.register(instance("ORDERS", "a")).unwrap();
    tokio::time::advance(Duration::from_secs(89)).await;
    assert!(table.sweep().evicted.is_empty(), "not before the lease duration");
    tokio::time::advance(Duration::from_secs(2)).await;
    let sweep = table.sweep();
    assert_eq!(sweep.evicted, vec![("ORDERS".to_owned(), "a".to_owned())]);
    assert!(table.read().instance("ORDERS", "a").is_none());
    assert_eq!(table.evictions_total(), 1);
}

#[tokio::test(start_paused = true)]
async fn renewal_postpones_eviction() {
    let table = table(without_preservation());
    table.register(instance("ORDERS", "a")).unwrap();
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(
        table.renew("ORDERS", "a", RenewalReport::default()),
        Ok(Renewal::Renewed)
    );
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(table.sweep().evicted.is_empty());
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(table.sweep().evicted.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn renewal_does_not_change_the_version() {
    let table = table(without_preservation());
    table.register(instance("ORDERS", "a")).unwrap();
    let index = table.index();
    table.renew("ORDERS", "a", RenewalReport::default()).unwrap();
    assert_eq!(table.index(), index);
    assert!(matches!(
        table.renew("ORDERS", "nope", RenewalReport::default()),
        Err(TableError::UnknownInstance { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn renewal_from_a_newer_record_asks_to_register_again() {
    let table = table(without_preservation());
    let mut first = instance("ORDERS", "a");
    first.last_dirty_timestamp = 1_000;
    table.register(first).unwrap();
    let newer = RenewalReport {
        status: None,
        last_dirty_timestamp: Some(2_000),
    };
    assert_eq!(table.renew("ORDERS", "a", newer), Ok(Renewal::MustRegister));
    let older = RenewalReport {
        status: None,
        last_dirty_timestamp: Some(500),
    };
    assert_eq!(table.renew("ORDERS", "a", older), Ok(Renewal::Renewed));
}

#[tokio::test(start_paused = true)]
async fn the_newer_dirty_timestamp_wins_a_re_registration() {
    let table = table(without_preservation());
    let mut newer = instance("ORDERS", "a");
    newer.last_dirty_timestamp = 2_000;
    newer.metadata.insert("v".into(), "2".into());
    table.register(newer).unwrap();
    let mut older = instance("ORDERS", "a");
    older.last_dirty_timestamp = 1_000;
    older.metadata.insert("v".into(), "1".into());
    assert!(table.register(older).is_none());
    let held = table.read().instance("ORDERS", "a").unwrap();
    assert_eq!(held.metadata["v"], "2");
}

#[tokio::test(start_paused = true)]
async fn an_identical_re_registration_is_not_a_change() {
    let table = table(without_preservation());
    assert_eq!(
        table.register(instance("ORDERS", "a")).unwrap().kind,
        ChangeKind::Registered
    );
    let index = table.index();
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(table.register(instance("ORDERS", "a")).is_none());
    assert_eq!(table.index(), index);
    let mut moved = instance("ORDERS", "a");
    moved.port.number = 9090;
    assert_eq!(table.register(moved).unwrap().kind, ChangeKind::Modified);
}

#[tokio::test(start_paused = true)]
async fn an_override_wins_until_cleared_and_survives_re_registration() {
    let table = table(without_preservation());
    table.register(instance("ORDERS", "a")).unwrap();
    table.set_override("ORDERS", "a", Status::OutOfService).unwrap();
    table.register(instance("ORDERS", "a"));
    let held = table.read().instance("ORDERS", "a").unwrap();
    assert_eq!(
        (held.status, held.overridden_status),
        (Status::OutOfService, Status::OutOfService)
    );
    let report = RenewalReport {
        status: Some(Status::Up),
        last_dirty_timestamp: None,
    };
    table.renew("ORDERS", "a", report).unwrap();
    assert_eq!(
        table.read().instance("ORDERS", "a").unwrap().status,
        Status::OutOfService
    );

    table.clear_override("ORDERS", "a", None).unwrap();
    let held = table.read().instance("ORDERS", "a").unwrap();
    assert_eq!(
        (held.status, held.overridden_status),
        (Status::Unknown, Status::Unknown)
    );
    assert_eq!(
        table.renew("ORDERS", "a", RenewalReport::default()),
        Ok(Renewal::MustRegister),
        "UNKNOWN after clearing makes the instance re-register its real status"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reported_status_applies_when_no_override_is_set() {
    let table = table(without_preservation());
    table.register(instance("ORDERS", "a")).unwrap();
    let report = RenewalReport {
        status: Some(Status::Down),
        last_dirty_timestamp: None,
    };
    table.renew("ORDERS", "a", report).unwrap();
    assert_eq!(table.read().instance("ORDERS", "a").unwrap().status, Status::Down);
}

#[tokio::test(start_paused = true)]
async fn watchers_are_told_of_cancellation_and_eviction_in_order() {
    let table = table(without_preservation());
    let subscription = table.subscribe(None);
    assert_eq!(subscription.backlog, Some(Vec::new()));
    let mut changes = subscription.receiver;
    table.register(instance("ORDERS", "a")).unwrap();
    table.register(instance("ORDERS", "b")).unwrap();
    table.cancel("ORDERS", "a").unwrap();
    tokio::time::advance(Duration::from_secs(91)).await;
    table.sweep();
    let kinds: Vec<(ChangeKind, String)> = (0..4)
        .map(|_| {
            let change = changes.try_recv().unwrap();
            (change.kind, change.instance_id.clone())
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            (ChangeKind::Registered, "a".to_owned()),
            (ChangeKind::Registered, "b".to_owned()),
            (ChangeKind::Cancelled, "a".to_owned()),
            (ChangeKind::Evicted, "b".to_owned()),
        ]
    );
    assert!(table.read().apps().next().is_none(), "an app with no instances is gone");
}

#[tokio::test(start_paused = true)]
async fn deltas_need_a_resync_once_changes_are_pruned() {
    let table = table(without_preservation());
    table.register(instance("ORDERS", "a")).unwrap();
    let after_first = table.index();
    table.register(instance("ORDERS", "b")).unwrap();
    let since_first = table.read().changes_since(after_first).unwrap();
    assert_eq!(since_first.len(), 1);
    assert_eq!(since_first[0].instance_id, "b");
    tokio::time::advance(Duration::from_secs(181)).await;
    table.register(instance("ORDERS", "c")).unwrap();
    assert!(
        table.read().changes_since(0).is_none(),
        "pruned changes cannot be replayed"
    );
    assert_eq!(table.read().changes_since(table.index() - 1).unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn self_preservation_spares_leases_when_most_renewals_stop() {
    let table = table_with_instances(SelfPreservationSettings::default());
    let ids: Vec<String> = (0..10).map(|n| format!("i{n}")).collect();
    let all: Vec<(&str, &str)> = ids.iter().map(|id| ("ORDERS", id.as_str())).collect();
    run_for(&table, 120, &all).await;
    assert!(
        !table.sweep().self_preservation.active,
        "healthy renewals keep the mode off"
    );

    // A network blip: only two of ten instances still reach the registry.
    run_for(&table, 120, &all[..2]).await;
    let sweep = table.sweep();
    assert!(sweep.self_preservation.active, "{:?}", sweep.self_preservation);
    assert!(sweep.evicted.is_empty());
    assert_eq!(sweep.spared, 8);
    assert_eq!(table.read().instance_count(), 10);

    // The blip heals: renewals come back and the mode lets go.
    run_for(&table, 61, &all).await;
    assert!(!table.sweep().self_preservation.active);
}

#[tokio::test(start_paused = true)]
async fn a_few_dead_instances_are_evicted_and_the_expected_rate_follows() {
    let table = table_with_instances(SelfPreservationSettings::default());
    let ids: Vec<String> = (0..10).map(|n| format!("i{n}")).collect();
    let all: Vec<(&str, &str)> = ids.iter().map(|id| ("ORDERS", id.as_str())).collect();
    run_for(&table, 120, &all).await;
    let before = table.judge_self_preservation().expected_renewals;

    // One instance of ten dies: 90 % of renewals still arrive, above the 85 % share.
    run_for(&table, 120, &all[1..]).await;
    let sweep = table.sweep();
    assert!(!sweep.self_preservation.active, "{:?}", sweep.self_preservation);
    assert_eq!(sweep.evicted, vec![("ORDERS".to_owned(), "i0".to_owned())]);
    let after = table.judge_self_preservation().expected_renewals;
    assert!(
        after < before,
        "the expected rate drops with the evicted lease: {before} -> {after}"
    );

    // Later another one dies: judged against nine, not the ten Eureka would remember.
    run_for(&table, 120, &all[2..]).await;
    let sweep = table.sweep();
    assert!(!sweep.self_preservation.active, "{:?}", sweep.self_preservation);
    assert_eq!(sweep.evicted, vec![("ORDERS".to_owned(), "i1".to_owned())]);
}

#[tokio::test(start_paused = true)]
async fn self_preservation_stays_off_below_the_minimum_and_when_disabled() {
    let table = table(SelfPreservationSettings::default());
    table.register(instance("ORDERS", "a")).unwrap();
    table.register(instance("ORDERS", "b")).unwrap();
    run_for(&table, 100, &[]).await;
    let sweep = table.sweep();
    assert!(!sweep.self_preservation.active);
    assert_eq!(sweep.evicted.len(), 2, "two silent instances of two are evicted");

    let disabled = table_with_instances(SelfPreservationSettings {
        enabled: false,
        ..SelfPreservationSettings::default()
    });
    run_for(&disabled, 100, &[]).await;
    let sweep = disabled.sweep();
    assert!(!sweep.self_preservation.active);
    assert_eq!(sweep.evicted.len(), 10);
}

fn table_with_instances(preservation: SelfPreservationSettings) -> LeaseTable {
    let table = table(preservation);
    for n in 0..10 {
        table.register(instance("ORDERS", &format!("i{n}"))).unwrap();
    }
    table
}

#[tokio::test(start_paused = true)]
async fn metadata_patch_sets_and_removes_keys_and_updates_the_zone() {
    let table = table(without_preservation());
    table.register(instance("ORDERS", "a")).unwrap();
    let mut patch = MetadataPatch::new();
    patch.insert("zone".into(), Some("eu-1".into()));
    patch.insert("absent".into(), None);
    let change = table.update_metadata("ORDERS", "a", &patch).unwrap().unwrap();
    assert_eq!(change.instance.zone.as_deref(), Some("eu-1"));
    assert!(
        table.update_metadata("ORDERS", "a", &patch).unwrap().is_none(),
        "no-op patch"
    );
    patch.insert("zone".into(), None);
    let change = table.update_metadata("ORDERS", "a", &patch).unwrap().unwrap();
    assert!(!change.instance.metadata.contains_key("zone"));
}

#[tokio::test(start_paused = true)]
async fn a_re_registration_with_a_newer_dirty_timestamp_is_stored() {
    // A client restarting under the same id before its old lease ran out: its renewals
    // carry the new dirty timestamp, so the registry must hold it, or every renewal
    // would ask the client to register again.
    let table = table(without_preservation());
    let mut first = instance("ORDERS", "a");
    first.last_dirty_timestamp = 1_000;
    table.register(first).unwrap();
    let mut restarted = instance("ORDERS", "a");
    restarted.last_dirty_timestamp = 5_000;
    assert!(table.register(restarted).is_some());
    assert_eq!(
        table.read().instance("ORDERS", "a").unwrap().last_dirty_timestamp,
        5_000
    );
    let report = RenewalReport {
        status: Some(Status::Up),
        last_dirty_timestamp: Some(5_000),
    };
    assert_eq!(table.renew("ORDERS", "a", report), Ok(Renewal::Renewed));
}

fn stamped(app: &str, id: &str, dirty: u64, updated: u64) -> Instance {
    let mut record = instance(app, id);
    record.last_dirty_timestamp = dirty;
    record.last_updated_timestamp = updated;
    record.lease.last_renewal_timestamp = Clock::new().now_ms();
    record
}

#[tokio::test(start_paused = true)]
async fn a_peer_record_is_stored_with_its_stamps_unless_a_newer_one_is_held() {
    let table = table(without_preservation());
    let Applied::Stored(Some(change)) = table.apply_record(stamped("ORDERS", "a", 10, 20)) else {
        panic!("a new record is stored");
    };
    assert_eq!(change.kind, ChangeKind::Registered);
    let held = table.read().instance("ORDERS", "a").unwrap();
    assert_eq!(
        (held.last_dirty_timestamp, held.last_updated_timestamp),
        (10, 20),
        "the peer's stamps are kept"
    );

    assert_eq!(
        table.apply_record(stamped("ORDERS", "a", 10, 20)),
        Applied::Stored(None),
        "the same record again"
    );
    let Applied::NewerRecord(newer) = table.apply_record(stamped("ORDERS", "a", 10, 19)) else {
        panic!("an older record is refused");
    };
    assert_eq!(newer.last_updated_timestamp, 20);
    let mut moved = stamped("ORDERS", "a", 11, 5);
    moved.port.number = 9999;
    assert!(
        matches!(table.apply_record(moved), Applied::Stored(Some(_))),
        "a newer dirty timestamp wins"
    );
    assert_eq!(table.read().instance("ORDERS", "a").unwrap().port.number, 9999);
}

#[tokio::test(start_paused = true)]
async fn cancellations_win_over_older_records_and_lose_to_newer_ones() {
    let table = table(without_preservation());
    table.apply_record(stamped("ORDERS", "a", 10, 20));
    let tombstone = |dirty, updated| Tombstone {
        app: "ORDERS".into(),
        instance_id: "a".into(),
        stamp: Stamp { dirty, updated },
    };
    assert!(matches!(
        table.apply_tombstone(tombstone(10, 15)),
        Applied::NewerRecord(_)
    ));
    assert!(table.read().instance("ORDERS", "a").is_some());
    let Applied::Stored(Some(change)) = table.apply_tombstone(tombstone(10, 30)) else {
        panic!("a newer cancellation removes the record");
    };
    assert_eq!(change.kind, ChangeKind::Cancelled);
    assert!(table.read().instance("ORDERS", "a").is_none());
    // The record that was cancelled cannot come back through a stale copy...
    assert!(matches!(
        table.apply_record(stamped("ORDERS", "a", 10, 20)),
        Applied::NewerTombstone(_)
    ));
    // ...but a re-registration after the cancellation does.
    assert!(matches!(
        table.apply_record(stamped("ORDERS", "a", 11, 40)),
        Applied::Stored(Some(_))
    ));
    let entries = table.digest_entries();
    assert_eq!(entries["ORDERS"].len(), 1);
    assert!(!entries["ORDERS"][0].deleted);
}

#[tokio::test(start_paused = true)]
async fn local_cancellations_leave_tombstones_and_evictions_do_not() {
    let table = table(without_preservation());
    table.register(instance("ORDERS", "cancelled")).unwrap();
    table.register(instance("ORDERS", "evicted")).unwrap();
    table.cancel("ORDERS", "cancelled").unwrap();
    tokio::time::advance(Duration::from_secs(91)).await;
    table.sweep();
    let entries = table.digest_entries();
    let ids: Vec<(&str, bool)> = entries["ORDERS"]
        .iter()
        .map(|e| (e.instance_id.as_str(), e.deleted))
        .collect();
    assert_eq!(ids, [("cancelled", true)]);
    assert_eq!(table.snapshot().tombstones.len(), 1);
    tokio::time::advance(Duration::from_secs(600)).await;
    table.sweep();
    assert!(
        table.snapshot().tombstones.is_empty(),
        "tombstones are forgotten after their retention"
    );
}

#[tokio::test(start_paused = true)]
async fn replicated_renewals_keep_leases_alive_and_count_for_self_preservation() {
    let table = table(SelfPreservationSettings::default());
    for n in 0..5 {
        table.apply_record(stamped("ORDERS", &format!("i{n}"), 1, 1));
    }
    for _ in 0..4 {
        tokio::time::advance(Duration::from_secs(30)).await;
        let now = table.clock().now_ms();
        for n in 0..5 {
            assert_eq!(
                table.apply_renewal("ORDERS", &format!("i{n}"), 1, now),
                Ok(Renewal::Renewed)
            );
        }
        table.sample_renewals();
    }
    let sweep = table.sweep();
    assert!(sweep.evicted.is_empty());
    assert!(!sweep.self_preservation.active, "{:?}", sweep.self_preservation);
    assert!(sweep.self_preservation.renewals_in_window >= 10);
    assert_eq!(
        table.apply_renewal("ORDERS", "i0", 2, 0),
        Ok(Renewal::MustRegister),
        "the peer's record is newer"
    );
    assert!(table.apply_renewal("ORDERS", "nope", 1, 0).is_err());
}

#[tokio::test(start_paused = true)]
async fn no_eviction_during_warm_up() {
    let table = table(without_preservation());
    table.register(instance("ORDERS", "a")).unwrap();
    table.suspend_eviction_until(table.clock().now_ms() + 120_000);
    tokio::time::advance(Duration::from_secs(100)).await;
    let sweep = table.sweep();
    assert!(sweep.evicted.is_empty() && sweep.spared == 1);
    tokio::time::advance(Duration::from_secs(21)).await;
    assert_eq!(table.sweep().evicted.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failing_health_verdict_holds_the_instance_down_until_it_passes() {
    let table = table(without_preservation());
    table.register(instance("ORDERS", "a")).unwrap();
    table.set_health_verdict("ORDERS", "a", false, "answered 500").unwrap();
    assert_eq!(table.read().instance("ORDERS", "a").unwrap().status, Status::Down);
    // What the instance says while failing is remembered, not shown.
    table.register(instance("ORDERS", "a"));
    let report = RenewalReport {
        status: Some(Status::Starting),
        last_dirty_timestamp: None,
    };
    table.renew("ORDERS", "a", report).unwrap();
    let held = table.read().instance("ORDERS", "a").unwrap();
    assert_eq!(held.status, Status::Down);
    assert_eq!(
        held.health_check.as_ref().map(|v| v.reported_status),
        Some(Status::Starting)
    );
    table.set_health_verdict("ORDERS", "a", true, "").unwrap();
    assert_eq!(table.read().instance("ORDERS", "a").unwrap().status, Status::Starting);
    assert!(
        table.set_health_verdict("ORDERS", "a", true, "").unwrap().is_none(),
        "no flip, no change"
    );
}
