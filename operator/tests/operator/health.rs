//! Health of the operator as pure judgements: the readiness and liveness verdict of
//! `health::assess` (watches and controller progress), `WatchState::observe`, how long the
//! leader may still act on its Lease (`run::lease_validity`), and how an unreadable tenant is
//! read and reported (`watch::read_tenant`, `watch::unreadable_conditions`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use ft_operator::health::{
    LIVE_BOUND, Progress, READY_BOUND, Verdict, WATCH_ERROR_GRACE, WatchSignal, WatchState, assess,
};
use ft_operator::run::lease_validity;
use ft_operator::watch::{read_tenant, unreadable_conditions};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::DynamicObject;
use serde_json::json;

const MINIMAL_TENANT: &str = include_str!("../../../examples/minimal-tenant.yaml");

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn healthy() -> Verdict {
    Verdict {
        ready: Ok(()),
        live: Ok(()),
    }
}

/// Stalled past the live bound: neither ready nor alive.
fn stalled_300s() -> Verdict {
    Verdict {
        ready: Err("the controller has made no progress for 300s".into()),
        live: Err("the controller has made no progress for 300s: restart".into()),
    }
}

fn not_ready(why: &str) -> Verdict {
    Verdict {
        ready: Err(why.to_string()),
        live: Ok(()),
    }
}

fn watches<const N: usize>(entries: [(&str, WatchState); N]) -> BTreeMap<String, WatchState> {
    entries
        .into_iter()
        .map(|(name, state)| (name.to_string(), state))
        .collect()
}

fn synced() -> WatchState {
    WatchState {
        listed: true,
        ..WatchState::default()
    }
}

/// A leader that started at `since`, has tenants, and finished its last pass at `finished`.
fn busy_leader(since: Instant, finished: Option<Instant>) -> Progress {
    Progress {
        leading: true,
        since: Some(since),
        has_work: true,
        last_finished: finished,
        ..Progress::default()
    }
}

// --- the bounds the cases below are written against ---

#[test]
fn bounds_are_those_the_cases_assume() {
    assert_eq!(WATCH_ERROR_GRACE, secs(10));
    assert_eq!(READY_BOUND, secs(150));
    assert_eq!(LIVE_BOUND, secs(300));
}

// --- watches ---

#[test]
fn a_standby_is_ready_and_alive_whatever_its_watches_say() {
    let t0 = Instant::now();
    let w = watches([
        ("pods", WatchState::default()),
        (
            "secrets",
            WatchState {
                listed: true,
                failing_since: Some(t0 + secs(1)),
                last_error: Some(t0 + secs(2)),
                optional: false,
            },
        ),
    ]);
    // Even with tenants and no pass finished in an hour: a standby has nothing to judge.
    let standby = Progress {
        leading: false,
        has_work: true,
        last_finished: Some(t0),
        oldest_running: Some(t0),
        ..Progress::default()
    };
    assert_eq!(assess(&w, &standby, t0 + secs(3)), healthy());
    assert_eq!(assess(&w, &standby, t0 + secs(3600)), healthy());
}

#[test]
fn a_leader_with_a_watch_never_listed_is_not_ready_and_names_it() {
    let t0 = Instant::now();
    let progress = busy_leader(t0, None);
    let w = watches([("pods", WatchState::default()), ("secrets", synced())]);
    assert_eq!(
        assess(&w, &progress, t0 + secs(1)),
        not_ready("watch pods: not listed yet")
    );
}

#[test]
fn every_unsynced_watch_is_named() {
    let t0 = Instant::now();
    let progress = busy_leader(t0, None);
    let w = watches([
        ("secrets", WatchState::default()),
        ("namespaces", synced()),
        ("pods", WatchState::default()),
    ]);
    assert_eq!(
        assess(&w, &progress, t0 + secs(1)),
        not_ready("watch pods: not listed yet; watch secrets: not listed yet")
    );
}

#[test]
fn a_leader_whose_watches_all_listed_is_ready() {
    let t0 = Instant::now();
    let progress = busy_leader(t0, Some(t0 + secs(5)));
    let w = watches([("pods", synced()), ("secrets", synced())]);
    assert_eq!(assess(&w, &progress, t0 + secs(6)), healthy());
}

