//! The decisions of a reconcile pass that are not a builder's: when the controls may judge,
//! when to look again, which key was lost, which rights to bind, and what an export request
//! asks for.

use std::time::Duration;

use ft_core::api::{ExportStatus, TenantStatus, annotations};
use ft_core::applied::ApplyReport;
use ft_core::backup::{ExportStep, NO_ENGINE};
use ft_core::pass::{
    Applied, Judge, RESYNC, SETTLING, judge, next_look, replaced_key, wanted_bindings,
};
use ft_core::settings::BuildSettings;

use crate::common;

fn tenant() -> ft_core::api::FranceTravailTenant {
    common::tenant("examples/tenant.yaml")
}

fn now() -> jiff::Timestamp {
    "2026-11-22T12:00:00Z".parse().expect("a timestamp")
}

#[test]
fn the_controls_judge_only_a_pass_that_wrote_nothing_and_sees_everything() {
    let quiet = ApplyReport::default();
    assert_eq!(judge(Applied::Done(&quiet)), Judge::Now);
    let wrote = ApplyReport {
        created: vec!["Namespace/a-prod".into()],
        ..Default::default()
    };
    assert_eq!(
        judge(Applied::Done(&wrote)),
        Judge::Later { settling: true }
    );
    let unseen = ApplyReport {
        unseen: 1,
        ..Default::default()
    };
    assert_eq!(
        judge(Applied::Done(&unseen)),
        Judge::Later { settling: true }
    );
    // Written, and the caches have since shown every write: judged in the same pass.
    assert_eq!(judge(Applied::Seen), Judge::Now);
    assert_eq!(judge(Applied::Refused), Judge::Refused);
    assert_eq!(judge(Applied::Failed), Judge::Later { settling: false });
}

#[test]
fn a_pass_that_wrote_looks_again_within_a_second_any_other_within_the_resync() {
    assert_eq!(
        next_look(&Judge::Later { settling: true }),
        Duration::from_secs(1)
    );
    assert_eq!(SETTLING, Duration::from_secs(1));
    for judged in [Judge::Now, Judge::Refused, Judge::Later { settling: false }] {
        assert_eq!(next_look(&judged), Duration::from_secs(60));
    }
    assert_eq!(RESYNC, Duration::from_secs(60));
}

#[test]
fn a_key_other_than_the_one_the_status_knew_was_replaced() {
    let mut t = tenant();
    assert_eq!(replaced_key(&t, "sha256:new"), None, "no key known yet");
    t.status = Some(TenantStatus {
        key_fingerprint: Some("sha256:old".into()),
        ..Default::default()
    });
    assert_eq!(replaced_key(&t, "sha256:old"), None);
    assert_eq!(replaced_key(&t, "sha256:new"), Some("sha256:old"));
}

#[test]
fn a_refused_spec_still_binds_the_rights_in_force_and_no_other() {
    let t = tenant();
    let built = common::desired_with(&t, &BuildSettings::default(), None, now());
    let from_build = wanted_bindings(&t, Some(&built), now());
    assert_eq!(from_build, built.role_bindings);
    let refused = wanted_bindings(&t, None, now());
    assert_eq!(refused, built.role_bindings);
    // Once every grant has lapsed, a refused spec binds nothing.
    let later = "2199-01-01T00:00:00Z".parse().expect("a timestamp");
    assert!(wanted_bindings(&t, None, later).is_empty());
}

