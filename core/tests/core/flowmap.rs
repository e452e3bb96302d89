//! The flow map (CLD-35): an SVG that parses, draws one arrow per flow and environment, names
//! everything, escapes what the tenant says, and is the same bytes for the same tenant. The
//! committed example is regenerated with
//! `FT_UPDATE_DOCS=1 cargo test -p ft-core --test core flowmap`.

use crate::common;

use ft_core::api::FranceTravailTenant;
use ft_core::flowmap::{PickError, pick, render};
use ft_core::plan::parse_tenants;
use roxmltree::{Document, Node};

const MAP: &str = "docs/flow-map.svg";

/// Three environments; flows limited to some of them, every nature, a port range, any port,
/// an exposed Service and an address block with exceptions.
const TENANT: &str = r#"
apiVersion: hosting.francetravail.fr/v1alpha1
kind: FranceTravailTenant
metadata:
  name: candidats
spec:
  displayName: Candidats
  dataClassification: sensitive
  securityContact: rssi@example.org
  environments:
    - name: prod
      kind: production
      nodePool: {matchLabels: {pool: prod}}
    - name: recette
      kind: preproduction
    - name: dev
      kind: development
  network:
    ingress:
      - name: public-web
        nature: production
        environments: [prod, recette]
        from:
          - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ingress-nginx}}
        ports: [{port: 8443}]
        expose: {service: front, type: LoadBalancer}
      - name: bastion
        nature: administration
        environments: [prod]
        from:
          - cidr: 192.168.10.0/24
            except: [192.168.10.128/25]
        ports: [{port: 2200, endPort: 2210}]
    egress:
      - name: scraping
        nature: supervision
        to:
          - namespaceSelector:
              matchExpressions: [{key: team, operator: In, values: [obs, sre]}]
      - name: smtp
        nature: production
        environments: [dev]
        to: [{cidr: 10.40.0.0/16}]
        ports: [{port: 2525, protocol: UDP}]
"#;

fn tenant(yaml: &str) -> FranceTravailTenant {
    let mut tenants = parse_tenants(yaml).expect("the tenant parses");
    tenants.remove(0)
}

fn class<'a>(node: Node<'a, '_>) -> &'a str {
    node.attribute("class").unwrap_or_default()
}

/// The tooltips of the groups whose class starts with `prefix`, sorted.
fn titles(doc: &Document, prefix: &str) -> Vec<String> {
    let mut titles: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("g") && class(*n).starts_with(prefix))
        .map(|g| {
            g.children()
                .find(|c| c.has_tag_name("title"))
                .and_then(|t| t.text())
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    titles.sort();
    titles
}

fn texts(doc: &Document) -> Vec<String> {
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text().map(|t| t.trim().to_string()))
        .collect()
}

#[test]
fn one_arrow_per_flow_and_environment_it_applies_to() {
    let svg = render(&tenant(TENANT));
    let doc = Document::parse(&svg).expect("the map is XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    assert_eq!(
        titles(&doc, "flow "),
        [
            "egress scraping from dev",
            "egress scraping from prod",
            "egress scraping from recette",
            "egress smtp from dev",
            "ingress bastion into prod",
            "ingress public-web into prod",
            "ingress public-web into recette",
        ]
    );
    // DNS, always allowed, in every environment.
    assert_eq!(
        titles(&doc, "dns"),
        [
            "egress dns from dev",
            "egress dns from prod",
            "egress dns from recette"
        ]
    );
    // Each flow group holds exactly one arrow.
    for g in doc
        .descendants()
        .filter(|n| n.has_tag_name("g") && (class(*n).starts_with("flow ") || class(*n) == "dns"))
    {
        let arrows = g
            .children()
            .filter(|c| c.has_tag_name("line") && class(*c) == "arrow")
            .count();
        assert_eq!(arrows, 1, "one arrow in {:?}", g.children().next());
    }
}

#[test]
fn the_map_names_every_flow_environment_port_and_peer() {
    let svg = render(&tenant(TENANT));
    let doc = Document::parse(&svg).expect("the map is XML");
    let all = texts(&doc).join("\n");
    for expected in [
        "public-web",
        "bastion",
        "scraping",
        "smtp",
        "prod",
        "recette",
        "dev",
        "namespace candidats-recette",
        "TCP 8443",
        "TCP 2200-2210",
        "UDP 2525",
        "any port",
        "192.168.10.0/24 except 192.168.10.128/25",
        "10.40.0.0/16",
        "from: namespaces kubernetes.io/metadata.name=ingress-nginx\npods all",
        "team In (obs, sre)",
        "Service front (LoadBalancer)",
        "UDP 53, TCP 53",
    ] {
        assert!(all.contains(expected), "the map says {expected:?}:\n{all}");
    }
    // Arrows are labelled with the flow's name and its ports.
    let labels: Vec<(String, String)> = doc
        .descendants()
        .filter(|n| n.has_tag_name("g") && class(*n).starts_with("flow "))
        .map(|g| {
            let label = |c: &str| {
                g.children()
                    .find(|t| t.has_tag_name("text") && class(*t) == c)
                    .and_then(|t| t.text())
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            };
            (label("flow-name"), label("flow-ports"))
        })
        .collect();
    assert!(labels.contains(&("bastion".into(), "TCP 2200-2210".into())));
    assert!(labels.contains(&("scraping".into(), "any port".into())));
}