/// Listed at `t0`, then failed at t0+20s and again at t0+30s.
fn failed_twice(t0: Instant) -> WatchState {
    let mut watch = WatchState::default();
    watch.observe(WatchSignal::Listing, t0);
    watch.observe(WatchSignal::Listed, t0);
    watch.observe(WatchSignal::Error, t0 + secs(20));
    watch.observe(WatchSignal::Error, t0 + secs(30));
    watch
}

#[test]
fn a_watch_that_failed_is_not_ready_until_the_grace_has_passed_since_its_last_error() {
    let t0 = Instant::now();
    let progress = busy_leader(t0, Some(t0 + secs(35)));
    let w = watches([("pods", failed_twice(t0))]);
    // Right after the last error; the failure counts from the first one (t0+20s).
    assert_eq!(
        assess(&w, &progress, t0 + secs(31)),
        not_ready("watch pods: failing for 11s")
    );
    // Just before the grace (10 s) has passed since the last error (t0+30s).
    assert_eq!(
        assess(&w, &progress, t0 + Duration::from_millis(39_999)),
        not_ready("watch pods: failing for 19s")
    );
    // Just after: quiet long enough to be taken as recovered.
    assert_eq!(
        assess(&w, &progress, t0 + Duration::from_millis(40_001)),
        healthy()
    );
}

#[test]
fn a_failed_watch_recovers_on_an_event() {
    let t0 = Instant::now();
    let progress = busy_leader(t0, Some(t0 + secs(35)));
    let mut watch = failed_twice(t0);
    watch.observe(WatchSignal::Event, t0 + secs(31));
    let w = watches([("pods", watch)]);
    assert_eq!(assess(&w, &progress, t0 + secs(32)), healthy());
}

#[test]
fn a_failed_watch_recovers_on_a_new_list_but_not_when_the_list_merely_begins() {
    let t0 = Instant::now();
    let progress = busy_leader(t0, Some(t0 + secs(35)));
    let mut watch = failed_twice(t0);
    watch.observe(WatchSignal::Listing, t0 + secs(31));
    assert_eq!(
        assess(
            &watches([("pods", watch.clone())]),
            &progress,
            t0 + secs(32)
        ),
        not_ready("watch pods: failing for 12s")
    );
    watch.observe(WatchSignal::Listed, t0 + secs(32));
    assert_eq!(
        assess(&watches([("pods", watch)]), &progress, t0 + secs(33)),
        healthy()
    );
}

#[test]
fn a_watch_failing_again_after_recovering_blocks_readiness_again() {
    let t0 = Instant::now();
    let progress = busy_leader(t0, Some(t0 + secs(45)));
    let mut watch = failed_twice(t0);
    watch.observe(WatchSignal::Event, t0 + secs(31));
    watch.observe(WatchSignal::Error, t0 + secs(40));
    assert_eq!(
        assess(&watches([("pods", watch)]), &progress, t0 + secs(46)),
        not_ready("watch pods: failing for 6s")
    );
}

#[test]
fn an_optional_watch_never_blocks_readiness() {
    let t0 = Instant::now();
    let progress = busy_leader(t0, Some(t0 + secs(1)));
    let w = watches([
        (
            "backups.velero.io",
            WatchState {
                optional: true,
                ..WatchState::default()
            },
        ),
        (
            "schedules.velero.io",
            WatchState {
                listed: true,
                failing_since: Some(t0 + secs(1)),
                last_error: Some(t0 + secs(2)),
                optional: true,
            },
        ),
        ("pods", synced()),
    ]);
    assert_eq!(assess(&w, &progress, t0 + secs(2)), healthy());
}

// --- progress of the controller loop ---

#[test]
fn a_leader_with_work_and_no_pass_finished_for_the_ready_bound_is_not_ready_but_alive() {
    let t0 = Instant::now();
    let progress = busy_leader(t0, Some(t0 + secs(10)));
    let none = BTreeMap::new();
    assert_eq!(assess(&none, &progress, t0 + secs(159)), healthy());
    assert_eq!(
        assess(&none, &progress, t0 + secs(160)),
        not_ready("the controller has made no progress for 150s")
    );
    assert_eq!(
        assess(&none, &progress, t0 + secs(309)),
        not_ready("the controller has made no progress for 299s")
    );
}

