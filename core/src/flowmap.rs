//! The flow map (CLD-35): a tenant's authorised flow matrix drawn as an SVG, for an auditor who
//! reads a picture rather than YAML. `ft-operator map` prints it.
//!
//! One band per environment: its box in the middle (production marked), the declared ingress
//! flows on the left, each as a card naming its peers and an arrow into the environment, and the
//! egress flows on the right, DNS always among them. Style and colour tell the flow's nature
//! (CLD-36). A legend and the rules the picture cannot show (default deny, no flow between
//! environments or tenants) close it.
//!
//! Pure and deterministic: the same tenant gives the same bytes (no clock, no hash order; the
//! `svg` crate writes attributes sorted). Every string from the tenant goes through the crate's
//! escaping as text or attribute, after characters XML cannot carry are replaced.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use svg::Document;
use svg::node::element::{Definitions, Group, Line, Marker, Path, Rectangle, Text, Title};

use crate::api::{
    EgressFlow, Environment, EnvironmentKind, FlowNature, FlowPort, FranceTravailTenant,
    IngressFlow, Peer,
};

const MARGIN: i64 = 20;
const CARD_WIDTH: i64 = 420;
const GAP: i64 = 220;
const ENV_WIDTH: i64 = 300;
const LEFT_X: i64 = MARGIN;
const ENV_X: i64 = LEFT_X + CARD_WIDTH + GAP;
const RIGHT_X: i64 = ENV_X + ENV_WIDTH + GAP;
const WIDTH: i64 = RIGHT_X + CARD_WIDTH + MARGIN;
const LINE: i64 = 16;
const PAD: i64 = 10;
const CARD_SPACING: i64 = 12;
const BAND_SPACING: i64 = 36;
const ENV_MIN_HEIGHT: i64 = 120;
const BANDS_TOP: i64 = 150;
/// Characters of a card line (11px monospace) before it wraps.
const WRAP: usize = 60;
const FONT: &str = "DejaVu Sans, Helvetica, Arial, sans-serif";
const MONO: &str = "DejaVu Sans Mono, Menlo, Consolas, monospace";

/// How an arrow is drawn: a nature of flow, or DNS.
#[derive(Clone, Copy)]
enum Style {
    Nature(FlowNature),
    Dns,
}

impl Style {
    const ALL: [Style; 4] = [
        Style::Nature(FlowNature::Production),
        Style::Nature(FlowNature::Administration),
        Style::Nature(FlowNature::Supervision),
        Style::Dns,
    ];

