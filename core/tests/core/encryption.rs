//! The tenant key, its encrypted class, the admission policies that hold them in place, and the
//! steps of crypto-shredding.

use crate::common;

use ft_core::api::{ShreddingStatus, annotations};
use ft_core::encryption::{KeyReference, Profiles, claims_policy, storage_class};
use ft_core::encryption::{TenantKey, fingerprint, key_secret};
use ft_core::shredding::protection::{deletion_confirmation_recorder, deletion_protection};
use ft_core::shredding::{Step, confirmed_by, next_step, record, record_name};
use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

fn tenant() -> ft_core::api::FranceTravailTenant {
    common::tenant("examples/tenant.yaml")
}

// -------------------------------------------------------------------------------------------
// The key store
// -------------------------------------------------------------------------------------------

#[test]
fn a_key_is_256_random_bits_and_never_shows_its_bytes() {
    let a = TenantKey::generate().expect("a key");
    let b = TenantKey::generate().expect("a key");
    assert_eq!(a.bytes().len(), 32);
    assert_ne!(a.bytes(), b.bytes());
    let shown = format!("{a:?}");
    let hex: String = a.bytes().iter().map(|x| format!("{x:02x}")).collect();
    assert!(!shown.contains(&hex[..8]), "{shown}");
    assert!(shown.contains("redacted") && shown.contains(&a.fingerprint()));
}

#[test]
fn the_fingerprint_is_stable_and_is_not_the_key() {
    // SHA-256 of 32 zero bytes starts with 66687aadf862bd77 (`head -c32 /dev/zero | sha256sum`).
    let zero = TenantKey::from_bytes(&[0u8; 32]).expect("32 bytes");
    assert_eq!(zero.fingerprint(), "sha256:66687aadf862bd77");
    assert_eq!(fingerprint(&[0u8; 32]), zero.fingerprint());
    assert!(TenantKey::from_bytes(&[0u8; 16]).is_err());
}

#[test]
fn the_key_secret_lives_in_the_operator_namespace_and_names_only_the_fingerprint() {
    let key = TenantKey::from_bytes(&[7u8; 32]).expect("32 bytes");
    let secret = key_secret("offres-emploi", "ft-system", &key);
    assert_eq!(secret.metadata.namespace.as_deref(), Some("ft-system"));
    assert_eq!(
        secret.metadata.name.as_deref(),
        Some("ft-key-offres-emploi")
    );
    assert_eq!(secret.immutable, Some(true));
    let annotations_of = secret.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations_of[annotations::KEY_FINGERPRINT],
        key.fingerprint()
    );
    let data = secret.data.clone().unwrap_or_default();
    assert_eq!(data["key"].0, vec![7u8; 32]);
    assert_eq!(data["CRYPTO_KEY_VALUE"].0, "07".repeat(32).into_bytes());
}

// -------------------------------------------------------------------------------------------
// Profiles and the tenant's class
// -------------------------------------------------------------------------------------------

#[test]
fn the_embedded_profiles_cover_the_common_drivers() {
    let profiles = Profiles::embedded().expect("policies/encryption-profiles.yaml loads");
    let expect = [
        ("longhorn", "driver.longhorn.io", KeyReference::None),
        ("ceph-rbd", "rbd.csi.ceph.com", KeyReference::Required),
        ("aws-ebs", "ebs.csi.aws.com", KeyReference::Required),
        ("gce-pd", "pd.csi.storage.gke.io", KeyReference::Required),
        ("azure-disk", "disk.csi.azure.com", KeyReference::Required),
    ];
    for (name, driver, reference) in expect {
        let p = profiles.get(name).unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(
            (p.provisioner.as_str(), p.key_reference),
            (driver, reference)
        );
    }
}

#[test]
fn a_profile_catalogue_with_a_mistake_is_refused() {
    let twice = "profiles:\n  - {name: a, provisioner: x, keyReference: none, parameters: {}}\n  - {name: a, provisioner: y, keyReference: none, parameters: {}}\n";
    assert!(Profiles::parse(twice).unwrap_err().contains("twice"));
    let unknown = "profiles:\n  - {name: a, provisioner: x, keyReference: none, parameters: {k: \"{oops}\"}}\n";
    assert!(
        Profiles::parse(unknown)
            .unwrap_err()
            .contains("unknown placeholder")
    );
    let unused = "profiles:\n  - {name: a, provisioner: x, keyReference: required, parameters: {encrypted: \"true\"}}\n";
    assert!(Profiles::parse(unused).is_err());
}

