//! What the evaluation of the controls needs besides the cluster: the catalogues, the cluster
//! facts the operator learns as it runs, and the report status last written per tenant.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use ft_core::api::{ComplianceReport, ReportStatus};
use ft_core::controls::{Catalogue, ClusterFacts};
use ft_core::placement::Confinement;
use ft_core::placement::regions::RegionCatalogue;

use crate::error::{Error, Result};
use crate::observe::Observed;

/// The catalogues and cluster facts the evaluator needs, and what was last written.
pub struct Compliance {
    pub catalogue: Catalogue,
    pub regions: Arc<RegionCatalogue>,
    /// The `--provider` flag: which provider's region codes the nodes carry.
    pub provider: Option<String>,
    backup_engine: Mutex<Option<bool>>,
    /// The last report status written per tenant, with the resourceVersion it got: the
    /// reflector may not have seen that write yet when the tenant is next evaluated. Kept as
    /// compressed JSON (a deserialized status takes a few kilobytes), and only until the
    /// cache shows it (`seen`).
    written: Mutex<HashMap<String, Written>>,
    /// Whether control results are also written as OpenReports `Report`s.
    openreports: AtomicBool,
    /// The tenants whose Reports this process has written: each is written once after a start,
    /// then only when a result changes.
    openreports_written: Mutex<HashSet<String>>,
}

/// A report status as written: the resourceVersion it got, and its JSON, LZ4-compressed.
type Written = (String, Box<[u8]>);

/// Whether the cache's version of a report is older than the operator's write of it.
/// resourceVersions are etcd revisions in practice; when they do not parse, the cache is
/// trusted.
fn older(seen: Option<&str>, ours: &str) -> bool {
    match (seen.map(str::parse::<u64>), ours.parse::<u64>()) {
        (None, _) => true,
        (Some(Ok(seen)), Ok(ours)) => seen < ours,
        _ => false,
    }
}

/// Whether the cluster serves OpenReports' `Report`s, by discovery.
pub async fn serves_openreports(client: &kube::Client) -> bool {
    use ft_core::openreports::{GROUP, PLURAL, VERSION};
    client
        .list_api_group_resources(&format!("{GROUP}/{VERSION}"))
        .await
        .is_ok_and(|list| list.resources.iter().any(|r| r.name == PLURAL))
}

impl Compliance {
    pub fn new(catalogue: Catalogue, regions: RegionCatalogue, provider: Option<String>) -> Self {
        Self {
            catalogue,
            regions: Arc::new(regions),
            provider,
            backup_engine: Mutex::default(),
            written: Mutex::default(),
            openreports: AtomicBool::new(false),
            openreports_written: Mutex::default(),
        }
    }

    /// From now on, control results are also written as OpenReports `Report`s.
    pub fn write_openreports(&self) {
        self.openreports.store(true, Ordering::Relaxed);
    }

    /// Whether `tenant`'s Reports are to be written now: the report `changed`, or they were
    /// not written since this process started.
    pub fn openreports_due(&self, tenant: &str, changed: bool) -> bool {
        self.openreports.load(Ordering::Relaxed)
            && (changed
                || !self
                    .openreports_written
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(tenant))
    }