#[test]
fn production_is_marked_and_natures_are_drawn_apart() {
    let svg = render(&tenant(TENANT));
    let doc = Document::parse(&svg).expect("the map is XML");
    let marked: Vec<bool> = doc
        .descendants()
        .filter(|n| n.has_tag_name("g") && class(*n) == "environment")
        .map(|g| {
            g.children()
                .any(|c| c.has_tag_name("text") && c.text().map(str::trim) == Some("PRODUCTION"))
        })
        .collect();
    assert_eq!(marked, [true, false, false], "prod, recette, dev");

    let arrow_style = |nature: &str| {
        let g = doc
            .descendants()
            .find(|n| n.has_tag_name("g") && class(*n).ends_with(nature))
            .unwrap_or_else(|| panic!("a {nature} flow"));
        let line = g
            .children()
            .find(|c| c.has_tag_name("line"))
            .expect("an arrow");
        (
            line.attribute("stroke").map(str::to_string),
            line.attribute("stroke-dasharray").map(str::to_string),
        )
    };
    let production = arrow_style("production");
    let administration = arrow_style("administration");
    let supervision = arrow_style("supervision");
    assert_ne!(production.0, administration.0);
    assert_ne!(production.0, supervision.0);
    assert_ne!(administration.0, supervision.0);
    assert_eq!(production.1, None, "production flows are solid");
    assert!(administration.1.is_some() && supervision.1.is_some());
    assert_ne!(administration.1, supervision.1);

    let legend = doc
        .descendants()
        .find(|n| n.has_tag_name("g") && class(*n) == "legend")
        .expect("a legend");
    let legend_text: Vec<&str> = legend
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text().map(str::trim))
        .collect();
    for entry in [
        "production flow",
        "administration flow",
        "supervision flow",
        "DNS, always allowed",
    ] {
        assert!(legend_text.contains(&entry), "the legend has {entry}");
    }
    let all = texts(&doc).join("\n");
    assert!(all.contains("any flow not drawn here is denied"));
    assert!(all.contains("Flows between environments and between tenants never exist"));
}

#[test]
fn what_the_tenant_says_is_escaped() {
    let hostile = TENANT.replace(
        "displayName: Candidats",
        r#"displayName: "<script>alert('x')</script> & \"co\" \u0007""#,
    );
    let svg = render(&tenant(&hostile));
    assert!(
        !svg.contains("<script"),
        "no markup from the tenant:\n{svg}"
    );
    assert!(!svg.contains('\u{7}'));
    let doc = Document::parse(&svg).expect("the map is still XML");
    assert!(
        doc.descendants().all(|n| !n.has_tag_name("script")),
        "no script element"
    );
    let title = doc
        .root_element()
        .children()
        .find(|c| c.has_tag_name("title"))
        .and_then(|t| t.text())
        .expect("the document's title");
    assert_eq!(
        title,
        "Flow map of candidats: <script>alert('x')</script> & \"co\" \u{FFFD}"
    );
}

#[test]
fn the_same_tenant_gives_the_same_bytes() {
    let first = render(&tenant(TENANT));
    let second = render(&tenant(TENANT));
    assert!(first == second, "rendering is deterministic");
    // Labels in another order in the manifest: the same map.
    let reordered = TENANT.replace(
        "nodePool: {matchLabels: {pool: prod}}",
        "nodePool: {matchLabels: {zone: a, pool: prod}}",
    );
    let swapped = TENANT.replace(
        "nodePool: {matchLabels: {pool: prod}}",
        "nodePool: {matchLabels: {pool: prod, zone: a}}",
    );
    assert!(render(&tenant(&reordered)) == render(&tenant(&swapped)));
}

#[test]
fn a_map_draws_the_tenant_named_or_the_only_one() {
    let two = format!(
        "{TENANT}---\n{}",
        TENANT.replace("name: candidats", "name: offres")
    );
    let tenants = parse_tenants(&two).unwrap();
    assert_eq!(
        pick(tenants.clone(), None).map(|t| t.metadata.name),
        Err(PickError::Several {
            found: vec!["candidats".into(), "offres".into()]
        })
    );
    assert_eq!(
        pick(tenants.clone(), Some("offres")).map(|t| t.metadata.name),
        Ok(Some("offres".into()))
    );
    assert_eq!(
        pick(tenants, Some("absent")).map(|t| t.metadata.name),
        Err(PickError::NotFound {
            name: "absent".into(),
            found: vec!["candidats".into(), "offres".into()]
        })
    );
    let one = parse_tenants(TENANT).unwrap();
    assert_eq!(
        pick(one, None).map(|t| t.metadata.name),
        Ok(Some("candidats".into()))
    );
}

#[test]
fn the_committed_flow_map_is_the_examples() {
    let map = render(&common::tenant("examples/tenant.yaml"));
    let path = common::repo_path(MAP);
    if std::env::var_os("FT_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &map).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == map,
        "{MAP} is stale: run FT_UPDATE_DOCS=1 cargo test -p ft-core --test core flowmap"
    );
    // The example draws both its environments and its four flows (web and metrics in both).
    let doc = Document::parse(&map).expect("the map is XML");
    assert_eq!(
        titles(&doc, "flow "),
        [
            "egress database from prod",
            "egress database-dev from dev",
            "ingress metrics into dev",
            "ingress metrics into prod",
            "ingress web into dev",
            "ingress web into prod",
        ]
    );
}
