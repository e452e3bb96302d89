//! The region catalogue (CLD-74): region codes are placed in a country only through their
//! provider, never by their shape, and whatever cannot be placed is reported as such.

use std::collections::{BTreeMap, BTreeSet};

use ft_core::placement::regions::{Location, Placement, REGION_LABEL, RegionCatalogue};
use k8s_openapi::api::core::v1::{Node, PersistentVolume};
use serde_json::{Value, json};

fn catalogue() -> RegionCatalogue {
    match RegionCatalogue::embedded() {
        Ok(catalogue) => catalogue,
        Err(e) => panic!("the embedded catalogue is refused: {e}"),
    }
}

fn countries(codes: &[&'static str]) -> Option<BTreeSet<&'static str>> {
    Some(codes.iter().copied().collect())
}

fn node(provider_id: Option<&str>, region: Option<&str>) -> Node {
    let mut labels = json!({ "kubernetes.io/hostname": "worker-1" });
    if let Some(region) = region {
        labels[REGION_LABEL] = json!(region);
    }
    let mut node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": "worker-1", "labels": labels },
        "spec": {},
    });
    if let Some(provider_id) = provider_id {
        node["spec"]["providerID"] = json!(provider_id);
    }
    from_json(node)
}

/// A CSI volume whose required node affinity has the given node selector terms.
fn volume(driver: &str, terms: Value, labels: Value) -> PersistentVolume {
    from_json(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": { "name": "pvc-1", "labels": labels },
        "spec": {
            "capacity": { "storage": "10Gi" },
            "accessModes": ["ReadWriteOnce"],
            "csi": { "driver": driver, "volumeHandle": "vol-0abc" },
            "nodeAffinity": { "required": { "nodeSelectorTerms": terms } },
        },
    }))
}

fn region_in(regions: &[&str]) -> Value {
    json!({ "key": REGION_LABEL, "operator": "In", "values": regions })
}

fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> T {
    match serde_json::from_value(value) {
        Ok(object) => object,
        Err(e) => panic!("fixture: {e}"),
    }
}

fn parse_error(yaml: &str) -> String {
    match RegionCatalogue::parse(yaml) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_embedded_catalogue_has_every_expected_provider() {
    let catalogue = catalogue();
    let providers: Vec<&str> = catalogue.providers().collect();
    for expected in [
        "aws", "azure", "gcp", "ovhcloud", "scaleway", "outscale", "hetzner",
    ] {
        assert!(providers.contains(&expected), "{expected} in {providers:?}");
    }
}

#[test]
fn every_country_is_an_alpha_2_code_and_every_provider_has_regions() {
    let catalogue = catalogue();
    for provider in catalogue.providers() {
        let Some(regions) = catalogue.regions_of(provider) else {
            panic!("{provider} is listed but has no regions entry");
        };
        let regions: Vec<(&str, &str)> = regions.collect();
        assert!(!regions.is_empty(), "{provider} has no regions");
        for (region, country) in regions {
            assert!(!region.is_empty(), "{provider} has an empty region");
            assert!(
                country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase()),
                "{provider} {region}: {country:?}"
            );
        }
    }
    assert!(catalogue.regions_of("no-such-provider").is_none());
}

#[test]
fn known_regions_of_each_provider() {
    let catalogue = catalogue();
    for (provider, region, country) in [
        ("aws", "eu-west-3", "FR"),
        ("aws", "eu-west-2", "GB"),
        ("aws", "eu-central-1", "DE"),
        ("aws", "us-east-1", "US"),
        ("aws", "ap-southeast-1", "SG"),
        ("azure", "francecentral", "FR"),
        ("azure", "westeurope", "NL"),
        ("azure", "northeurope", "IE"),
        ("gcp", "europe-west9", "FR"),
        ("gcp", "europe-west1", "BE"),
        ("ovhcloud", "GRA7", "FR"),
        ("ovhcloud", "SBG5", "FR"),
        ("ovhcloud", "EU-WEST-PAR", "FR"),
        ("ovhcloud", "DE1", "DE"),
        ("ovhcloud", "UK1", "GB"),
        ("ovhcloud", "WAW1", "PL"),
        ("ovhcloud", "BHS5", "CA"),
        ("ovhcloud", "SGP1", "SG"),
        ("scaleway", "fr-par", "FR"),
        ("scaleway", "nl-ams", "NL"),
        ("scaleway", "pl-waw", "PL"),
        ("outscale", "eu-west-2", "FR"),
        ("outscale", "cloudgouv-eu-west-1", "FR"),
        ("outscale", "ap-northeast-1", "JP"),
        ("hetzner", "fsn1", "DE"),
        ("hetzner", "hel1", "FI"),
        ("hetzner", "ash", "US"),
        ("hetzner", "sin", "SG"),
    ] {
        let location = catalogue.country_of(Some(provider), region);
        assert_eq!(
            location.countries(),
            countries(&[country]),
            "{provider} {region}"
        );
        assert_eq!(
            location.to_string(),
            format!("region {region} ({provider}) in {country}")
        );
    }
}

