//! The decisions of one reconcile pass that are not a builder's: which restore tests stand
//! where, whether the controls may judge the cluster now, whether the tenant's key was
//! replaced behind the operator's back, and when to look again. Pure: the operator's pass is
//! only the I/O around them.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::ResourceExt;

use crate::access;
use crate::api::{Environment, FranceTravailTenant};
use crate::applied::ApplyReport;
use crate::backup::{RestoreTest, VeleroView, restore_test, with_scratch};
use crate::desired::Desired;
use crate::meta::namespace_name;
use crate::validate::{FieldError, InvalidTenant};

/// Where each environment's restore test stands at `now` (CLD-26); none while the cluster is
/// not known to serve Velero.
pub fn restore_tests<'a>(
    tenant: &'a FranceTravailTenant,
    velero: &VeleroView,
    engine: Option<bool>,
    now: Timestamp,
) -> Vec<(&'a Environment, RestoreTest)> {
    match engine {
        Some(true) => tenant
            .spec
            .environments
            .iter()
            .map(|env| (env, restore_test(tenant, &env.name, velero, now)))
            .collect(),
        _ => Vec::new(),
    }
}

/// The environments with a restore test due or running: each has its scratch environment.
pub fn restoring(tests: &[(&Environment, RestoreTest)]) -> BTreeSet<String> {
    tests
        .iter()
        .filter(|(_, test)| !matches!(test, RestoreTest::Idle { .. }))
        .map(|(env, _)| env.name.clone())
        .collect()
}

/// The fingerprint the status knew, when the key store now holds another: the key was
/// destroyed outside the operator, and what it encrypted is unreadable (CLD-40).
pub fn replaced_key<'a>(tenant: &'a FranceTravailTenant, fingerprint: &str) -> Option<&'a str> {
    tenant
        .status
        .as_ref()
        .and_then(|s| s.key_fingerprint.as_deref())
        .filter(|known| *known != fingerprint)
}

/// How the apply step of a pass ended, as far as judging goes.
pub enum Applied<'a> {
    /// Every child was applied (the report says what was written).
    Done(&'a ApplyReport),
    /// Every child was applied, and the caches have since shown every write of the pass.
    Seen,
    /// The spec is refused; its lapsed rights were revoked all the same.
    Refused,
    /// The pass failed before every child was in place.
    Failed,
}

/// Whether the controls judge now.
#[derive(Debug, PartialEq, Eq)]
pub enum Judge {
    /// The stores show the cluster as it is: judge it.
    Now,
    /// Judge the refusal: the report says why the tenant is not built.
    Refused,
    /// Keep the report as it is. After a pass that wrote children the stores still show the
    /// cluster as it was until the watch events of those writes arrive: when the pass could
    /// not wait for them, the tenant is looked at again `SETTLING` later and judged then.
    Later { settling: bool },
}

pub fn judge(applied: Applied<'_>) -> Judge {
    match applied {
        Applied::Done(report) if report.is_quiet() => Judge::Now,
        Applied::Seen => Judge::Now,
        Applied::Done(_) => Judge::Later { settling: true },
        Applied::Refused => Judge::Refused,
        Applied::Failed => Judge::Later { settling: false },
    }
}

/// When to look at the tenant again, at the latest after `period`: a right lapses at its
/// instant, not at the next resync (2.4.c), and a restore test starts on time.
pub fn wake_after(
    tenant: &FranceTravailTenant,
    tests: &[(&Environment, RestoreTest)],
    now: Timestamp,
    period: Duration,
) -> Duration {
    let mut after = access::wake_after(tenant, now, period);
    let next_test = tests
        .iter()
        .filter_map(|(_, test)| match test {
            RestoreTest::Idle { next } => *next,
            _ => None,
        })
        .min();
    if let Some(test) = next_test {
        let until = test.duration_since(now).max(SignedDuration::ZERO);
        after = after.min(until.try_into().unwrap_or(period));
    }
    after
}

/// The namespaces of the tenant's environments, scratch ones included: the tenant owns them
/// from this pass on, before they exist.
pub fn namespaces(tenant: &FranceTravailTenant, restoring: &BTreeSet<String>) -> Vec<String> {
    let name = tenant.name_any();
    with_scratch(tenant, restoring)
        .spec
        .environments
        .iter()
        .map(|env| namespace_name(&name, &env.name))
        .collect()
}

/// How often every tenant is judged again, whatever happened.
pub const RESYNC: Duration = Duration::from_secs(60);

/// After a pass that wrote children, the tenant is judged again this soon, once the watch
/// events of those writes have reached the stores.
pub const SETTLING: Duration = Duration::from_secs(1);

/// The longest wait before the next look at a tenant whose pass did not fail.
pub fn next_look(judge: &Judge) -> Duration {
    match judge {
        Judge::Later { settling: true } => SETTLING,
        _ => RESYNC,
    }
}

/// The RoleBindings the tenant's grants want at `now`: those built, or, for a refused spec,
/// the rights still in force, so that lapsed ones go on time.
pub fn wanted_bindings(
    tenant: &FranceTravailTenant,
    built: Option<&Desired>,
    now: Timestamp,
) -> Vec<RoleBinding> {
    match built {
        Some(desired) => desired.role_bindings.clone(),
        None => access::role_bindings(tenant, now),
    }
}

/// The tenant's namespaces, or why it may not take them: one another tenant already owns (its
/// tenant label names that tenant), as `a` + `b-c` and `a-b` + `c` both compose `a-b-c`.
/// Nothing is then applied, and nothing of the other tenant is touched (CLD-20).
pub fn claim_namespaces(
    tenant: &FranceTravailTenant,
    restoring: &BTreeSet<String>,
    owner_of: impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>, InvalidTenant> {
    let name = tenant.name_any();
    let wanted = namespaces(tenant, restoring);
    let taken = crate::isolation::taken_namespaces(&name, &wanted, owner_of);
    if taken.is_empty() {
        return Ok(wanted);
    }
    Err(InvalidTenant {
        tenant: name.clone(),
        errors: taken
            .into_iter()
            .map(|(namespace, owner)| FieldError {
                field: "spec.environments".into(),
                message: format!(
                    "namespace {namespace} belongs to tenant {owner}: tenant {name} takes nothing of it over; rename the environment so its namespace is its own (CLD-20)"
                ),
            })
            .collect(),
    })
}
