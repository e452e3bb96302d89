//! Pure validation of a tenant: every rule the CRD schema and CEL enforce, and the ones that
//! need the whole tenant. `plan` runs it with no cluster; the reconciler runs it as a guard, so
//! a tenant stored before a schema change still cannot produce a half-built environment.
//!
//! Every problem is reported, each with the path of the field, so nothing is lost between a
//! manifest and its fix.

use std::collections::{BTreeMap, HashSet};

use ipnet::IpNet;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;

use crate::api::KeyStoreKind;
use crate::api::{Backup, EnvironmentKind, FlowPort, FranceTravailTenant, Peer};
use crate::backup::{duration_seconds, parse_cron};
use crate::encryption::KeyReference;
use crate::settings::BuildSettings;

/// Longest tenant name: `<tenant>-<environment>` must fit the 63 characters of a namespace.
pub const MAX_TENANT_NAME: usize = 42;
pub const MAX_ENVIRONMENT_NAME: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the offending field, as `kubectl explain` spells it: `spec.environments[1].name`.
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// A tenant that cannot be reconciled, with every reason why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tenant {tenant}: {}", .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct InvalidTenant {
    pub tenant: String,
    pub errors: Vec<FieldError>,
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }
}

/// A tenant that passed [`validate_for_cluster`]: the only way to the builders
/// ([`crate::desired::desired`]), so an unvalidated tenant cannot be built.
#[derive(Clone, Copy, Debug)]
pub struct ValidTenant<'a>(&'a FranceTravailTenant);

impl<'a> ValidTenant<'a> {
    pub fn tenant(self) -> &'a FranceTravailTenant {
        self.0
    }
}

/// `validate`, plus the checks that depend on the cluster: no declared address block may lie
/// inside the cluster's own pod or service networks, where it would reach other tenants' pods.
pub fn validate_for_cluster<'a>(
    tenant: &'a FranceTravailTenant,
    settings: &BuildSettings,
) -> Result<ValidTenant<'a>, InvalidTenant> {
    let mut errors = match validate(tenant) {
        Ok(()) => Errors::default(),
        Err(invalid) => Errors(invalid.errors),
    };
    let networks: Vec<_> = settings
        .cluster_networks
        .iter()
        .filter_map(|n| parse_cidr(n).map(|parsed| (n, parsed)))
        .collect();
    let flows = tenant
        .spec
        .network
        .ingress
        .iter()
        .enumerate()
        .map(|(i, f)| (format!("spec.network.ingress[{i}].from"), &f.from))
        .chain(
            tenant
                .spec
                .network
                .egress
                .iter()
                .enumerate()
                .map(|(i, f)| (format!("spec.network.egress[{i}].to"), &f.to)),
        );
    for (field, peers) in flows {
        for (j, peer) in peers.iter().enumerate() {
            let Some(block) = peer.cidr.as_deref().and_then(parse_cidr) else {
                continue;
            };
            if let Some((network, _)) = networks.iter().find(|(_, n)| n.contains(&block)) {
                errors.add(
                    format!("{field}[{j}].cidr"),
                    format!(
                        "lies inside the cluster network {network}: flows to pods must name namespaces, so that other tenants stay unreachable (CLD-20)"
                    ),
                );
            }
        }
    }
    if let Some(storage) = &tenant.spec.storage {
        if storage.key_store == KeyStoreKind::Transit {
            errors.add(
                "spec.storage.keyStore",
                "Transit (an external Vault or OpenBao transit engine) is not available in this version of the operator; use Kubernetes, the key store in the operator's own namespace",
            );
        }
        match settings.profiles.get(&storage.profile) {
            None => errors.add(
                "spec.storage.profile",
                format!(
                    "unknown encryption profile {:?}; this operator knows {}",
                    storage.profile,
                    settings.profiles.names().join(", ")
                ),
            ),
            Some(profile) => {
                let needs = profile.key_reference == KeyReference::Required;
                if needs && storage.key_reference.is_none() {
                    errors.add(
                        "spec.storage.keyReference",
                        format!(
                            "the {} profile encrypts with a key of the provider's KMS: name the tenant's own key (CLD-40)",
                            profile.name
                        ),
                    );
                }
                if !needs && storage.key_reference.is_some() {
                    errors.add(
                        "spec.storage.keyReference",
                        format!(
                            "the {} profile encrypts with the tenant key the operator keeps; it takes no key reference",
                            profile.name
                        ),
                    );
                }
                for key in storage.parameters.keys() {
                    if profile.parameters.contains_key(key) {
                        errors.add(
                            format!("spec.storage.parameters.{key}"),
                            format!(
                                "set by the {} profile, whose parameters carry the encryption and cannot be overridden (CLD-21)",
                                profile.name
                            ),
                        );
                    }
                }
            }
        }
    }
    if errors.0.is_empty() {
        Ok(ValidTenant(tenant))
    } else {
        Err(InvalidTenant {
            tenant: tenant.name_any(),
            errors: errors.0,
        })
    }
}