#[test]
fn the_same_code_is_placed_by_its_provider() {
    let catalogue = catalogue();
    assert_eq!(
        catalogue.country_of(Some("aws"), "eu-west-2"),
        Location::Placed(vec![Placement {
            region: "eu-west-2".into(),
            provider: Some("aws".into()),
            country: "GB".into(),
        }])
    );
    assert_eq!(
        catalogue
            .country_of(Some("outscale"), "eu-west-2")
            .countries(),
        countries(&["FR"])
    );
}

#[test]
fn a_shared_code_without_provider_is_ambiguous() {
    let location = catalogue().country_of(None, "eu-west-2");
    assert_eq!(
        location,
        Location::Ambiguous {
            region: "eu-west-2".into(),
            countries: BTreeMap::from([
                ("aws".to_string(), "GB".to_string()),
                ("outscale".to_string(), "FR".to_string()),
            ]),
        }
    );
    assert_eq!(location.countries(), None);
    assert_eq!(
        location.to_string(),
        "region eu-west-2 is ambiguous without a provider: GB (aws) or FR (outscale); \
         set --provider"
    );
}

#[test]
fn an_unshared_code_without_provider_is_placed() {
    let location = catalogue().country_of(None, "francecentral");
    assert_eq!(location.countries(), countries(&["FR"]));
    assert_eq!(location.to_string(), "region francecentral (azure) in FR");
    // Shared by AWS and Outscale, but both in the United States.
    assert_eq!(
        catalogue().country_of(None, "us-east-2").countries(),
        countries(&["US"])
    );
}

#[test]
fn an_unknown_region_is_not_placed() {
    let location = catalogue().country_of(Some("aws"), "xyz");
    assert_eq!(
        location,
        Location::UnknownRegion {
            provider: Some("aws".into()),
            region: "xyz".into(),
        }
    );
    assert_eq!(location.countries(), None);
    assert_eq!(
        location.to_string(),
        "region xyz is not in the region catalogue for provider aws"
    );
    // A region of another provider is not borrowed.
    assert!(matches!(
        catalogue().country_of(Some("aws"), "francecentral"),
        Location::UnknownRegion { .. }
    ));
}

#[test]
fn a_node_is_placed_through_its_provider_id() {
    let catalogue = catalogue();
    let node = node(Some("aws:///eu-west-3a/i-0abc"), Some("eu-west-3"));
    assert_eq!(catalogue.provider_of_node(&node), Some("aws"));
    let location = catalogue.locate_node(&node, None);
    assert_eq!(location.countries(), countries(&["FR"]));
    assert_eq!(location.to_string(), "region eu-west-3 (aws) in FR");
}

#[test]
fn a_node_provider_id_decides_a_shared_code() {
    let catalogue = catalogue();
    let london = node(Some("aws:///eu-west-2a/i-0abc"), Some("eu-west-2"));
    assert_eq!(
        catalogue.locate_node(&london, None).countries(),
        countries(&["GB"])
    );
    // --provider wins over the providerID (Outscale nodes may carry `aws:///`).
    assert_eq!(
        catalogue.locate_node(&london, Some("outscale")).countries(),
        countries(&["FR"])
    );
    let unrecognised = node(Some("kind://docker/kind/worker"), Some("eu-west-2"));
    assert_eq!(catalogue.provider_of_node(&unrecognised), None);
    assert!(matches!(
        catalogue.locate_node(&unrecognised, None),
        Location::Ambiguous { .. }
    ));
}

#[test]
fn node_providers_are_recognised_by_their_provider_id() {
    let catalogue = catalogue();
    for (provider_id, provider) in [
        (
            "azure:///subscriptions/s/resourceGroups/g/providers/x/vm",
            "azure",
        ),
        ("gce://project/europe-west9-a/gke-node", "gcp"),
        (
            "openstack:///0b9f7d4e-1c2a-4c8e-9a57-0d1f3e2b4a6c",
            "ovhcloud",
        ),
        ("scaleway://instance/fr-par-1/0b9f7d4e", "scaleway"),
        ("hcloud://12345678", "hetzner"),
    ] {
        let node = node(Some(provider_id), None);
        assert_eq!(
            catalogue.provider_of_node(&node),
            Some(provider),
            "{provider_id}"
        );
    }
}

#[test]
fn a_node_without_region_label_has_no_region() {
    let catalogue = catalogue();
    let location = catalogue.locate_node(&node(Some("aws:///eu-west-3a/i-0abc"), None), None);
    assert_eq!(location, Location::NoRegion);
    assert_eq!(location.countries(), None);
    assert_eq!(
        location.to_string(),
        "no topology.kubernetes.io/region label"
    );
}

#[test]
fn a_node_in_an_unknown_region() {
    let location = catalogue().locate_node(&node(Some("hcloud://1"), Some("mars1")), None);
    assert_eq!(
        location,
        Location::UnknownRegion {
            provider: Some("hetzner".into()),
            region: "mars1".into(),
        }
    );
}

