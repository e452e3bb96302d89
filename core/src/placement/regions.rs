//! The region catalogue: provider → region → ISO 3166-1 alpha-2 country, for the data-residency
//! control CLD-74 (a tenant's nodes and volumes stay in its allowed countries).
//!
//! A catalogue, not a pattern on the `topology.kubernetes.io/region` label, because the label
//! holds provider codes that do not say where they are and that providers reuse: AWS `eu-west-2`
//! is London (GB) but Outscale `eu-west-2` is in France, OVHcloud writes `GRA7` or `WAW1`, Azure
//! `westeurope`. The same code can only be placed once its provider is known, which is why every
//! lookup takes a provider and why a code shared by providers in different countries is reported
//! as ambiguous rather than guessed.
//!
//! The data is `policies/regions.yaml`, embedded in the binary. Everything here is pure.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1::{Node, PersistentVolume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

/// The well-known label (and node-affinity key) holding a node's or volume's region.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";

const EMBEDDED: &str = include_str!("../../../policies/regions.yaml");

#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("region catalogue: {0}")]
    Yaml(#[source] Box<serde_saphyr::Error>),
    #[error("region catalogue: provider name {0:?} must be lowercase letters, digits and '-'")]
    InvalidProviderName(String),
    #[error("region catalogue: provider {0} is listed more than once")]
    DuplicateProvider(String),
    #[error("region catalogue: provider {0} has no regions")]
    NoRegions(String),
    #[error("region catalogue: provider {provider} has an empty region name")]
    EmptyRegion { provider: String },
    #[error(
        "region catalogue: provider {provider}: region {region} is listed more than once \
         (region codes are compared ignoring case)"
    )]
    DuplicateRegion { provider: String, region: String },
    #[error(
        "region catalogue: provider {provider}: region {region}: {country:?} is not an \
         ISO 3166-1 alpha-2 country code (two uppercase letters)"
    )]
    InvalidCountry {
        provider: String,
        region: String,
        country: String,
    },
    #[error(
        "region catalogue: provider {provider} has an empty providerIdPrefixes or csiDrivers entry"
    )]
    EmptyMatcher { provider: String },
    #[error(
        "region catalogue: providerID prefix {prefix:?} of provider {provider} overlaps \
         {other_prefix:?} of provider {other}: their nodes could not be told apart"
    )]
    OverlappingPrefixes {
        provider: String,
        prefix: String,
        other: String,
        other_prefix: String,
    },
    #[error("region catalogue: CSI driver {driver} is listed for both {other} and {provider}")]
    SharedCsiDriver {
        driver: String,
        provider: String,
        other: String,
    },
}

/// `policies/regions.yaml` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogueFile {
    providers: Vec<ProviderFile>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProviderFile {
    name: String,
    #[serde(default)]
    provider_id_prefixes: Vec<String>,
    #[serde(default)]
    csi_drivers: Vec<String>,
    // Duplicate keys are refused by the YAML reader itself (serde-saphyr's default policy).
    regions: BTreeMap<String, String>,
}

/// The checked catalogue. Build it with [`RegionCatalogue::embedded`] once, at start-up.
#[derive(Clone, Debug)]
pub struct RegionCatalogue {
    providers: Vec<Provider>,
}

#[derive(Clone, Debug)]
struct Provider {
    name: String,
    provider_id_prefixes: Vec<String>,
    csi_drivers: Vec<String>,
    /// Keyed by the lowercased code: OVHcloud documents `GRA7` while labels may carry `gra7`.
    regions: BTreeMap<String, Region>,
}

#[derive(Clone, Debug)]
struct Region {
    /// As written in the catalogue.
    code: String,
    country: String,
}

impl Provider {
    fn region(&self, code: &str) -> Option<&Region> {
        self.regions.get(&code.to_ascii_lowercase())
    }
}

/// One region an object is (or may be) in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// As found on the object.
    pub region: String,
    /// The provider the region was looked up for; `None` when no provider was known and several
    /// providers have this region, all in the same country.
    pub provider: Option<String>,
    /// ISO 3166-1 alpha-2.
    pub country: String,
}