pub fn validate(tenant: &FranceTravailTenant) -> Result<(), InvalidTenant> {
    let mut errors = Errors::default();
    let name = tenant.name_any();
    let spec = &tenant.spec;

    if !is_dns_label(&name) || name.len() > MAX_TENANT_NAME {
        errors.add(
            "metadata.name",
            format!(
                "{name:?} must be a DNS label (lower-case letters, digits, '-') of at most {MAX_TENANT_NAME} characters: it prefixes every namespace of the tenant"
            ),
        );
    }
    if spec.display_name.trim().is_empty() {
        errors.add("spec.displayName", "must not be empty");
    }
    if !spec.security_contact.contains('@') {
        errors.add(
            "spec.securityContact",
            "must be an e-mail address that receives incident notices (CLD-61)",
        );
    }

    if spec.environments.is_empty() {
        errors.add("spec.environments", "at least one environment is required");
    }
    let mut environment_names = HashSet::new();
    for (i, env) in spec.environments.iter().enumerate() {
        let field = format!("spec.environments[{i}]");
        if !is_dns_label(&env.name) || env.name.len() > MAX_ENVIRONMENT_NAME {
            errors.add(
                format!("{field}.name"),
                format!(
                    "{:?} must be a DNS label of at most {MAX_ENVIRONMENT_NAME} characters",
                    env.name
                ),
            );
        }
        if env.name.split('-').any(|word| word == "restore") {
            errors.add(
                format!("{field}.name"),
                format!(
                    "{:?}: environment names may not hold the word restore, kept for the scratch namespaces of restore tests",
                    env.name
                ),
            );
        }
        if !environment_names.insert(env.name.as_str()) {
            errors.add(
                format!("{field}.name"),
                format!("environment {:?} is declared twice", env.name),
            );
        }
        let pool_labels = env.node_pool.as_ref().map(|p| p.match_labels.len());
        if env.kind == EnvironmentKind::Production && pool_labels.unwrap_or(0) == 0 {
            errors.add(
                format!("{field}.nodePool"),
                "a production environment must run on a dedicated node pool (CLD-25)",
            );
        }
        let q = &env.quota;
        for (sub, quantity) in [
            ("quota.cpu", &q.cpu),
            ("quota.memory", &q.memory),
            ("quota.storage", &q.storage),
            (
                "containerDefaults.requestCpu",
                &env.container_defaults.request_cpu,
            ),
            (
                "containerDefaults.requestMemory",
                &env.container_defaults.request_memory,
            ),
            (
                "containerDefaults.limitCpu",
                &env.container_defaults.limit_cpu,
            ),
            (
                "containerDefaults.limitMemory",
                &env.container_defaults.limit_memory,
            ),
        ] {
            check_quantity(&mut errors, format!("{field}.{sub}"), quantity);
        }
        if q.pods < 1 {
            errors.add(format!("{field}.quota.pods"), "must be at least 1");
        }
        if q.persistent_volume_claims < 0 {
            errors.add(
                format!("{field}.quota.persistentVolumeClaims"),
                "must not be negative",
            );
        }
    }

    if spec.placement.allowed_countries.is_empty() {
        errors.add(
            "spec.placement.allowedCountries",
            "at least one country is required",
        );
    }
    for (i, region) in spec.placement.regions.iter().enumerate() {
        if region.trim().is_empty() {
            errors.add(format!("spec.placement.regions[{i}]"), "must not be empty");
        }
    }

    let check_environments = |errors: &mut Errors, field: &str, names: &[String]| {
        for (j, n) in names.iter().enumerate() {
            if !environment_names.contains(n.as_str()) {
                errors.add(
                    format!("{field}.environments[{j}]"),
                    format!("environment {n:?} is not declared in spec.environments"),
                );
            }
        }
    };

    let mut flow_names = HashSet::new();
    for (i, flow) in spec.network.ingress.iter().enumerate() {
        let field = format!("spec.network.ingress[{i}]");
        check_flow_name(&mut errors, &field, &flow.name, &mut flow_names, "ingress");
        check_environments(&mut errors, &field, &flow.environments);
        check_peers(&mut errors, &format!("{field}.from"), &flow.from);
        check_ports(&mut errors, &field, &flow.ports);
    }
    let mut flow_names = HashSet::new();
    for (i, flow) in spec.network.egress.iter().enumerate() {
        let field = format!("spec.network.egress[{i}]");
        check_flow_name(&mut errors, &field, &flow.name, &mut flow_names, "egress");
        check_environments(&mut errors, &field, &flow.environments);
        check_peers(&mut errors, &format!("{field}.to"), &flow.to);
        check_ports(&mut errors, &field, &flow.ports);
        if !flow.acknowledge_any_destination {
            for (j, _) in flow
                .to
                .iter()
                .enumerate()
                .filter(|(_, p)| reaches_every_address(p))
            {
                errors.add(
                    format!("{field}.to[{j}].cidr"),
                    "a block of prefix length 0 opens the flow to every address: set acknowledgeAnyDestination: true on the flow to accept it, and the network control reports it as a warning (CLD-20, CLD-36)",
                );
            }
        }
    }

    if let Some(max) = spec
        .storage
        .as_ref()
        .and_then(|s| s.max_volume_size.as_ref())
    {
        check_quantity(&mut errors, "spec.storage.maxVolumeSize".into(), max);
    }

    let mut holders = BTreeMap::new();
    for (i, grant) in spec.access.grants.iter().enumerate() {
        let field = format!("spec.access.grants[{i}]");
        // Two grants of one role to one subject would render the same bindings.
        if let Some(first) = holders.insert((&grant.subject, grant.role), i) {
            errors.add(
                format!("{field}.subject"),
                format!(
                    "{} already holds the {} role through spec.access.grants[{first}]: give that grant every environment, with one expiry",
                    grant.subject,
                    grant.role.as_str()
                ),
            );
        }
        let subject = &grant.subject.name;
        if subject.starts_with("system:") || subject.contains('*') || subject.trim().is_empty() {
            errors.add(
                format!("{field}.subject.name"),
                format!(
                    "{subject:?} is not a person or a group of people: system identities, service accounts and wildcards are refused (CLD-14)"
                ),
            );
        }
        if grant.environments.is_empty() {
            errors.add(
                format!("{field}.environments"),
                "at least one environment is required",
            );
        }
        check_environments(&mut errors, &field, &grant.environments);
    }

    if let Some(backup) = &spec.backup {
        check_backup(&mut errors, backup);
    }

    if errors.0.is_empty() {
        Ok(())
    } else {
        Err(InvalidTenant {
            tenant: name,
            errors: errors.0,
        })
    }
}