#[test]
fn a_volume_is_placed_by_its_node_affinity_and_csi_driver() {
    let catalogue = catalogue();
    let pv = volume(
        "ebs.csi.aws.com",
        json!([{ "matchExpressions": [region_in(&["eu-west-3"])] }]),
        json!({}),
    );
    assert_eq!(catalogue.provider_of_volume(&pv), Some("aws"));
    let location = catalogue.locate_volume(&pv, None);
    assert_eq!(location.countries(), countries(&["FR"]));
    assert_eq!(location.to_string(), "region eu-west-3 (aws) in FR");
}

#[test]
fn a_volume_in_two_regions_has_both_countries() {
    let catalogue = catalogue();
    let pv = volume(
        "ebs.csi.aws.com",
        json!([{ "matchExpressions": [region_in(&["eu-west-3", "us-east-1"])] }]),
        json!({}),
    );
    let location = catalogue.locate_volume(&pv, None);
    assert_eq!(location.countries(), countries(&["FR", "US"]));
    assert_eq!(
        location.to_string(),
        "region eu-west-3 (aws) in FR and region us-east-1 (aws) in US"
    );
    // The same across two terms (alternatives).
    let pv = volume(
        "ebs.csi.aws.com",
        json!([
            { "matchExpressions": [region_in(&["eu-west-3"])] },
            { "matchExpressions": [region_in(&["eu-central-1"])] },
        ]),
        json!({}),
    );
    assert_eq!(
        catalogue.locate_volume(&pv, None).countries(),
        countries(&["DE", "FR"])
    );
}

#[test]
fn one_unplaceable_region_makes_the_volume_unplaceable() {
    let pv = volume(
        "ebs.csi.aws.com",
        json!([{ "matchExpressions": [region_in(&["eu-west-3", "xyz"])] }]),
        json!({}),
    );
    assert_eq!(
        catalogue().locate_volume(&pv, None),
        Location::UnknownRegion {
            provider: Some("aws".into()),
            region: "xyz".into(),
        }
    );
}

#[test]
fn a_volume_falls_back_to_its_region_label() {
    let catalogue = catalogue();
    let zone_only = json!([{ "matchExpressions": [
        { "key": "topology.kubernetes.io/zone", "operator": "In", "values": ["fr-par-1"] }
    ] }]);
    let labelled = volume(
        "csi.scaleway.com",
        zone_only.clone(),
        json!({ REGION_LABEL: "fr-par" }),
    );
    assert_eq!(
        catalogue.locate_volume(&labelled, None).to_string(),
        "region fr-par (scaleway) in FR"
    );
    let unlabelled = volume("csi.scaleway.com", zone_only, json!({}));
    assert_eq!(
        catalogue.locate_volume(&unlabelled, None),
        Location::NoRegion
    );
}

#[test]
fn a_term_without_region_pin_leaves_the_affinity_unplaced() {
    // Terms are alternatives: the second lets the volume be used from any region.
    let pv = volume(
        "ebs.csi.aws.com",
        json!([
            { "matchExpressions": [region_in(&["eu-west-3"])] },
            { "matchExpressions": [
                { "key": REGION_LABEL, "operator": "NotIn", "values": ["eu-west-3"] }
            ] },
        ]),
        json!({}),
    );
    assert_eq!(catalogue().locate_volume(&pv, None), Location::NoRegion);
}

#[test]
fn a_volume_provider_override_wins_over_its_driver() {
    let pv = volume(
        "ebs.csi.aws.com",
        json!([{ "matchExpressions": [region_in(&["eu-west-2"])] }]),
        json!({}),
    );
    assert_eq!(
        catalogue().locate_volume(&pv, Some("outscale")).countries(),
        countries(&["FR"])
    );
    assert_eq!(
        catalogue().locate_volume(&pv, None).countries(),
        countries(&["GB"])
    );
}

#[test]
fn duplicate_providers_are_refused_by_name() {
    let yaml = "
providers:
  - name: aws
    regions: { eu-west-3: FR }
  - name: aws
    regions: { eu-west-2: GB }
";
    assert_eq!(
        parse_error(yaml),
        "region catalogue: provider aws is listed more than once"
    );
}

#[test]
fn bad_country_codes_are_refused_with_provider_and_region() {
    for bad in ["UK1", "fr", "F", "\"\"", "F1"] {
        let yaml = format!("providers: [{{ name: ovhcloud, regions: {{ UK1: {bad} }} }}]");
        let message = parse_error(&yaml);
        assert!(
            message.contains("provider ovhcloud: region UK1:")
                && message.contains("ISO 3166-1 alpha-2"),
            "{bad}: {message}"
        );
    }
}

#[test]
fn a_valid_catalogue_parses() {
    let yaml = "
providers:
  - name: example
    providerIdPrefixes: [\"example://\"]
    csiDrivers: [csi.example.com]
    regions:
      one: FR
";
    let catalogue = match RegionCatalogue::parse(yaml) {
        Ok(catalogue) => catalogue,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(catalogue.providers().collect::<Vec<_>>(), ["example"]);
    assert_eq!(
        catalogue.country_of(None, "one").countries(),
        countries(&["FR"])
    );
}