    fn key(self) -> &'static str {
        match self {
            Style::Nature(n) => n.as_str(),
            Style::Dns => "dns",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            Style::Nature(FlowNature::Production) => "#1d4ed8",
            Style::Nature(FlowNature::Administration) => "#c2410c",
            Style::Nature(FlowNature::Supervision) => "#047857",
            Style::Dns => "#6b7280",
        }
    }

    /// Solid, dashed, dotted: told apart without colour too.
    fn dash(self) -> Option<&'static str> {
        match self {
            Style::Nature(FlowNature::Production) => None,
            Style::Nature(FlowNature::Administration) => Some("10 5"),
            Style::Nature(FlowNature::Supervision) => Some("2 5"),
            Style::Dns => Some("5 4"),
        }
    }

    fn width(self) -> &'static str {
        match self {
            Style::Nature(FlowNature::Production) => "2.5",
            Style::Dns => "1.5",
            Style::Nature(_) => "2",
        }
    }

    fn legend(self) -> &'static str {
        match self {
            Style::Nature(FlowNature::Production) => "production flow",
            Style::Nature(FlowNature::Administration) => "administration flow",
            Style::Nature(FlowNature::Supervision) => "supervision flow",
            Style::Dns => "DNS, always allowed",
        }
    }

    fn marker(self) -> String {
        format!("arrow-{}", self.key())
    }

    fn stroke<T: svg::Node>(self, mut node: T) -> T {
        node.assign("stroke", self.colour());
        node.assign("stroke-width", self.width());
        if let Some(dash) = self.dash() {
            node.assign("stroke-dasharray", dash);
        }
        node
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// One line of a card; a continuation of a wrapped line is indented.
struct CardLine {
    text: String,
    strong: bool,
    indent: bool,
}

/// A flow as drawn beside one environment: its card and its arrow's labels.
struct Card {
    direction: Direction,
    style: Style,
    name: String,
    ports: String,
    lines: Vec<CardLine>,
}

impl Card {
    fn height(&self) -> i64 {
        2 * PAD + LINE * self.lines.len() as i64
    }
}

/// The SVG document of `tenant`'s flow map.
pub fn render(tenant: &FranceTravailTenant) -> String {
    let spec = &tenant.spec;
    let name = tenant.name_any();
    let mut bands = Group::new().set("class", "environments");
    let mut y = BANDS_TOP;
    for env in &spec.environments {
        let applies =
            |environments: &[String]| environments.is_empty() || environments.contains(&env.name);
        let left: Vec<Card> = spec
            .network
            .ingress
            .iter()
            .filter(|f| applies(&f.environments))
            .map(ingress_card)
            .collect();
        let right: Vec<Card> = spec
            .network
            .egress
            .iter()
            .filter(|f| applies(&f.environments))
            .map(egress_card)
            .chain([dns_card()])
            .collect();
        let (band, height) = band(&name, env, &left, &right, y);
        bands = bands.add(band);
        y += height + BAND_SPACING;
    }
    let notes_top = y;
    let height = notes_top + 6 * LINE + MARGIN;

    let title = format!("Flow map of {name}: {}", spec.display_name);
    let mut summary = format!(
        "data classification {} · {} environment(s) · {} ingress and {} egress flow(s) declared",
        spec.data_classification.as_str(),
        spec.environments.len(),
        spec.network.ingress.len(),
        spec.network.egress.len(),
    );
    if let Some(generation) = tenant.metadata.generation {
        summary.push_str(&format!(" · generation {generation}"));
    }
    let document = Document::new()
        .set("viewBox", (0, 0, WIDTH, height))
        .set("width", WIDTH)
        .set("height", height)
        .set("font-family", FONT)
        .add(Title::new(clean(&title)))
        .add(markers())
        .add(
            Rectangle::new()
                .set("width", WIDTH)
                .set("height", height)
                .set("fill", "#ffffff"),
        )
        .add(
            text(MARGIN, 36, &title)
                .set("font-size", 22)
                .set("font-weight", "bold"),
        )
        .add(
            text(MARGIN, 60, &summary)
                .set("font-size", 13)
                .set("fill", "#374151"),
        )
        .add(legend(88))
        .add(bands)
        .add(notes(notes_top));
    format!("{document}\n")
}

/// The environment's box between its ingress and egress cards; returns the band's height.
fn band(tenant: &str, env: &Environment, left: &[Card], right: &[Card], top: i64) -> (Group, i64) {
    let column = |cards: &[Card]| {
        cards.iter().map(Card::height).sum::<i64>() + CARD_SPACING * (cards.len() as i64 - 1).max(0)
    };
    let height = column(left).max(column(right)).max(ENV_MIN_HEIGHT);
    let production = env.kind == EnvironmentKind::Production;
    let mut group = Group::new()
        .set("class", "environment")
        .add(Title::new(clean(&format!(
            "environment {} ({}), namespace {tenant}-{}",
            env.name,
            env.kind.as_str(),
            env.name
        ))))
        .add(
            Rectangle::new()
                .set("x", ENV_X)
                .set("y", top)
                .set("width", ENV_WIDTH)
                .set("height", height)
                .set("rx", 8)
                .set("fill", if production { "#fef2f2" } else { "#f3f4f6" })
                .set("stroke", if production { "#b91c1c" } else { "#4b5563" })
                .set("stroke-width", if production { "3" } else { "1.5" }),
        );
    let centre = ENV_X + ENV_WIDTH / 2;
    let mut lines = vec![
        text(centre, 0, &env.name)
            .set("font-size", 18)
            .set("font-weight", "bold"),
        text(centre, 0, env.kind.as_str()).set("font-size", 12),
        text(centre, 0, &format!("namespace {tenant}-{}", env.name))
            .set("font-size", 11)
            .set("font-family", MONO),
    ];
    if production {
        lines.insert(
            0,
            text(centre, 0, "PRODUCTION")
                .set("class", "production")
                .set("font-size", 12)
                .set("font-weight", "bold")
                .set("fill", "#b91c1c"),
        );
    }
    if let Some(pool) = &env.node_pool {
        let labels: Vec<String> = pool
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        lines.push(text(centre, 0, "dedicated node pool").set("font-size", 11));
        // 10px monospace: about six pixels a character.
        let width = (ENV_WIDTH as usize - 2 * PAD as usize) / 6;
        for label in labels {
            let chars: Vec<char> = label.chars().collect();
            for chunk in chars.chunks(width) {
                lines.push(
                    text(centre, 0, &chunk.iter().collect::<String>())
                        .set("font-size", 10)
                        .set("font-family", MONO),
                );
            }
        }
    }
    let first = top + height / 2 - (lines.len() as i64 * 18) / 2 + 14;
    for (i, line) in lines.into_iter().enumerate() {
        group = group.add(
            line.set("y", first + 18 * i as i64)
                .set("text-anchor", "middle"),
        );
    }
    for (cards, x) in [(left, LEFT_X), (right, RIGHT_X)] {
        let mut y = top;
        for card in cards {
            group = group.add(flow(card, &env.name, x, y));
            y += card.height() + CARD_SPACING;
        }
    }
    (group, height)
}

/// A card and its arrow, with a tooltip naming the flow and the environment.
fn flow(card: &Card, env: &str, x: i64, y: i64) -> Group {
    let kind = match card.style {
        Style::Dns => "dns".to_string(),
        Style::Nature(n) => format!("flow {} {}", card.direction.as_str(), n.as_str()),
    };
    let tooltip = match card.direction {
        Direction::Ingress => format!("ingress {} into {env}", card.name),
        Direction::Egress => format!("egress {} from {env}", card.name),
    };
    let mut group = Group::new()
        .set("class", kind)
        .add(Title::new(clean(&tooltip)))
        .add(
            card.style.stroke(
                Rectangle::new()
                    .set("x", x)
                    .set("y", y)
                    .set("width", CARD_WIDTH)
                    .set("height", card.height())
                    .set("rx", 6)
                    .set("fill", "#ffffff"),
            ),
        );
    for (i, line) in card.lines.iter().enumerate() {
        let mut t = text(
            x + PAD + if line.indent { 24 } else { 0 },
            y + PAD + LINE * (i as i64 + 1) - 4,
            &line.text,
        )
        .set("font-size", if line.strong { 13 } else { 11 });
        t = if line.strong {
            t.set("font-weight", "bold")
                .set("fill", card.style.colour())
        } else {
            t.set("font-family", MONO)
        };
        group = group.add(t);
    }
    let arrow_y = y + card.height() / 2;
    let (from, to) = match card.direction {
        Direction::Ingress => (x + CARD_WIDTH, ENV_X - 2),
        Direction::Egress => (ENV_X + ENV_WIDTH, x - 2),
    };
    let middle = (from + to) / 2;
    group
        .add(
            card.style.stroke(
                Line::new()
                    .set("class", "arrow")
                    .set("x1", from)
                    .set("y1", arrow_y)
                    .set("x2", to)
                    .set("y2", arrow_y)
                    .set("stroke-linecap", "round")
                    .set("marker-end", format!("url(#{})", card.style.marker())),
            ),
        )
        .add(
            text(middle, arrow_y - 7, &card.name)
                .set("class", "flow-name")
                .set("text-anchor", "middle")
                .set("font-size", 12)
                .set("font-weight", "bold")
                .set("fill", card.style.colour()),
        )
        .add(
            text(middle, arrow_y + 16, &card.ports)
                .set("class", "flow-ports")
                .set("text-anchor", "middle")
                .set("font-size", 11)
                .set("fill", "#374151"),
        )
}

fn ingress_card(flow: &IngressFlow) -> Card {
    let mut lines = vec![header(&flow.name, flow.nature)];
    peers(&mut lines, "from", &flow.from);
    wrap(&mut lines, format!("ports: {}", ports(&flow.ports)), false);
    wrap(
        &mut lines,
        format!("to pods: {}", pods(flow.pod_selector.as_ref())),
        false,
    );
    if let Some(expose) = &flow.expose {
        wrap(
            &mut lines,
            format!(
                "exposed outside the cluster by Service {} ({})",
                expose.service,
                expose.type_.as_str()
            ),
            false,
        );
    }
    Card {
        direction: Direction::Ingress,
        style: Style::Nature(flow.nature),
        name: flow.name.clone(),
        ports: ports(&flow.ports),
        lines,
    }
}

fn egress_card(flow: &EgressFlow) -> Card {
    let mut lines = vec![header(&flow.name, flow.nature)];
    peers(&mut lines, "to", &flow.to);
    wrap(&mut lines, format!("ports: {}", ports(&flow.ports)), false);
    wrap(
        &mut lines,
        format!("from pods: {}", pods(flow.pod_selector.as_ref())),
        false,
    );
    if flow.acknowledge_any_destination {
        wrap(
            &mut lines,
            "every address acknowledged (acknowledgeAnyDestination)".into(),
            false,
        );
    }
    Card {
        direction: Direction::Egress,
        style: Style::Nature(flow.nature),
        name: flow.name.clone(),
        ports: ports(&flow.ports),
        lines,
    }
}

fn dns_card() -> Card {
    let ports = "UDP 53, TCP 53".to_string();
    Card {
        direction: Direction::Egress,
        style: Style::Dns,
        name: "dns".into(),
        lines: vec![
            CardLine {
                text: "DNS · always allowed".into(),
                strong: true,
                indent: false,
            },
            plain("to: the cluster DNS".into(), false),
            plain(format!("ports: {ports}"), false),
        ],
        ports,
    }
}

fn header(name: &str, nature: FlowNature) -> CardLine {
    CardLine {
        text: format!("{name} · {}", nature.as_str()),
        strong: true,
        indent: false,
    }
}

fn plain(text: String, indent: bool) -> CardLine {
    CardLine {
        text,
        strong: false,
        indent,
    }
}

fn peers(lines: &mut Vec<CardLine>, label: &str, peers: &[Peer]) {
    for (i, p) in peers.iter().enumerate() {
        let prefix = if i == 0 { label } else { "and" };
        if let Some(cidr) = &p.cidr {
            let block = match p.except.as_deref() {
                Some(except) if !except.is_empty() => {
                    format!("{cidr} except {}", except.join(", "))
                }
                _ => cidr.clone(),
            };
            wrap(lines, format!("{prefix}: {block}"), false);
        } else {
            let namespaces = p
                .namespace_selector
                .as_ref()
                .map_or_else(|| "none".into(), selector);
            wrap(lines, format!("{prefix}: namespaces {namespaces}"), false);
            wrap(
                lines,
                format!("pods {}", pods(p.pod_selector.as_ref())),
                true,
            );
        }
    }
}

fn pods(s: Option<&LabelSelector>) -> String {
    s.map_or_else(|| "all".into(), selector)
}

/// A label selector as `kubectl` prints one: `k=v, key In (a, b)`; `any` when it is empty.
fn selector(s: &LabelSelector) -> String {
    let mut terms: Vec<String> = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in s.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default();
        terms.push(if values.is_empty() {
            format!("{} {}", e.key, e.operator)
        } else {
            format!("{} {} ({})", e.key, e.operator, values.join(", "))
        });
    }
    if terms.is_empty() {
        "any".into()
    } else {
        terms.join(", ")
    }
}