    pub fn openreports_done(&self, tenant: &str) {
        self.openreports_written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenant.to_string());
    }

    /// The catalogues compiled into the binary.
    pub fn embedded(provider: Option<String>) -> Result<Self> {
        Self::load(provider, None)
    }

    /// The embedded catalogues, with the region catalogue replaced by `regions_yaml` when the
    /// platform team gives its own (a provider or region the embedded one lacks).
    pub fn load(provider: Option<String>, regions_yaml: Option<&str>) -> Result<Self> {
        let catalogue = Catalogue::embedded().map_err(|e| Error::Catalogue(e.to_string()))?;
        let regions = match regions_yaml {
            Some(yaml) => RegionCatalogue::parse(yaml),
            None => RegionCatalogue::embedded(),
        }
        .map_err(|e| Error::Catalogue(e.to_string()))?;
        if let Some(p) = &provider
            && !regions.providers().any(|known| known == p)
        {
            let known: Vec<&str> = regions.providers().collect();
            return Err(Error::Catalogue(format!(
                "--provider {p} is not in the region catalogue; it knows {}",
                known.join(", ")
            )));
        }
        Ok(Self::new(catalogue, regions, provider))
    }

    pub fn forget(&self, tenant: &str) {
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(tenant);
    }

    /// Whether the cluster serves Velero's API and the operator sees its objects: `None` while
    /// that cannot be told (discovery failed, or Velero appeared and is being listed).
    pub fn backup_engine(&self) -> Option<bool> {
        *self.backup_engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Set by the task that follows Velero's API (`watch::velero::follow_velero`), or by tests.
    pub fn set_backup_engine(&self, engine: Option<bool>) {
        *self.backup_engine.lock().unwrap_or_else(|e| e.into_inner()) = engine;
    }

    /// The cluster facts the controls judge by, on a cluster that confines pods so.
    pub fn facts(&self, confinement: Confinement) -> ClusterFacts {
        ClusterFacts {
            regions: self.regions.clone(),
            provider: self.provider.clone(),
            backup_engine: self.backup_engine(),
            confinement,
        }
    }

    /// What the report held before this evaluation: the reflector's copy, unless the operator's
    /// own last write is newer than it.
    pub fn previous(
        &self,
        tenant: &str,
        stored: Option<&ComplianceReport>,
    ) -> Option<ReportStatus> {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let stored_status = stored.and_then(|r| r.status.clone());
        let Some((written_version, written_status)) = written.get(tenant) else {
            return stored_status;
        };
        let stale = older(
            stored.and_then(|r| r.resource_version()).as_deref(),
            written_version,
        );
        let unpacked = || {
            let json = lz4_flex::block::decompress_size_prepended(written_status).ok()?;
            serde_json::from_slice(&json).ok()
        };
        if stale && let Some(status) = unpacked() {
            Some(status)
        } else {
            // The cache has caught up (or the write cannot be read back): it holds the report.
            written.remove(tenant);
            stored_status
        }
    }

    /// The cache shows the report at `version`: a status written before it is forgotten, so
    /// that an idle tenant keeps nothing here.
    pub fn seen(&self, tenant: &str, version: Option<&str>) {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((ours, _)) = written.get(tenant)
            && !older(version, ours)
        {
            written.remove(tenant);
        }
    }

    /// The report's status as last written, without evaluating.
    pub fn current(&self, tenant: &str, observed: &Observed) -> Option<ReportStatus> {
        let stored = observed.compliance_reports.get(&ObjectRef::new(tenant));
        self.previous(tenant, stored.as_deref())
    }

    /// Remembers the report status just written and the resourceVersion it got.
    pub fn remember(&self, tenant: &str, version: String, status: &ReportStatus) {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        match serde_json::to_vec(status) {
            Ok(json) => {
                let packed = lz4_flex::block::compress_prepend_size(&json).into();
                written.insert(tenant.to_string(), (version, packed));
            }
            // Not kept: the next evaluation reads the cache's copy, perhaps an older one.
            Err(_) => {
                written.remove(tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(version: &str, passed: &str) -> ComplianceReport {
        serde_json::from_value(json!({
            "apiVersion": "hosting.francetravail.fr/v1alpha1",
            "kind": "ComplianceReport",
            "metadata": {"name": "t", "resourceVersion": version},
            "spec": {"tenant": "t"},
            "status": {"passed": passed},
        }))
        .unwrap()
    }

    fn passed(status: Option<ReportStatus>) -> Option<String> {
        status.map(|s| s.passed)
    }

    #[test]
    fn the_last_status_written_is_read_back_until_the_cache_shows_it() {
        let compliance = Compliance::embedded(None).unwrap();
        let written = ReportStatus {
            passed: "12/13".into(),
            ..report("7", "12/13").status.unwrap()
        };
        compliance.remember("t", "7".into(), &written);
        // The cache still holds version 6: the write of version 7 is what the report holds.
        assert_eq!(
            passed(compliance.previous("t", Some(&report("6", "10/13")))),
            Some("12/13".into())
        );
        // The cache shows version 8 (another write since): the cache's copy, from now on.
        assert_eq!(
            passed(compliance.previous("t", Some(&report("8", "11/13")))),
            Some("11/13".into())
        );
        assert_eq!(
            passed(compliance.previous("t", Some(&report("6", "10/13")))),
            Some("10/13".into()),
            "forgotten once the cache caught up"
        );
    }

    #[test]
    fn a_status_written_is_forgotten_once_the_cache_shows_it() {
        let compliance = Compliance::embedded(None).unwrap();
        let written = report("7", "12/13").status.unwrap();
        compliance.remember("t", "7".into(), &written);
        // An older version seen: still needed.
        compliance.seen("t", Some("6"));
        assert_eq!(
            passed(compliance.previous("t", Some(&report("6", "10/13")))),
            Some("12/13".into())
        );
        // The version written seen: the cache holds it, nothing is kept any more.
        compliance.seen("t", Some("7"));
        assert_eq!(
            passed(compliance.previous("t", Some(&report("6", "10/13")))),
            Some("10/13".into())
        );
    }
}