#[test]
fn the_longhorn_class_reads_the_tenant_key_from_the_key_store() {
    let profiles = Profiles::embedded().expect("profiles");
    let class = storage_class(&tenant(), &profiles, "ft-system").expect("a class");
    assert_eq!(
        class.metadata.name.as_deref(),
        Some("ft-offres-emploi-encrypted")
    );
    assert_eq!(class.provisioner, "driver.longhorn.io");
    assert_eq!(class.reclaim_policy.as_deref(), Some("Delete"));
    let p = class.parameters.clone().unwrap_or_default();
    assert_eq!(p["encrypted"], "true");
    assert_eq!(
        p["csi.storage.k8s.io/node-stage-secret-name"],
        "ft-key-offres-emploi"
    );
    assert_eq!(
        p["csi.storage.k8s.io/node-stage-secret-namespace"],
        "ft-system"
    );
}

#[test]
fn cloud_profiles_take_the_tenant_key_reference_and_extra_parameters_cannot_override_them() {
    let profiles = Profiles::embedded().expect("profiles");
    let mut t = tenant();
    let storage = t.spec.storage.as_mut().expect("storage");
    storage.profile = "aws-ebs".into();
    storage.key_reference = Some("arn:aws:kms:eu-west-3:111122223333:key/abcd".into());
    storage.parameters.insert("type".into(), "io2".into());
    let class = storage_class(&t, &profiles, "ft-system").expect("a class");
    let p = class.parameters.clone().unwrap_or_default();
    assert_eq!(p["kmsKeyId"], "arn:aws:kms:eu-west-3:111122223333:key/abcd");
    assert_eq!(p["encrypted"], "true");
    // The profile's own parameters win; validation refuses the attempt, naming the field.
    assert_eq!(p["type"], "gp3");
    let yaml = common::read("examples/tenant.yaml").replace(
        "    profile: longhorn\n",
        "    profile: aws-ebs\n    parameters: {kmsKeyId: other}\n",
    );
    let err = common::plan(&yaml).unwrap_err();
    let fields: Vec<String> = err.field_errors().into_iter().map(|f| f.field).collect();
    assert_eq!(
        fields,
        [
            "spec.storage.keyReference",
            "spec.storage.parameters.kmsKeyId"
        ]
    );
}

#[test]
fn a_key_store_this_version_cannot_use_is_refused_not_ignored() {
    let yaml = common::read("examples/tenant.yaml").replace(
        "    profile: longhorn\n",
        "    profile: longhorn\n    keyStore: Transit\n",
    );
    let err = common::plan(&yaml).unwrap_err();
    assert_eq!(err.field_errors()[0].field, "spec.storage.keyStore");
    assert!(err.to_string().contains("not available"), "{err}");
}

#[test]
fn an_unknown_profile_is_refused_naming_the_ones_known() {
    let yaml = common::read("examples/tenant.yaml")
        .replace("    profile: longhorn\n", "    profile: tape\n");
    let err = common::plan(&yaml).unwrap_err();
    assert_eq!(err.field_errors()[0].field, "spec.storage.profile");
    assert!(err.to_string().contains("longhorn, ceph-rbd"), "{err}");
}

// -------------------------------------------------------------------------------------------
// Admission
// -------------------------------------------------------------------------------------------

/// The API group, resource and operation a policy's single rule matches.
fn matched(policy: &ValidatingAdmissionPolicy) -> (String, String, String) {
    let rules = policy
        .spec
        .as_ref()
        .and_then(|s| s.match_constraints.as_ref())
        .and_then(|m| m.resource_rules.clone())
        .expect("rules");
    assert_eq!(rules.len(), 1);
    let first = |v: &Option<Vec<String>>| v.iter().flatten().next().cloned().unwrap_or_default();
    (
        first(&rules[0].api_groups),
        first(&rules[0].resources),
        first(&rules[0].operations),
    )
}

