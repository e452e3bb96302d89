//! The CRDs, generated from the Rust types; `crds/` holds the same bytes, checked by a test.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::api::{ComplianceReport, EnvironmentPolicy, FranceTravailTenant};

pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        ComplianceReport::crd(),
        EnvironmentPolicy::crd(),
        FranceTravailTenant::crd(),
    ]
}

/// Each CRD as its file in `crds/`: `<plural>.<group>.yaml`, starting with `---` so that the
/// files concatenated are exactly what `ft-operator crd` prints.
pub fn crd_files() -> Result<Vec<(String, String)>, serde_saphyr::SerializeError> {
    crds()
        .into_iter()
        .map(|crd| {
            let name = format!("{}.yaml", crd.metadata.name.clone().unwrap_or_default());
            Ok((name, format!("---\n{}", serde_saphyr::to_string(&crd)?)))
        })
        .collect()
}

pub fn render() -> Result<String, serde_saphyr::SerializeError> {
    Ok(crd_files()?.into_iter().map(|(_, yaml)| yaml).collect())
}