/// Where a node or volume is, as far as the catalogue can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// Every region the object is or may be in, each with its country: usually one; a volume
    /// usable from several regions has one per region, and each must be checked.
    Placed(Vec<Placement>),
    /// No `topology.kubernetes.io/region` label, nor (for a volume) region node affinity.
    NoRegion,
    /// The provider (from `--provider`) is not in the catalogue.
    UnknownProvider { provider: String, region: String },
    /// The region is not in the catalogue for this provider (`None`: for any provider).
    UnknownRegion {
        provider: Option<String>,
        region: String,
    },
    /// The provider is unknown and providers that have this region code put it in different
    /// countries. `countries` maps each such provider to its country.
    Ambiguous {
        region: String,
        countries: BTreeMap<String, String>,
    },
}

impl Location {
    /// The countries the object is or may be in, every one of which the caller must check; `None`
    /// when they cannot be established (no region, unknown, ambiguous), which CLD-74 cannot
    /// treat as compliant. Never `Some` of an empty set, so that "all allowed" is never vacuous.
    pub fn countries(&self) -> Option<BTreeSet<&str>> {
        match self {
            Location::Placed(placements) if !placements.is_empty() => {
                Some(placements.iter().map(|p| p.country.as_str()).collect())
            }
            _ => None,
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.provider {
            Some(provider) => write!(f, "region {} ({provider}) in {}", self.region, self.country),
            None => write!(f, "region {} in {}", self.region, self.country),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Placed(placements) if placements.is_empty() => f.write_str("no region"),
            Location::Placed(placements) => {
                let parts: Vec<String> = placements.iter().map(Placement::to_string).collect();
                f.write_str(&join(&parts, "and"))
            }
            Location::NoRegion => write!(f, "no {REGION_LABEL} label"),
            Location::UnknownProvider { provider, region } => write!(
                f,
                "provider {provider} is not in the region catalogue (region {region})"
            ),
            Location::UnknownRegion {
                provider: Some(provider),
                region,
            } => write!(
                f,
                "region {region} is not in the region catalogue for provider {provider}"
            ),
            Location::UnknownRegion {
                provider: None,
                region,
            } => write!(
                f,
                "region {region} is not in the region catalogue for any provider"
            ),
            Location::Ambiguous { region, countries } => {
                let parts: Vec<String> = countries
                    .iter()
                    .map(|(provider, country)| format!("{country} ({provider})"))
                    .collect();
                write!(
                    f,
                    "region {region} is ambiguous without a provider: {}; set --provider",
                    join(&parts, "or")
                )
            }
        }
    }
}

/// "a", "a and b", "a, b and c".
fn join(parts: &[String], conjunction: &str) -> String {
    match parts {
        [] => String::new(),
        [only] => only.clone(),
        [init @ .., last] => format!("{} {conjunction} {last}", init.join(", ")),
    }
}

impl RegionCatalogue {
    /// The catalogue in `policies/regions.yaml`, embedded in the binary.
    pub fn embedded() -> Result<Self, CatalogueError> {
        Self::parse(EMBEDDED)
    }

    /// Reads and checks a catalogue; errors name the offending provider and region.
    pub fn parse(yaml: &str) -> Result<Self, CatalogueError> {
        let file: CatalogueFile =
            serde_saphyr::from_str(yaml).map_err(|e| CatalogueError::Yaml(Box::new(e)))?;
        let mut providers: Vec<Provider> = Vec::with_capacity(file.providers.len());
        for entry in file.providers {
            let provider = check_provider(entry)?;
            check_against_others(&provider, &providers)?;
            providers.push(provider);
        }
        Ok(Self { providers })
    }

    /// Provider names, in catalogue order.
    pub fn providers(&self) -> impl Iterator<Item = &str> {
        self.providers.iter().map(|p| p.name.as_str())
    }

    /// A provider's regions as `(code, country)`, codes as written in the catalogue; `None` for
    /// a provider not in the catalogue.
    pub fn regions_of(&self, provider: &str) -> Option<impl Iterator<Item = (&str, &str)>> {
        self.provider(provider).map(|p| {
            p.regions
                .values()
                .map(|r| (r.code.as_str(), r.country.as_str()))
        })
    }

    fn provider(&self, name: &str) -> Option<&Provider> {
        self.providers
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
    }