fn check_flow_name(
    errors: &mut Errors,
    field: &str,
    name: &str,
    seen: &mut HashSet<String>,
    direction: &str,
) {
    if !is_dns_label(name) || name.len() > 40 {
        errors.add(
            format!("{field}.name"),
            format!("{name:?} must be a DNS label of at most 40 characters"),
        );
    }
    if !seen.insert(name.to_string()) {
        errors.add(
            format!("{field}.name"),
            format!("{direction} flow {name:?} is declared twice"),
        );
    }
}

fn check_peers(errors: &mut Errors, field: &str, peers: &[Peer]) {
    if peers.is_empty() {
        errors.add(field, "at least one peer is required");
    }
    for (i, peer) in peers.iter().enumerate() {
        let field = format!("{field}[{i}]");
        match (&peer.namespace_selector, &peer.cidr) {
            (Some(_), Some(_)) | (None, None) => errors.add(
                field.clone(),
                "a peer is either a namespaceSelector (optionally with a podSelector) or a cidr, not both and not neither",
            ),
            _ => {}
        }
        if peer.pod_selector.is_some() && peer.namespace_selector.is_none() {
            errors.add(
                format!("{field}.podSelector"),
                "a podSelector needs a namespaceSelector: flows inside an environment are already allowed",
            );
        }
        let block = peer.cidr.as_deref().map(|cidr| {
            let parsed = parse_cidr(cidr);
            if parsed.is_none() {
                errors.add(
                    format!("{field}.cidr"),
                    format!("{cidr:?} is not an IPv4 or IPv6 block"),
                );
            }
            parsed
        });
        if let Some(except) = &peer.except {
            if peer.cidr.is_none() {
                errors.add(format!("{field}.except"), "except only narrows a cidr");
            }
            for (j, e) in except.iter().enumerate() {
                match (parse_cidr(e), block.flatten()) {
                    (None, _) => errors.add(
                        format!("{field}.except[{j}]"),
                        format!("{e:?} is not an IPv4 or IPv6 block"),
                    ),
                    (Some(inner), Some(outer)) if !strictly_inside(inner, outer) => errors.add(
                        format!("{field}.except[{j}]"),
                        format!("{e:?} does not lie strictly inside the cidr it narrows"),
                    ),
                    _ => {}
                }
            }
        }
    }
}