fn ports(ports: &[FlowPort]) -> String {
    if ports.is_empty() {
        return "any port".into();
    }
    ports
        .iter()
        .map(|p| match p.end_port {
            Some(end) if end != p.port => format!("{} {}-{end}", p.protocol.as_str(), p.port),
            _ => format!("{} {}", p.protocol.as_str(), p.port),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Adds `line` (indented or not), split at spaces into lines of at most [`WRAP`] characters where it can be.
fn wrap(lines: &mut Vec<CardLine>, line: String, indent: bool) {
    let mut rest: Vec<char> = line.chars().collect();
    let mut indent = indent;
    while rest.len() > WRAP {
        let cut = rest[..=WRAP]
            .iter()
            .rposition(|c| *c == ' ')
            .filter(|&i| i > WRAP / 2)
            .unwrap_or(WRAP);
        let head: String = rest[..cut].iter().collect();
        lines.push(plain(head.trim_end().to_string(), indent));
        rest = rest[cut..]
            .iter()
            .copied()
            .skip_while(|c| *c == ' ')
            .collect();
        indent = true;
        if rest.is_empty() {
            return;
        }
    }
    lines.push(plain(rest.into_iter().collect(), indent));
}

fn markers() -> Definitions {
    Style::ALL
        .into_iter()
        .fold(Definitions::new(), |defs, style| {
            defs.add(
                Marker::new()
                    .set("id", style.marker())
                    .set("viewBox", (0, 0, 10, 10))
                    .set("refX", 9)
                    .set("refY", 5)
                    .set("markerWidth", 7)
                    .set("markerHeight", 7)
                    .set("markerUnits", "strokeWidth")
                    .set("orient", "auto")
                    .add(
                        Path::new()
                            .set("d", "M 0 0 L 10 5 L 0 10 z")
                            .set("fill", style.colour()),
                    ),
            )
        })
}

fn legend(top: i64) -> Group {
    let mut group = Group::new().set("class", "legend");
    let mut x = MARGIN;
    for style in Style::ALL {
        group = group
            .add(
                style.stroke(
                    Line::new()
                        .set("x1", x)
                        .set("y1", top)
                        .set("x2", x + 50)
                        .set("y2", top)
                        .set("marker-end", format!("url(#{})", style.marker())),
                ),
            )
            .add(text(x + 60, top + 4, style.legend()).set("font-size", 12));
        x += 260;
    }
    group
        .add(
            Rectangle::new()
                .set("x", x)
                .set("y", top - 10)
                .set("width", 30)
                .set("height", 20)
                .set("rx", 4)
                .set("fill", "#fef2f2")
                .set("stroke", "#b91c1c")
                .set("stroke-width", 3),
        )
        .add(
            text(
                x + 40,
                top + 4,
                "production environment, on its own node pool (CLD-25)",
            )
            .set("font-size", 12),
        )
        .add(
            text(
                MARGIN,
                top + 34,
                "Left: flows into an environment, from the peers named. Right: flows out of it. \
                 Each card lists the flow's peers, ports and the pods it concerns.",
            )
            .set("font-size", 12)
            .set("fill", "#374151"),
        )
}

fn notes(top: i64) -> Group {
    const NOTES: [&str; 4] = [
        "Default deny (CLD-20, CLD-36): in every environment, any flow not drawn here is denied, inbound and outbound.",
        "DNS to the cluster DNS is always allowed, and pods of one environment reach each other; nothing else is implicit.",
        "Flows between environments and between tenants never exist: no namespace selector matches a tenant's namespace, this tenant's other environments included.",
        "Address blocks never reach into the cluster's own pod and service networks: those are carved out of every block.",
    ];
    let mut group = Group::new().set("class", "notes").add(
        text(MARGIN, top + LINE, "Everything else is denied")
            .set("font-size", 14)
            .set("font-weight", "bold"),
    );
    for (i, note) in NOTES.iter().enumerate() {
        group = group.add(
            text(MARGIN, top + LINE * (i as i64 + 2) + 6, note)
                .set("class", "note")
                .set("font-size", 12),
        );
    }
    group
}

fn text(x: i64, y: i64, content: &str) -> Text {
    Text::new(clean(content)).set("x", x).set("y", y)
}

/// The characters XML 1.0 cannot carry (control characters) become U+FFFD, and line breaks
/// spaces: the crate escapes markup, not these.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\n' | '\r' | '\t' => ' ',
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => '\u{FFFD}',
            c => c,
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    #[error("no tenant named {name} in the input, which holds {}", .found.join(", "))]
    NotFound { name: String, found: Vec<String> },
    #[error("the input holds {} tenants ({}): a map draws one, name it with --tenant", .found.len(), .found.join(", "))]
    Several { found: Vec<String> },
}

/// The tenant a map is drawn for: the one named, or the only one. Several tenants without a
/// name are refused rather than drawn into one picture, since no flow joins two tenants.
pub fn pick(
    tenants: Vec<FranceTravailTenant>,
    name: Option<&str>,
) -> Result<FranceTravailTenant, PickError> {
    let found: Vec<String> = tenants.iter().map(ResourceExt::name_any).collect();
    match name {
        Some(name) => tenants
            .into_iter()
            .find(|t| t.name_any() == name)
            .ok_or_else(|| PickError::NotFound {
                name: name.into(),
                found,
            }),
        None => match <[FranceTravailTenant; 1]>::try_from(tenants) {
            Ok([tenant]) => Ok(tenant),
            Err(_) => Err(PickError::Several { found }),
        },
    }
}