    /// Country of `region` as seen on an object of `provider`. With no provider: the country if
    /// every provider that has this region agrees, else [`Location::Ambiguous`].
    pub fn country_of(&self, provider: Option<&str>, region: &str) -> Location {
        if let Some(name) = provider {
            let Some(provider) = self.provider(name) else {
                return Location::UnknownProvider {
                    provider: name.to_owned(),
                    region: region.to_owned(),
                };
            };
            return match provider.region(region) {
                Some(found) => Location::Placed(vec![Placement {
                    region: region.to_owned(),
                    provider: Some(provider.name.clone()),
                    country: found.country.clone(),
                }]),
                None => Location::UnknownRegion {
                    provider: Some(provider.name.clone()),
                    region: region.to_owned(),
                },
            };
        }
        let countries: BTreeMap<String, String> = self
            .providers
            .iter()
            .filter_map(|p| {
                p.region(region)
                    .map(|r| (p.name.clone(), r.country.clone()))
            })
            .collect();
        let distinct: BTreeSet<&String> = countries.values().collect();
        match (distinct.len(), countries.first_key_value()) {
            (1, Some((only_provider, country))) => Location::Placed(vec![Placement {
                region: region.to_owned(),
                // Naming the provider is only honest when it is the only one with this code.
                provider: (countries.len() == 1).then(|| only_provider.clone()),
                country: country.clone(),
            }]),
            (0, _) | (_, None) => Location::UnknownRegion {
                provider: None,
                region: region.to_owned(),
            },
            _ => Location::Ambiguous {
                region: region.to_owned(),
                countries,
            },
        }
    }

    /// Provider of a node from the start of its `spec.providerID`; `None` if no prefix matches.
    pub fn provider_of_node(&self, node: &Node) -> Option<&str> {
        let provider_id = node.spec.as_ref()?.provider_id.as_deref()?;
        self.providers
            .iter()
            .find(|p| {
                p.provider_id_prefixes
                    .iter()
                    .any(|prefix| provider_id.starts_with(prefix.as_str()))
            })
            .map(|p| p.name.as_str())
    }

    /// Provider of a volume from its `spec.csi.driver`; `None` if not CSI or the driver is not
    /// listed.
    pub fn provider_of_volume(&self, pv: &PersistentVolume) -> Option<&str> {
        let driver = pv.spec.as_ref()?.csi.as_ref()?.driver.as_str();
        self.providers
            .iter()
            .find(|p| p.csi_drivers.iter().any(|d| d == driver))
            .map(|p| p.name.as_str())
    }

    /// Where a node is: its region label, looked up for `provider_override` (the operator's
    /// `--provider`) if set, else for the provider its `spec.providerID` shows, else for none.
    pub fn locate_node(&self, node: &Node, provider_override: Option<&str>) -> Location {
        let Some(region) = region_label(&node.metadata) else {
            return Location::NoRegion;
        };
        let provider = provider_override.or_else(|| self.provider_of_node(node));
        self.country_of(provider, region)
    }