fn check_ports(errors: &mut Errors, field: &str, ports: &[FlowPort]) {
    for (i, p) in ports.iter().enumerate() {
        if !(1..=65535).contains(&p.port) {
            errors.add(
                format!("{field}.ports[{i}].port"),
                "must be between 1 and 65535",
            );
        }
        if let Some(end) = p.end_port
            && (end < p.port || end > 65535)
        {
            errors.add(
                format!("{field}.ports[{i}].endPort"),
                "must be between port and 65535",
            );
        }
    }
}

fn check_quantity(errors: &mut Errors, field: String, quantity: &Quantity) {
    if !is_quantity(&quantity.0) {
        errors.add(
            field,
            format!(
                "{:?} is not a Kubernetes quantity such as 500m, 2, 8Gi",
                quantity.0
            ),
        );
    }
}

pub fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !s.is_empty()
        && s.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

/// A non-negative Kubernetes quantity: a decimal number and an optional suffix.
pub fn is_quantity(s: &str) -> bool {
    const SUFFIXES: &[&str] = &[
        "", "n", "u", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let number_ok = !number.is_empty()
        && number != "."
        && number.matches('.').count() <= 1
        && number.parse::<f64>().is_ok();
    let suffix_ok = SUFFIXES.contains(&suffix) || is_exponent(suffix);
    number_ok && suffix_ok
}

/// The value of a quantity in billionths, exactly: `0.5`, `500m` and `500000000n` are all
/// 500_000_000. The API server rewrites quantities in its own canonical form, so comparing
/// what was desired with what is stored needs values, not text.
pub fn quantity_nanos(s: &str) -> Option<i128> {
    if !is_quantity(s) {
        return None;
    }
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    // Nine fractional digits are all a nano unit can hold; Kubernetes rounds the rest up too.
    let fraction = fraction.get(..fraction.len().min(9)).unwrap_or_default();
    let digits: i128 = format!("{whole}{fraction}").parse().ok()?;
    let mut value = digits.checked_mul(10i128.checked_pow(9 - fraction.len() as u32)?)?;
    let (binary, decimal): (u32, i32) = match suffix {
        "" => (0, 0),
        "Ki" => (1, 0),
        "Mi" => (2, 0),
        "Gi" => (3, 0),
        "Ti" => (4, 0),
        "Pi" => (5, 0),
        "Ei" => (6, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        exponent => (0, exponent.get(1..)?.parse().ok()?),
    };
    value = value.checked_mul(1024i128.checked_pow(binary)?)?;
    if decimal >= 0 {
        value.checked_mul(10i128.checked_pow(decimal.unsigned_abs())?)
    } else {
        Some(value / 10i128.checked_pow(decimal.unsigned_abs())?)
    }
}

fn is_exponent(s: &str) -> bool {
    let Some(rest) = s.strip_prefix(['e', 'E']) else {
        return false;
    };
    let digits = rest.strip_prefix(['+', '-']).unwrap_or(rest);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Parses `addr/prefix` as the API server's `isCIDR` does: the prefix no longer than the
/// address, no zone, and no IPv4 address written as IPv6 (`::ffff:10.0.0.0/104`), which would
/// slip past checks on IPv4 blocks.
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    let (addr, prefix) = s.split_once('/')?;
    // Go's parser refuses `010.0.0.0/8` and `10.0.0.0/08`, which ipnet reads as `10.0.0.0/8`;
    // the standard library's address parser refuses the first too.
    if addr.parse::<std::net::IpAddr>().is_err() || (prefix.len() > 1 && prefix.starts_with('0')) {
        return None;
    }
    match s.parse().ok()? {
        IpNet::V6(v6) if v6.addr().to_ipv4_mapped().is_some() => None,
        net => Some(net),
    }
}

/// Whether `inner` is a smaller block inside `outer`: the only blocks NetworkPolicy takes as
/// an `except`.
pub fn strictly_inside(inner: IpNet, outer: IpNet) -> bool {
    inner.prefix_len() > outer.prefix_len() && outer.contains(&inner)
}

/// A peer whose block is every address of its family (`0.0.0.0/0`, `::/0`).
pub fn reaches_every_address(peer: &Peer) -> bool {
    peer.cidr
        .as_deref()
        .and_then(parse_cidr)
        .is_some_and(|net| net.prefix_len() == 0)
}

/// The schedules must be cron expressions Velero and the operator both read, and backups kept
/// at least an hour and through the next run: the schema says as much, and `plan` checks it
/// offline.
fn check_backup(errors: &mut Errors, backup: &Backup) {
    let schedules = [
        ("spec.backup.schedule", Some(&backup.schedule)),
        (
            "spec.backup.restoreTestSchedule",
            backup.restore_test_schedule.as_ref(),
        ),
    ];
    for (field, expression) in schedules {
        let Some(expression) = expression else {
            continue;
        };
        let five_fields = expression.starts_with('@') || expression.split(' ').count() == 5;
        let plain = expression
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " *,-/@".contains(c));
        let why = parse_cron(expression).err().or_else(|| {
            (!(five_fields && plain)).then(|| "it must have five fields separated by single spaces: minute, hour, day of month, month, day of week".to_string())
        });
        if let Some(why) = why {
            errors.add(
                field,
                format!("{expression:?} is not a cron expression Velero can run: {why}"),
            );
        }
    }
    match duration_seconds(&backup.retention) {
        None => errors.add(
            "spec.backup.retention",
            format!(
                "{:?} is not a duration in hours, minutes and seconds, such as 720h",
                backup.retention
            ),
        ),
        Some(seconds) if seconds < 3600 => errors.add(
            "spec.backup.retention",
            format!("{:?}: backups must be kept at least 1h", backup.retention),
        ),
        Some(_) => {}
    }
}