#[test]
fn the_claims_policy_admits_only_the_class_each_namespace_names() {
    let (policy, binding) = claims_policy();
    assert_eq!(policy.metadata.name.as_deref(), Some("ft-claims"));
    let spec = policy.spec.clone().expect("spec");
    assert_eq!(spec.failure_policy.as_deref(), Some("Fail"));
    assert_eq!(
        matched(&policy),
        ("".into(), "persistentvolumeclaims".into(), "CREATE".into())
    );
    let validations = spec.validations.expect("validations");
    assert_eq!(validations[0].expression, "has(params.spec.storageClass)");
    assert!(
        validations[1]
            .expression
            .contains("object.spec.storageClassName == params.spec.storageClass")
    );
    // The beta annotation, which wins over spec.storageClassName in provisioning.
    assert_eq!(
        validations[2].expression,
        "!has(object.metadata.annotations) || !('volume.beta.kubernetes.io/storage-class' in object.metadata.annotations)"
    );
    for validation in &validations {
        let message = validation.message_expression.as_deref().unwrap_or_default();
        assert!(
            message.contains("CLD-21") && message.contains("params.spec.tenant"),
            "{message}"
        );
    }
    let spec = &binding.spec;
    let selector = spec
        .match_resources
        .as_ref()
        .and_then(|m| m.namespace_selector.as_ref())
        .expect("selector");
    let tenant_namespace = std::collections::BTreeMap::from([(
        "hosting.francetravail.fr/tenant".to_string(),
        "offres-emploi".to_string(),
    )]);
    assert!(common::selects(selector, &tenant_namespace));
    assert!(!common::selects(selector, &Default::default()));
    assert_eq!(spec.validation_actions, ["Deny"]);
    let reference = spec.param_ref.as_ref().expect("paramRef");
    assert_eq!(reference.name.as_deref(), Some("ft-environment"));
    assert_eq!(
        reference.parameter_not_found_action.as_deref(),
        Some("Deny")
    );
}

#[test]
fn deleting_a_tenant_needs_its_name_in_the_confirmation_annotation() {
    let (policy, binding) = deletion_protection();
    assert_eq!(
        matched(&policy),
        (
            "hosting.francetravail.fr".into(),
            "francetravailtenants".into(),
            "DELETE".into()
        )
    );
    let spec = policy.spec.clone().expect("spec");
    let validation = &spec.validations.expect("validations")[0];
    assert!(validation.expression.contains("oldObject.metadata.annotations['hosting.francetravail.fr/confirm-deletion'] == oldObject.metadata.name"));
    let message = validation.message_expression.as_deref().unwrap_or_default();
    assert!(
        message.contains("kubectl annotate francetravailtenant"),
        "{message}"
    );
    assert_eq!(
        binding.spec.policy_name,
        policy.metadata.name.unwrap_or_default()
    );
}

#[test]
fn who_confirms_a_deletion_is_written_at_admission_and_preferred_by_the_record() {
    let (recorder, _) = deletion_confirmation_recorder();
    let spec = recorder.spec.expect("spec");
    let patch = spec.mutations.expect("mutations")[0]
        .json_patch
        .clone()
        .and_then(|p| p.expression)
        .unwrap_or_default();
    assert!(patch.contains("request.userInfo.username"), "{patch}");
    assert!(
        patch.contains(annotations::DELETION_CONFIRMED_BY),
        "{patch}"
    );
    let condition = &spec.match_conditions.expect("conditions")[0].expression;
    assert!(
        condition.contains(annotations::CONFIRM_DELETION),
        "{condition}"
    );

    let mut t = tenant();
    assert_eq!(confirmed_by(&t), "unrecorded");
    t.metadata.annotations = Some(std::collections::BTreeMap::from([(
        annotations::DELETION_CONFIRMED_BY.to_string(),
        "claire.martin@example.org".to_string(),
    )]));
    assert_eq!(confirmed_by(&t), "user claire.martin@example.org");
}

// -------------------------------------------------------------------------------------------
// Crypto-shredding
// -------------------------------------------------------------------------------------------

fn at(text: &str) -> Option<Time> {
    Some(Time(text.parse().expect("a timestamp")))
}

#[test]
fn shredding_resumes_at_the_first_step_not_done() {
    let mut t = tenant();
    t.spec.deletion.final_export = false;
    let mut p = ShreddingStatus::default();
    assert_eq!(next_step(&t, &p), Step::DestroyKey);
    p.key_destroyed_at = at("2026-11-22T10:00:00Z");
    assert_eq!(next_step(&t, &p), Step::DeleteNamespaces);
    p.namespaces_deleted_at = at("2026-11-22T10:00:05Z");
    assert_eq!(next_step(&t, &p), Step::DeleteClusterObjects);
    p.cluster_objects_deleted_at = at("2026-11-22T10:00:06Z");
    // The backups go after the cluster objects (their Schedules), before the record.
    assert_eq!(next_step(&t, &p), Step::DeleteBackups);
    p.backups_deleted_at = at("2026-11-22T10:00:08Z");
    assert_eq!(next_step(&t, &p), Step::WriteRecord);
    p.record = Some("ConfigMap ft-system/ft-shredding-offres-emploi-1".into());
    assert_eq!(next_step(&t, &p), Step::Done);

    // A final export comes before the key, and only before it.
    t.spec.deletion.final_export = true;
    assert_eq!(
        next_step(&t, &ShreddingStatus::default()),
        Step::FinalExport
    );
    assert_eq!(next_step(&t, &p), Step::Done);
}