#[test]
fn a_leader_with_work_and_no_pass_finished_since_it_started_counts_from_its_start() {
    let t0 = Instant::now();
    let progress = busy_leader(t0 + secs(100), None);
    let none = BTreeMap::new();
    assert_eq!(assess(&none, &progress, t0 + secs(249)), healthy());
    assert_eq!(
        assess(&none, &progress, t0 + secs(250)),
        not_ready("the controller has made no progress for 150s")
    );
}

#[test]
fn a_leader_with_work_and_no_pass_finished_for_the_live_bound_is_not_alive() {
    let t0 = Instant::now();
    let progress = busy_leader(t0, Some(t0 + secs(10)));
    let verdict = assess(&BTreeMap::new(), &progress, t0 + secs(310));
    assert_eq!(verdict, stalled_300s());
}

#[test]
fn a_pass_running_for_the_live_bound_is_not_alive_even_without_work() {
    let t0 = Instant::now();
    let progress = Progress {
        leading: true,
        since: Some(t0),
        has_work: false,
        last_finished: Some(t0 + secs(290)),
        oldest_running: Some(t0 + secs(5)),
        ..Progress::default()
    };
    let none = BTreeMap::new();
    // A pass finished recently elsewhere does not hide the one stuck since t0+5s.
    assert_eq!(
        assess(&none, &progress, t0 + secs(155)),
        not_ready("the controller has made no progress for 150s")
    );
    assert_eq!(assess(&none, &progress, t0 + secs(305)), stalled_300s());
}

#[test]
fn no_work_and_nothing_running_is_alive_and_ready_however_long() {
    let t0 = Instant::now();
    let idle = Progress {
        leading: true,
        since: Some(t0),
        has_work: false,
        last_finished: Some(t0 + secs(1)),
        oldest_running: None,
        ..Progress::default()
    };
    let none = BTreeMap::new();
    assert_eq!(assess(&none, &idle, t0 + secs(400)), healthy());
    assert_eq!(assess(&none, &idle, t0 + secs(86_400)), healthy());
}

#[test]
fn waiting_on_purpose_for_the_lease_is_never_a_stall() {
    let t0 = Instant::now();
    let paused = Progress {
        leading: true,
        since: Some(t0),
        has_work: true,
        last_finished: Some(t0 + secs(1)),
        oldest_running: Some(t0 + secs(2)),
        paused_since: Some(t0 + secs(3)),
        resumed: None,
    };
    let none = BTreeMap::new();
    assert_eq!(assess(&none, &paused, t0 + secs(400)), healthy());
    assert_eq!(assess(&none, &paused, t0 + secs(86_400)), healthy());
    assert_eq!(paused.stalled_for(t0 + secs(86_400)), None);
}

#[test]
fn after_resuming_the_clock_starts_from_the_resume() {
    let t0 = Instant::now();
    let resumed = Progress {
        leading: true,
        since: Some(t0),
        has_work: true,
        last_finished: Some(t0 + secs(1)),
        oldest_running: None,
        paused_since: None,
        resumed: Some(t0 + secs(1000)),
    };
    let none = BTreeMap::new();
    // The last pass finished nearly 17 minutes ago, but passes only resumed 60 s ago.
    assert_eq!(assess(&none, &resumed, t0 + secs(1060)), healthy());
    assert_eq!(resumed.stalled_for(t0 + secs(1060)), Some(secs(60)));
    // Still, the clock runs from the resume.
    assert_eq!(
        assess(&none, &resumed, t0 + secs(1150)),
        not_ready("the controller has made no progress for 150s")
    );
}

// --- WatchState::observe ---

#[test]
fn listing_keeps_listed_as_it_was() {
    let t0 = Instant::now();
    let mut fresh = WatchState::default();
    fresh.observe(WatchSignal::Listing, t0);
    assert_eq!(fresh, WatchState::default());

    let mut relisting = WatchState {
        listed: true,
        failing_since: Some(t0),
        last_error: Some(t0),
        optional: false,
    };
    relisting.observe(WatchSignal::Listing, t0 + secs(1));
    assert_eq!(
        relisting,
        WatchState {
            listed: true,
            failing_since: Some(t0),
            last_error: Some(t0),
            optional: false,
        }
    );
}