    /// Where a volume is: the regions its required node affinity pins with `In` (only when every
    /// node selector term pins one), else its own region label; looked up for `provider_override` if
    /// set, else for the provider its CSI driver shows, else for none. When one region cannot be
    /// placed, that region's problem is returned: the volume's countries cannot all be checked.
    pub fn locate_volume(
        &self,
        pv: &PersistentVolume,
        provider_override: Option<&str>,
    ) -> Location {
        let regions = match affinity_regions(pv) {
            Some(regions) => regions,
            None => match region_label(&pv.metadata) {
                Some(region) => vec![region],
                None => return Location::NoRegion,
            },
        };
        let provider = provider_override.or_else(|| self.provider_of_volume(pv));
        let mut placements = Vec::with_capacity(regions.len());
        for region in regions {
            match self.country_of(provider, region) {
                Location::Placed(found) => placements.extend(found),
                unplaced => return unplaced,
            }
        }
        Location::Placed(placements)
    }
}

fn region_label(metadata: &ObjectMeta) -> Option<&str> {
    metadata
        .labels
        .as_ref()?
        .get(REGION_LABEL)
        .map(String::as_str)
        .filter(|region| !region.is_empty())
}

/// The regions a volume's required node affinity lets it be used from, in order, without
/// repeats. `None` unless every term pins the region with `In`: terms are alternatives, so one
/// term without such a pin (or with only `NotIn`/`Exists`) lets the volume be used from any
/// region and the affinity says nothing about where it is.
fn affinity_regions(pv: &PersistentVolume) -> Option<Vec<&str>> {
    let terms = &pv
        .spec
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required
        .as_ref()?
        .node_selector_terms;
    let mut regions: Vec<&str> = Vec::new();
    for term in terms {
        let mut pinned = false;
        let pins = term
            .match_expressions
            .iter()
            .flatten()
            .filter(|e| e.key == REGION_LABEL && e.operator == "In");
        for pin in pins {
            pinned = true;
            for value in pin.values.iter().flatten() {
                if !regions.contains(&value.as_str()) {
                    regions.push(value);
                }
            }
        }
        if !pinned {
            return None;
        }
    }
    // No terms, or pins with no values: nothing usable either.
    (!regions.is_empty()).then_some(regions)
}

fn check_provider(entry: ProviderFile) -> Result<Provider, CatalogueError> {
    let name = entry.name;
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid_name {
        return Err(CatalogueError::InvalidProviderName(name));
    }
    if entry.regions.is_empty() {
        return Err(CatalogueError::NoRegions(name));
    }
    let empty_matcher = entry
        .provider_id_prefixes
        .iter()
        .chain(&entry.csi_drivers)
        .any(|m| m.trim().is_empty());
    if empty_matcher {
        return Err(CatalogueError::EmptyMatcher { provider: name });
    }
    let mut regions = BTreeMap::new();
    for (code, country) in entry.regions {
        if code.trim().is_empty() {
            return Err(CatalogueError::EmptyRegion { provider: name });
        }
        if !(country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase())) {
            return Err(CatalogueError::InvalidCountry {
                provider: name,
                region: code,
                country,
            });
        }
        let key = code.to_ascii_lowercase();
        if regions.contains_key(&key) {
            return Err(CatalogueError::DuplicateRegion {
                provider: name,
                region: code,
            });
        }
        regions.insert(key, Region { code, country });
    }
    Ok(Provider {
        name,
        provider_id_prefixes: entry.provider_id_prefixes,
        csi_drivers: entry.csi_drivers,
        regions,
    })
}

