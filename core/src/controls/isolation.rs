//! The checks of isolation (CLS-1, ISO-1, ISO-2; CLD-20): classification labels, isolated
//! namespaces, quotas and limits in place.

use kube::ResourceExt;

use super::finding::*;
use super::view::*;
use crate::api::labels;
use crate::meta::owned_by;

pub(super) fn classification_labels(inputs: &Inputs) -> Finding {
    let desired = match built(inputs) {
        Ok(d) => d,
        Err(f) => return f,
    };
    const MARKS: [&str; 4] = [
        labels::TENANT,
        labels::ENVIRONMENT,
        labels::ENVIRONMENT_KIND,
        labels::DATA_CLASSIFICATION,
    ];
    let mut problems = Vec::new();
    for want in &desired.namespaces {
        let name = want.name_any();
        let Some(have) = namespace(inputs.observed, &name) else {
            problems.push(format!("Namespace/{name} is missing"));
            continue;
        };
        for mark in MARKS {
            let expected = want.labels().get(mark);
            let found = have.metadata.labels.as_ref().and_then(|l| l.get(mark));
            if expected != found {
                problems.push(format!(
                    "Namespace/{name} has {mark}={}, expected {}",
                    found.map_or("(none)", String::as_str),
                    expected.map_or("(none)", String::as_str)
                ));
            }
        }
    }
    judge(
        problems,
        "Unmarked",
        "Marked",
        format!(
            "every namespace is marked {}",
            inputs.tenant.spec.data_classification.as_str()
        ),
    )
}

pub(super) fn isolated_namespaces(inputs: &Inputs) -> Finding {
    let desired = match built(inputs) {
        Ok(d) => d,
        Err(f) => return f,
    };
    let tenant = inputs.tenant.name_any();
    let mut problems = Vec::new();
    for want in &desired.namespaces {
        let name = want.name_any();
        let Some(have) = namespace(inputs.observed, &name) else {
            problems.push(format!("Namespace/{name} is missing"));
            continue;
        };
        if !owned_by(&have.metadata, &tenant) {
            problems.push(format!(
                "Namespace/{name} is not marked as the tenant's own"
            ));
        }
        if have.metadata.deletion_timestamp.is_some() {
            problems.push(format!("Namespace/{name} is being deleted"));
        }
        let enforce = have
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-security.kubernetes.io/enforce"));
        if enforce.map(String::as_str) != Some("restricted") {
            problems.push(format!(
                "Namespace/{name} does not enforce Pod Security restricted"
            ));
        }
    }
    judge(
        problems,
        "NotIsolated",
        "Isolated",
        format!(
            "{} namespace(s), one per environment, each enforcing Pod Security restricted",
            desired.namespaces.len()
        ),
    )
}

pub(super) fn quotas(inputs: &Inputs) -> Finding {
    let desired = match built(inputs) {
        Ok(d) => d,
        Err(f) => return f,
    };
    let mut problems = drift(
        &desired.resource_quotas,
        &inputs.observed.resource_quotas,
        spec_differs,
    );
    problems.extend(drift(
        &desired.limit_ranges,
        &inputs.observed.limit_ranges,
        spec_differs,
    ));
    judge(
        problems,
        "QuotaDrift",
        "QuotasInPlace",
        "every environment has its quota and container limits as declared".into(),
    )
}