#[test]
fn listed_sets_listed_and_clears_the_failure() {
    let t0 = Instant::now();
    let mut watch = WatchState {
        listed: false,
        failing_since: Some(t0),
        last_error: Some(t0 + secs(2)),
        optional: false,
    };
    watch.observe(WatchSignal::Listed, t0 + secs(3));
    assert_eq!(
        watch,
        WatchState {
            listed: true,
            failing_since: None,
            last_error: Some(t0 + secs(2)),
            optional: false,
        }
    );
}

#[test]
fn error_keeps_the_first_failure_and_updates_the_last_error() {
    let t0 = Instant::now();
    let mut watch = synced();
    watch.observe(WatchSignal::Error, t0 + secs(5));
    assert_eq!(
        watch,
        WatchState {
            listed: true,
            failing_since: Some(t0 + secs(5)),
            last_error: Some(t0 + secs(5)),
            optional: false,
        }
    );
    watch.observe(WatchSignal::Error, t0 + secs(8));
    assert_eq!(
        watch,
        WatchState {
            listed: true,
            failing_since: Some(t0 + secs(5)),
            last_error: Some(t0 + secs(8)),
            optional: false,
        }
    );
}

// --- run::lease_validity ---

const RENEWED: &str = "2026-11-30T10:00:00.000000Z";

fn lease(spec: serde_json::Value) -> anyhow::Result<Lease> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": { "name": "ft-operator", "namespace": "ft-operator-system" },
        "spec": spec,
    }))?)
}

/// `seconds` after 2026-11-30T10:00:00Z.
fn after_renewal(seconds: u64) -> anyhow::Result<SystemTime> {
    let renewed = u64::try_from(
        "2026-11-30T10:00:00Z"
            .parse::<jiff::Timestamp>()?
            .as_second(),
    )?;
    Ok(SystemTime::UNIX_EPOCH + secs(renewed + seconds))
}

#[test]
fn a_lease_held_by_another_identity_gives_no_validity() -> anyhow::Result<()> {
    let lease = lease(json!({
        "holderIdentity": "ft-operator-b",
        "leaseDurationSeconds": 15,
        "renewTime": RENEWED,
    }))?;
    assert_eq!(
        lease_validity(&lease, "ft-operator-a", after_renewal(4)?),
        None
    );
    Ok(())
}

#[test]
fn a_lease_without_holder_gives_no_validity() -> anyhow::Result<()> {
    let lease = lease(json!({
        "leaseDurationSeconds": 15,
        "renewTime": RENEWED,
    }))?;
    assert_eq!(
        lease_validity(&lease, "ft-operator-a", after_renewal(4)?),
        None
    );
    Ok(())
}

#[test]
fn a_lease_held_by_us_is_valid_until_one_second_short_of_its_end() -> anyhow::Result<()> {
    let lease = lease(json!({
        "holderIdentity": "ft-operator-a",
        "leaseDurationSeconds": 15,
        "renewTime": RENEWED,
    }))?;
    // Renewed 4 s ago for 15 s: it ends in 11 s, so 10 s of action are left.
    assert_eq!(
        lease_validity(&lease, "ft-operator-a", after_renewal(4)?),
        Some(secs(10))
    );
    // Renewed 20 s ago: lapsed, but still ours.
    assert_eq!(
        lease_validity(&lease, "ft-operator-a", after_renewal(20)?),
        Some(Duration::ZERO)
    );
    Ok(())
}

#[test]
fn a_lease_never_renewed_gives_no_validity() -> anyhow::Result<()> {
    let lease = lease(json!({
        "holderIdentity": "ft-operator-a",
        "leaseDurationSeconds": 15,
    }))?;
    assert_eq!(
        lease_validity(&lease, "ft-operator-a", after_renewal(4)?),
        None
    );
    Ok(())
}

// --- watch::read_tenant ---