/// What makes providers distinguishable: unique names, and no providerID prefix or CSI driver
/// that would make a node or volume match two providers.
fn check_against_others(provider: &Provider, others: &[Provider]) -> Result<(), CatalogueError> {
    for other in others {
        if other.name == provider.name {
            return Err(CatalogueError::DuplicateProvider(provider.name.clone()));
        }
        for prefix in &provider.provider_id_prefixes {
            let overlapping = other
                .provider_id_prefixes
                .iter()
                .find(|o| o.starts_with(prefix.as_str()) || prefix.starts_with(o.as_str()));
            if let Some(other_prefix) = overlapping {
                return Err(CatalogueError::OverlappingPrefixes {
                    provider: provider.name.clone(),
                    prefix: prefix.clone(),
                    other: other.name.clone(),
                    other_prefix: other_prefix.clone(),
                });
            }
        }
        if let Some(driver) = provider
            .csi_drivers
            .iter()
            .find(|d| other.csi_drivers.contains(d))
        {
            return Err(CatalogueError::SharedCsiDriver {
                driver: driver.clone(),
                provider: provider.name.clone(),
                other: other.name.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = "
providers:
  - name: a
    providerIdPrefixes: [\"a://\"]
    csiDrivers: [\"csi.a\"]
    regions: { r1: FR }
  - name: b
    providerIdPrefixes: [\"b://\"]
    csiDrivers: [\"csi.b\"]
    regions: { r1: FR, r2: DE }
";

    fn err(yaml: &str) -> String {
        match RegionCatalogue::parse(yaml) {
            Ok(_) => panic!("accepted:\n{yaml}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_embedded_catalogue_parses() {
        let catalogue = RegionCatalogue::embedded().expect("embedded catalogue");
        assert!(catalogue.providers().count() >= 7);
    }

    #[test]
    fn norway_is_not_read_as_a_boolean() {
        let catalogue = RegionCatalogue::embedded().expect("embedded catalogue");
        assert_eq!(
            catalogue
                .country_of(Some("azure"), "norwayeast")
                .countries(),
            Some(BTreeSet::from(["NO"]))
        );
        // Unquoted too: the target is a string, so the reader must not coerce it.
        let unquoted = "providers: [{ name: x, regions: { oslo: NO } }]";
        let catalogue = RegionCatalogue::parse(unquoted).expect("parses");
        assert_eq!(
            catalogue.country_of(None, "oslo").to_string(),
            "region oslo (x) in NO"
        );
    }

    #[test]
    fn region_codes_are_compared_ignoring_case() {
        let catalogue = RegionCatalogue::embedded().expect("embedded catalogue");
        assert_eq!(
            catalogue.country_of(Some("ovhcloud"), "gra7").to_string(),
            "region gra7 (ovhcloud) in FR"
        );
        let twice = "providers: [{ name: x, regions: { GRA7: FR, gra7: FR } }]";
        assert!(
            err(twice).contains("region gra7 is listed more than once"),
            "{}",
            err(twice)
        );
    }

    #[test]
    fn a_region_written_twice_is_refused_by_the_reader() {
        let yaml = "providers:\n  - name: x\n    regions:\n      r1: FR\n      r1: DE\n";
        assert!(
            err(yaml).contains("duplicate mapping key: r1"),
            "{}",
            err(yaml)
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let yaml = "providers: [{ name: x, region: { r1: FR } }]";
        assert!(
            err(yaml).contains("unknown field `region`"),
            "{}",
            err(yaml)
        );
    }

    #[test]
    fn providers_must_be_distinguishable() {
        let overlap = TWO.replace("b://", "a:///");
        assert_eq!(
            err(&overlap),
            "region catalogue: providerID prefix \"a:///\" of provider b overlaps \"a://\" \
             of provider a: their nodes could not be told apart"
        );
        let shared = TWO.replace("csi.b", "csi.a");
        assert_eq!(
            err(&shared),
            "region catalogue: CSI driver csi.a is listed for both a and b"
        );
        assert!(err(&TWO.replace("[\"b://\"]", "[\"\"]")).contains("provider b has an empty"));
    }

    #[test]
    fn malformed_entries_are_refused_with_their_provider() {
        assert_eq!(
            err("providers: [{ name: x, regions: {} }]"),
            "region catalogue: provider x has no regions"
        );
        assert_eq!(
            err("providers: [{ name: x, regions: { \"\": FR } }]"),
            "region catalogue: provider x has an empty region name"
        );
        assert!(err("providers: [{ name: AWS, regions: { r: FR } }]").contains("\"AWS\""));
    }

    #[test]
    fn agreeing_providers_place_a_region_without_naming_one() {
        let catalogue = RegionCatalogue::parse(TWO).expect("parses");
        let location = catalogue.country_of(None, "r1");
        assert_eq!(
            location,
            Location::Placed(vec![Placement {
                region: "r1".into(),
                provider: None,
                country: "FR".into(),
            }])
        );
        assert_eq!(location.to_string(), "region r1 in FR");
        assert_eq!(
            catalogue.country_of(None, "r2").to_string(),
            "region r2 (b) in DE"
        );
    }

    #[test]
    fn an_unknown_provider_is_named() {
        let catalogue = RegionCatalogue::parse(TWO).expect("parses");
        let location = catalogue.country_of(Some("c"), "r1");
        assert_eq!(
            location,
            Location::UnknownProvider {
                provider: "c".into(),
                region: "r1".into()
            }
        );
        assert_eq!(location.countries(), None);
        assert_eq!(
            location.to_string(),
            "provider c is not in the region catalogue (region r1)"
        );
        assert_eq!(
            catalogue.country_of(None, "r9").to_string(),
            "region r9 is not in the region catalogue for any provider"
        );
    }

    #[test]
    fn an_empty_placement_has_no_countries() {
        assert_eq!(Location::Placed(Vec::new()).countries(), None);
    }

    #[test]
    fn join_lists_like_a_sentence() {
        let parts = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(join(&parts(&["a"]), "or"), "a");
        assert_eq!(join(&parts(&["a", "b"]), "or"), "a or b");
        assert_eq!(join(&parts(&["a", "b", "c"]), "and"), "a, b and c");
    }
}
