//! End-to-end: backups, restore tests and exports through Velero, against a real API server
//! with a fixture of Velero's definitions (there is no Velero server: the test plays its part).
//! Without Velero the operator runs and reports it; once Velero's API appears, without a
//! restart, each environment gets its Schedule (put back when deleted by hand); a completed backup gets a restore test into a
//! scratch namespace placed like production, whose result lands in the report; a failed one,
//! or a location abroad or beside the nodes, fails the control; an export can be requested.

use std::time::Duration;

use anyhow::Context as _;
use ft_core::api::{ComplianceReport, ControlResult, FranceTravailTenant, annotations, labels};
use ft_core::backup::velero::{Backup as VeleroBackup, Schedule};
use ft_e2e::{
    Operator, TestNodes, VELERO_NAMESPACE, cluster, complete_scheduled_backups,
    create_example_tenant, delete_tenant, ensure_namespace, finish_restore_tests, install_crds,
    install_velero, remove_velero, set_location, unique, wait_for, wait_namespace_going,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const OPERATOR_NAMESPACE: &str = "ft-system";
/// Velero's API is looked for once a minute.
const DISCOVERY: Duration = Duration::from_secs(150);
const SETTLE: Duration = Duration::from_secs(60);

/// Waits until `control` of the tenant's report is `result` and its message satisfies `check`.
async fn wait_control(
    client: &Client,
    tenant: &str,
    control: &str,
    result: ControlResult,
    check: impl Fn(&str) -> bool,
    timeout: Duration,
) -> anyhow::Result<String> {
    let reports: Api<ComplianceReport> = Api::all(client.clone());
    let waited = wait_for(
        &format!("{control} {}", result.as_str()),
        timeout,
        || async {
            let report = reports.get_opt(tenant).await?;
            Ok(report
                .and_then(|r| r.status)
                .and_then(|s| s.controls.into_iter().find(|c| c.id == control))
                .filter(|c| c.result == result && check(&c.message))
                .map(|c| c.message))
        },
    )
    .await;
    if waited.is_err() {
        let last = reports.get_opt(tenant).await.ok().flatten();
        eprintln!(
            "e2e: last {control} seen: {:#?}",
            last.and_then(|r| r.status)
                .and_then(|s| s.controls.into_iter().find(|c| c.id == control))
        );
    }
    waited
}

#[tokio::test]
#[ignore = "e2e: needs a Kubernetes API server; set KUBECONFIG and run `cargo test -p ft-e2e -- --ignored --test-threads=1`"]
async fn backups_restore_tests_and_exports_through_velero() -> anyhow::Result<()> {
    let client = cluster().await?;
    install_crds(&client).await?;
    ensure_namespace(&client, OPERATOR_NAMESPACE).await?;
    let nodes = TestNodes::create(&client).await?;
    remove_velero(&client).await?;

    let operator = Operator::start(OPERATOR_NAMESPACE, &unique("e2e-lease"))?;
    let name = unique("e2e-bak");
    create_example_tenant(&client, &name).await?;

    // Without Velero: the operator runs, the tenant is otherwise in place, and BAK-1 says why.
    let message = wait_control(
        &client,
        &name,
        "BAK-1",
        ControlResult::Fail,
        |m| m.contains("backup engine not installed"),
        SETTLE,
    )
    .await?;
    assert!(message.contains("velero.io/v1"), "{message}");
    let tenants: Api<FranceTravailTenant> = Api::all(client.clone());
    let ready = tenants.get(&name).await?;
    assert!(
        ready
            .status
            .iter()
            .flat_map(|s| &s.conditions)
            .any(|c| c.type_ == "Ready" && c.status == "True"),
        "{:?}",
        ready.status
    );

    // Velero appears: the same operator picks it up and each environment gets its Schedule.
    install_velero(&client).await?;
    let schedules: Api<Schedule> = Api::namespaced(client.clone(), VELERO_NAMESPACE);
    let selector = format!("{}={name}", labels::TENANT);
    let found = wait_for("one Schedule per environment", DISCOVERY, || async {
        let list = schedules
            .list(&ListParams::default().labels(&selector))
            .await?;
        Ok((list.items.len() == 2).then_some(list.items))
    })
    .await?;
    for schedule in &found {
        let env = schedule.labels()[labels::ENVIRONMENT].clone();
        assert_eq!(schedule.spec.schedule, "0 2 * * *");
        assert_eq!(
            schedule.spec.template.included_namespaces,
            [format!("{name}-{env}")]
        );
        assert_eq!(
            schedule.spec.template.storage_location.as_deref(),
            Some("backups-gra")
        );
        assert_eq!(schedule.spec.template.ttl.as_deref(), Some("720h0m0s"));
    }
    // A Schedule deleted by hand comes back.
    let prod_schedule = format!("ft-{name}-prod");
    let deleted_uid = schedules.get(&prod_schedule).await?.metadata.uid;
    schedules
        .delete(&prod_schedule, &Default::default())
        .await?;
    wait_for("the deleted Schedule to come back", SETTLE, || async {
        Ok(schedules
            .get_opt(&prod_schedule)
            .await?
            .filter(|s| s.metadata.uid != deleted_uid)
            .map(|_| ()))
    })
    .await?;
    // Scheduled, nothing backed up yet: not a pass.
    wait_control(
        &client,
        &name,
        "BAK-1",
        ControlResult::Unknown,
        |m| m.contains("no backup has completed yet"),
        SETTLE,
    )
    .await?;

    // Velero completes a backup of each environment: a restore test of each starts, into a
    // scratch namespace placed and isolated like its source.
    complete_scheduled_backups(&client, &name).await?;
    let passed = wait_control(
        &client,
        &name,
        "BAK-1",
        ControlResult::Pass,
        |_| true,
        SETTLE,
    )
    .await?;
    assert!(passed.contains("GRA7"), "{passed}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let scratch = format!("{name}-prod-restore");
    let scratch_ns = wait_for("the scratch namespace", SETTLE, || async {
        namespaces.get_opt(&scratch).await.map_err(Into::into)
    })
    .await?;
    assert_eq!(scratch_ns.labels()[labels::ENVIRONMENT_KIND], "production");
    let policies: Api<k8s_openapi::api::networking::v1::NetworkPolicy> =
        Api::namespaced(client.clone(), &scratch);
    wait_for("the scratch namespace's default deny", SETTLE, || async {
        Ok(policies.get_opt("ft-default-deny").await?.map(|_| ()))
    })
    .await?;
    // Velero partially fails them: the restore-test control fails, saying so.
    let failed = finish_restore_tests(&client, &name, 2, "PartiallyFailed").await?;
    wait_control(
        &client,
        &name,
        "BAK-2",
        ControlResult::Fail,
        |m| m.contains("partially failed with 2 error(s)"),
        SETTLE,
    )
    .await?;
    // Those tests removed, the operator takes them again; this time they pass.
    let restores: Api<ft_core::backup::velero::Restore> =
        Api::namespaced(client.clone(), VELERO_NAMESPACE);
    for restore in &failed {
        restores
            .delete(&restore.name_any(), &Default::default())
            .await?;
    }
    let started = finish_restore_tests(&client, &name, 2, "Completed").await?;
    let prod_test = started
        .iter()
        .find(|r| r.labels()[labels::ENVIRONMENT] == "prod")
        .context("a restore test of prod")?;
    // Production restored into production's scratch namespace, never into development.
    assert_eq!(
        prod_test.spec.namespace_mapping[&format!("{name}-prod")],
        scratch
    );
    wait_control(
        &client,
        &name,
        "BAK-2",
        ControlResult::Pass,
        |_| true,
        SETTLE,
    )
    .await?;
    let reports: Api<ComplianceReport> = Api::all(client.clone());
    let report = reports.get(&name).await?;
    let backups = report.status.context("status")?.backups;
    let prod = backups
        .iter()
        .find(|b| b.environment == "prod")
        .context("prod in the report")?;
    assert_eq!(prod.restore_test_result.as_deref(), Some("Passed"));
    assert!(prod.last_restore_test_at.is_some());
    assert!(prod.last_backup.is_some());
    // The test done, its scratch namespace goes.
    wait_namespace_going(&client, &scratch, SETTLE).await?;

    // A location beside the nodes (Paris), then abroad (Virginia), fails the backup control;
    // back in Gravelines, it holds again.
    for (region, said, result) in [
        ("eu-west-3", "primary site", ControlResult::Fail),
        ("us-east-1", "not an allowed country", ControlResult::Fail),
        ("GRA7", "GRA7", ControlResult::Pass),
    ] {
        set_location(&client, "backups-gra", region, "Available").await?;
        wait_control(
            &client,
            &name,
            "BAK-1",
            result,
            |m| m.contains(said),
            SETTLE,
        )
        .await?;
    }

    // An export on request: one Velero Backup per environment, reported on the tenant.
    let patch = json!({"metadata": {"annotations": {annotations::EXPORT_REQUEST: "ticket-42"}}});
    tenants
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let backups: Api<VeleroBackup> = Api::namespaced(client.clone(), VELERO_NAMESPACE);
    let exports = wait_for("the export's backups", SETTLE, || async {
        let list = backups
            .list(&ListParams::default().labels(&format!(
                "{}={name},{}=export",
                labels::TENANT,
                labels::BACKUP_PURPOSE
            )))
            .await?;
        Ok((list.items.len() == 2).then_some(list.items))
    })
    .await?;
    for export in &exports {
        let mut done = export.clone();
        done.status = Some(serde_json::from_value(json!({"phase": "Completed"}))?);
        backups
            .replace(&export.name_any(), &PostParams::default(), &done)
            .await?;
    }
    let export = wait_for("the export to complete", SETTLE, || async {
        let t = tenants.get(&name).await?;
        Ok(t.status
            .and_then(|s| s.export)
            .filter(|e| e.phase == "Completed"))
    })
    .await?;
    assert_eq!(export.requested, "ticket-42");
    assert!(export.location.contains("backups-gra"), "{export:?}");
    assert_eq!(export.backups.len(), 2);

    delete_tenant(&client, &name).await?;
    drop(operator);
    nodes.delete(&client).await?;
    Ok(())
}