fn minimal_tenant() -> anyhow::Result<DynamicObject> {
    let value: serde_json::Value = serde_saphyr::from_str(MINIMAL_TENANT)?;
    Ok(serde_json::from_value(value)?)
}

#[test]
fn the_minimal_example_tenant_reads() -> anyhow::Result<()> {
    let tenant = read_tenant(&minimal_tenant()?).map_err(anyhow::Error::msg)?;
    assert_eq!(tenant.metadata.name.as_deref(), Some("sandbox"));
    assert_eq!(tenant.spec.environments.len(), 1);
    assert_eq!(tenant.spec.environments[0].name, "dev");
    assert_eq!(tenant.spec.environments[0].kind.as_str(), "development");
    Ok(())
}

#[test]
fn an_unknown_environment_kind_is_named_by_its_path() -> anyhow::Result<()> {
    let mut object = minimal_tenant()?;
    object.data["spec"]["environments"][0]["kind"] = json!("lab");
    let Err(error) = read_tenant(&object) else {
        anyhow::bail!("a tenant with an environment of kind `lab` was read");
    };
    assert!(
        error.starts_with("spec.environments[0].kind"),
        "the error names the field: {error}"
    );
    assert!(error.contains("lab"), "the error names the value: {error}");
    Ok(())
}

// --- watch::unreadable_conditions ---

#[test]
fn an_unreadable_tenant_turns_ready_false_and_keeps_degraded_when_it_was_already()
-> anyhow::Result<()> {
    let compliant = json!({
        "type": "Compliant",
        "status": "True",
        "reason": "AllControlsPass",
        "message": "",
        "lastTransitionTime": "2026-11-01T08:00:00Z",
        "observedGeneration": 3,
    });
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "hosting.francetravail.fr/v1alpha1",
        "kind": "FranceTravailTenant",
        "metadata": { "name": "sandbox", "generation": 4 },
        "spec": {},
        "status": {
            "conditions": [
                compliant.clone(),
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Reconciled",
                    "message": "",
                    "lastTransitionTime": "2026-11-02T09:00:00Z",
                    "observedGeneration": 3,
                },
                {
                    "type": "Degraded",
                    "status": "True",
                    "reason": "ApplyFailed",
                    "message": "earlier",
                    "lastTransitionTime": "2026-11-03T10:00:00Z",
                    "observedGeneration": 3,
                },
            ],
        },
    }))?;
    let now = Time("2026-11-30T10:00:00Z".parse::<jiff::Timestamp>()?);
    let conditions = unreadable_conditions(&object, "cannot read spec.x", &now);
    assert_eq!(
        conditions,
        vec![
            compliant,
            json!({
                "type": "Ready",
                "status": "False",
                "reason": "Unreadable",
                "message": "cannot read spec.x",
                "lastTransitionTime": "2026-11-30T10:00:00Z",
                "observedGeneration": 4,
            }),
            json!({
                "type": "Degraded",
                "status": "True",
                "reason": "Unreadable",
                "message": "cannot read spec.x",
                "lastTransitionTime": "2026-11-03T10:00:00Z",
                "observedGeneration": 4,
            }),
        ]
    );
    Ok(())
}

#[test]
fn an_unreadable_tenant_without_conditions_gets_both_from_now() -> anyhow::Result<()> {
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "hosting.francetravail.fr/v1alpha1",
        "kind": "FranceTravailTenant",
        "metadata": { "name": "sandbox", "generation": 1 },
        "spec": {},
    }))?;
    let now = Time("2026-11-30T10:00:00Z".parse::<jiff::Timestamp>()?);
    assert_eq!(
        unreadable_conditions(&object, "why", &now),
        vec![
            json!({
                "type": "Ready",
                "status": "False",
                "reason": "Unreadable",
                "message": "why",
                "lastTransitionTime": "2026-11-30T10:00:00Z",
                "observedGeneration": 1,
            }),
            json!({
                "type": "Degraded",
                "status": "True",
                "reason": "Unreadable",
                "message": "why",
                "lastTransitionTime": "2026-11-30T10:00:00Z",
                "observedGeneration": 1,
            }),
        ]
    );
    Ok(())
}
