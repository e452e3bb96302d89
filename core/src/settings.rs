//! The operator's settings and the cluster facts that do not change while it runs, as the
//! builders see them.

use std::collections::BTreeMap;

use crate::backup::DEFAULT_VELERO_NAMESPACE;
use crate::encryption::Profiles;
use crate::placement::Confinement;

/// Where the cluster's DNS service runs, the one destination every environment may always reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsEndpoint {
    pub namespace: String,
    pub pod_labels: BTreeMap<String, String>,
}

impl Default for DnsEndpoint {
    fn default() -> Self {
        Self {
            namespace: "kube-system".into(),
            pod_labels: BTreeMap::from([("k8s-app".into(), "kube-dns".into())]),
        }
    }
}

/// Cluster facts and operator settings the builders need besides the tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildSettings {
    /// How each CSI driver's class references the tenant key.
    pub profiles: Profiles,
    /// The operator's namespace, where tenant keys are kept.
    pub key_namespace: String,
    pub dns: DnsEndpoint,
    /// The cluster's pod and service ranges. Some network plugins match `ipBlock` against pod
    /// addresses, so these ranges are carved out of every declared block: a `cidr` flow can
    /// never reach another tenant's pods.
    pub cluster_networks: Vec<String>,
    /// How new pods are confined: told by discovery at start-up.
    pub confinement: Confinement,
    /// Where Velero runs: its Schedules, Backups and Restores for tenants go there.
    pub velero_namespace: String,
    /// Namespaces whose pods may run on a tenant's production pool besides its production
    /// pods: the platform's daemons (CLD-25).
    pub platform_namespaces: Vec<String>,
}

impl Default for BuildSettings {
    fn default() -> Self {
        Self {
            // The embedded catalogue loads: `tests/encryption.rs` fails otherwise.
            profiles: Profiles::embedded().unwrap_or_else(|_| Profiles { profiles: vec![] }),
            key_namespace: "ft-system".into(),
            dns: DnsEndpoint::default(),
            cluster_networks: Vec::new(),
            confinement: Confinement::default(),
            velero_namespace: DEFAULT_VELERO_NAMESPACE.into(),
            platform_namespaces: vec!["kube-system".into()],
        }
    }
}