#[test]
fn the_record_proves_the_order_of_the_steps_without_the_key() {
    let mut t = tenant();
    t.metadata.uid = Some("0b5d4c1e-aaaa-bbbb-cccc-000000000000".into());
    t.metadata.deletion_timestamp = at("2026-11-22T09:59:58Z");
    let progress = ShreddingStatus {
        step: "WriteRecord".into(),
        key_fingerprint: Some("sha256:66687aadf862bd77".into()),
        started_at: at("2026-11-22T10:00:00Z"),
        key_destroyed_at: at("2026-11-22T10:00:01Z"),
        namespaces_deleted_at: at("2026-11-22T10:00:09Z"),
        cluster_objects_deleted_at: at("2026-11-22T10:00:10Z"),
        deleted: vec!["StorageClass/ft-offres-emploi-encrypted".into()],
        backups_deleted_at: at("2026-11-22T10:00:10.5Z"),
        backups_deleted: vec!["Backup velero/ft-offres-emploi-prod-20261121020000".into()],
        ..Default::default()
    };
    let now = Time("2026-11-22T10:00:11Z".parse().expect("time"));
    let cm = record(
        &t,
        &progress,
        "Secret ft-system/ft-key-offres-emploi".into(),
        "ft-system",
        &now,
    )
    .expect("a record");
    assert_eq!(cm.metadata.name.as_deref(), Some(record_name(&t).as_str()));
    assert_eq!(record_name(&t), "ft-shredding-offres-emploi-0b5d4c1e");
    assert_eq!(cm.metadata.namespace.as_deref(), Some("ft-system"));
    assert!(cm.metadata.owner_references.is_none());
    let body = &cm.data.expect("data")["record.yaml"];
    let parsed: serde_json::Value = serde_saphyr::from_str(body).expect("YAML");
    assert_eq!(parsed["keyFingerprint"], "sha256:66687aadf862bd77");
    assert_eq!(parsed["deletionRequestedAt"], "2026-11-22T09:59:58Z");
    assert_eq!(parsed["keyDestroyedAt"], "2026-11-22T10:00:01Z");
    assert_eq!(parsed["namespacesDeletedAt"], "2026-11-22T10:00:09Z");
    assert_eq!(parsed["clusterObjectsDeletedAt"], "2026-11-22T10:00:10Z");
    assert_eq!(parsed["recordedAt"], "2026-11-22T10:00:11Z");
    assert_eq!(
        parsed["clusterObjectsDeleted"][0],
        "StorageClass/ft-offres-emploi-encrypted"
    );
    assert_eq!(parsed["rules"], serde_json::json!(["CLD-47", "CLD-76"]));
    assert_eq!(parsed["backupsDeletedAt"], "2026-11-22T10:00:10.5Z");
    assert_eq!(
        parsed["backupsDeleted"],
        serde_json::json!(["Backup velero/ft-offres-emploi-prod-20261121020000"])
    );
}

/// Storage a pod brings itself: inline CSI volumes, and ephemeral volumes on another class.
#[test]
fn the_pod_volumes_policy_refuses_storage_no_claim_policy_sees() {
    let (policy, binding) = ft_core::encryption::pod_volumes_policy();
    assert_eq!(policy.metadata.name.as_deref(), Some("ft-pod-volumes"));
    assert_eq!(
        matched(&policy),
        ("".into(), "pods".into(), "CREATE".into())
    );
    let validations = policy
        .spec
        .and_then(|s| s.validations)
        .expect("validations");
    assert_eq!(
        validations[0].expression,
        "!has(object.spec.volumes) || object.spec.volumes.all(v, !has(v.csi))"
    );
    assert!(validations[1].expression.contains(
        "v.ephemeral.volumeClaimTemplate.spec.storageClassName == params.spec.storageClass"
    ));
    assert!(validations[1].expression.contains("'volume.beta.kubernetes.io/storage-class' in v.ephemeral.volumeClaimTemplate.metadata.annotations"));
    for validation in &validations {
        let message = validation.message_expression.as_deref().unwrap_or_default();
        assert!(message.contains("CLD-21"), "{message}");
    }
    assert_eq!(
        binding.spec.param_ref.and_then(|p| p.name).as_deref(),
        Some("ft-environment")
    );
}