#[test]
fn an_export_request_is_blocked_naming_why_or_started() {
    let mut t = tenant();
    let velero = "velero";
    assert_eq!(
        ft_core::backup::export_step(&t, Some(true), velero),
        ExportStep::None
    );
    t.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(annotations::EXPORT_REQUEST.into(), "2026-11-22".into());
    // Without Velero: blocked, saying so.
    let ExportStep::Show(Some(blocked)) = ft_core::backup::export_step(&t, Some(false), velero)
    else {
        panic!("blocked without Velero");
    };
    assert_eq!(blocked.phase, "Blocked");
    assert_eq!(blocked.message, NO_ENGINE);
    // Not known yet: the last status stands.
    let previous = ExportStatus {
        requested: "2026-11-22".into(),
        phase: "InProgress".into(),
        ..Default::default()
    };
    t.status = Some(TenantStatus {
        export: Some(previous.clone()),
        ..Default::default()
    });
    assert_eq!(
        ft_core::backup::export_step(&t, None, velero),
        ExportStep::Show(Some(previous))
    );
    // With Velero: one Backup per environment, made while the export has not finished.
    let ExportStep::Run { wanted, create, .. } =
        ft_core::backup::export_step(&t, Some(true), velero)
    else {
        panic!("runs with Velero");
    };
    assert_eq!(wanted.len(), t.spec.environments.len());
    assert!(create);
    t.status = Some(TenantStatus {
        export: Some(ExportStatus {
            requested: "2026-11-22".into(),
            phase: "Completed".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let ExportStep::Run { create, .. } = ft_core::backup::export_step(&t, Some(true), velero)
    else {
        panic!("runs with Velero");
    };
    assert!(!create, "a finished export's Backups are Velero's");
}

#[test]
fn a_missing_cluster_wide_policy_makes_the_tenant_degraded_naming_it() {
    use ft_core::api::{ControlResult, ControlStatus, ReportStatus};
    use ft_core::status::{Outcome, after_pass, condition};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let t = tenant();
    let report = |result, reason: &str| ReportStatus {
        controls: vec![ControlStatus {
            id: "GEO-3".into(),
            rules: vec!["CLD-74".into()],
            title: "Placement is enforced when pods are admitted".into(),
            severity: "high".into(),
            result,
            reason: reason.into(),
            message: "ValidatingAdmissionPolicyBinding/ft-placement is missing".into(),
            last_transition_time: Time(now()),
        }],
        ..Default::default()
    };
    let now = Time(now());
    let missing = report(ControlResult::Fail, "AdmissionPolicyMissing");
    let status = after_pass(
        &t,
        Outcome::Applied,
        Some(&missing),
        "sha256:k".into(),
        None,
        &now,
    );
    let degraded = condition(Some(&status), "Degraded").expect("Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "AdmissionPolicyMissing")
    );
    assert!(
        degraded.message.contains("ft-placement is missing"),
        "{}",
        degraded.message
    );
    // Ready still says the children are in place: the operator did its part.
    assert_eq!(
        condition(Some(&status), "Ready").expect("Ready").status,
        "True"
    );

    // Any other failing control, or a passing GEO-3, degrades nothing.
    let other = report(ControlResult::Fail, "PodsOutsideAllowedCountries");
    let status = after_pass(
        &t,
        Outcome::Applied,
        Some(&other),
        "sha256:k".into(),
        None,
        &now,
    );
    assert_eq!(
        condition(Some(&status), "Degraded")
            .expect("Degraded")
            .status,
        "False"
    );
}

/// Tenant `offres` with environment `emploi-prod` and tenant `offres-emploi` with environment
/// `prod` both compose `offres-emploi-prod`: the second takes nothing over (CLD-20).
#[test]
fn a_namespace_another_tenant_owns_is_refused_naming_both() {
    let mut first = tenant();
    first.metadata.name = Some("offres".into());
    first.spec.environments[0].name = "emploi-prod".into();
    let second = tenant();
    let restoring = Default::default();
    let owner = |ns: &str| (ns == "offres-emploi-prod").then(|| "offres".to_string());

    let refused = ft_core::pass::claim_namespaces(&second, &restoring, owner).unwrap_err();
    assert_eq!(refused.errors.len(), 1, "{refused}");
    assert_eq!(refused.errors[0].field, "spec.environments");
    assert!(
        refused.errors[0]
            .message
            .starts_with("namespace offres-emploi-prod belongs to tenant offres:"),
        "{refused}"
    );
    assert!(refused.errors[0].message.contains("CLD-20"), "{refused}");

    // Its own namespaces, and ones nobody owns yet, it takes.
    let claimed = ft_core::pass::claim_namespaces(&first, &restoring, owner).expect("its own");
    assert!(
        claimed.contains(&"offres-emploi-prod".to_string()),
        "{claimed:?}"
    );
    let fresh = ft_core::pass::claim_namespaces(&second, &restoring, |_| None).expect("free");
    assert_eq!(fresh, ["offres-emploi-prod", "offres-emploi-dev"]);
}

#[test]
fn a_write_is_shown_by_its_version_or_a_newer_one_a_deletion_by_absence() {
    use ft_core::applied::Awaited;
    let written = Awaited {
        key: "NetworkPolicy/a-prod/ft-default-deny".into(),
        version: Some("120".into()),
    };
    assert_eq!(
        written.parts(),
        ("NetworkPolicy", Some("a-prod"), "ft-default-deny")
    );
    assert!(written.is_shown_by(Some(Some("120"))));
    assert!(written.is_shown_by(Some(Some("121"))));
    assert!(!written.is_shown_by(Some(Some("119"))), "an older version");
    assert!(!written.is_shown_by(None), "not in the cache yet");
    assert!(
        !written.is_shown_by(Some(None)),
        "a cached object without a version"
    );
    // A version that is not a number counts only as itself.
    let opaque = Awaited {
        key: "Namespace/a-prod".into(),
        version: Some("x7".into()),
    };
    assert_eq!(opaque.parts(), ("Namespace", None, "a-prod"));
    assert!(opaque.is_shown_by(Some(Some("x7"))));
    assert!(!opaque.is_shown_by(Some(Some("x8"))));
    let deleted = Awaited {
        key: "ResourceQuota/a-prod/ft-quota".into(),
        version: None,
    };
    assert!(deleted.is_shown_by(None));
    assert!(!deleted.is_shown_by(Some(Some("5"))), "still cached");
}
