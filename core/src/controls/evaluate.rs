//! The evaluator: a pure function from the tenant, what the operator built for it, and what is
//! observed in the cluster to one finding per control. No client, no clock: the time is an
//! input, so every control is unit-tested from fixtures.

use super::access::*;
use super::backup::*;
use super::encryption::*;
use super::isolation::*;
use super::network::*;
use super::placement::*;
use super::shredding::*;
use super::view::*;

/// Every control the operator evaluates, by catalogue id. A test checks this list against the
/// catalogue both ways.
pub const EVALUATORS: &[(&str, Judge)] = &[
    ("CLS-1", classification_labels),
    ("ISO-1", isolated_namespaces),
    ("ISO-2", quotas),
    ("NET-1", default_deny),
    ("NET-2", flow_matrix),
    ("SEP-1", production_pool),
    ("GEO-1", pods_in_allowed_countries),
    ("GEO-2", volumes_in_allowed_countries),
    ("GEO-3", placement_admission),
    ("ENC-1", encrypted_volumes),
    ("ENC-2", tenant_key),
    ("BAK-1", backups),
    ("BAK-2", restore_tests),
    ("ACC-1", declared_bindings),
    ("ACC-2", expiring_rights),
    ("ACC-3", reviewed_rights),
    ("DEL-1", crypto_shredding),
    ("REV-1", final_export),
];

pub fn evaluate(inputs: &Inputs) -> Vec<Evaluation> {
    EVALUATORS
        .iter()
        .map(|(id, judge)| Evaluation {
            id,
            finding: judge(inputs),
        })
        .collect()
}
