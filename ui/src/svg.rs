//! The SVG of the service map and of the policy graph, built as text in one pass.
//!
//! Thousands of edges are plain elements with `data-*` attributes: no per-edge reactive state;
//! the views find what was clicked from the event target (`closest(".node")`).
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write;

use periscope_ui_api::{MapNode, NodeKind, PolicyGraph};

use crate::format::{
    edge_counts, edge_label, escape, kind_name, look_name, namespace_color, node_label, port_proto,
    truncate,
};
use crate::layout::{CELL_H, CELL_W, Layout, REGION_PAD, ViewBox};
use crate::mapstate::{MapState, node_from_id};

/// Edge labels are drawn up to this many edges (beyond, the picture would be all text;
/// every edge still has its tooltip).
pub const LABEL_LIMIT: usize = 300;

/// Beyond this many edges the map is drawn "dense" (fainter edges).
pub const DENSE: usize = 800;

/// Radius of the circle around a node that edges stop at.
const NODE_R: f64 = 22.0;

/// Colours of the edge looks (also in style.css and the legend).
pub const COLORS: &[(&str, &str)] = &[
    ("forwarded", "#2e9e44"),
    ("dropped", "#d93025"),
    ("mixed", "#b3248a"),
    ("audit", "#e0a100"),
    ("allow", "#3b6fd8"),
    ("deny", "#7a1010"),
];

fn open_svg(out: &mut String, class: &str, vb: &ViewBox) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="{class}" viewBox="{}" preserveAspectRatio="xMidYMid meet"><defs>"#,
        vb.attr()
    );
    for (name, color) in COLORS {
        let _ = write!(
            out,
            r#"<marker id="arrow-{name}" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" markerWidth="11" markerHeight="11" orient="auto"><path d="M0,0L10,5L0,10z" fill="{color}"/></marker>"#
        );
    }
    out.push_str("</defs>");
}

/// Draws the regions that hold a node of `present`.
fn regions(out: &mut String, layout: &Layout, present: &BTreeSet<&str>) {
    out.push_str(r#"<g class="regions">"#);
    let mut seen = BTreeSet::new();
    for r in layout.regions() {
        if !present.contains(r.key.as_str()) {
            continue;
        }
        let (fill, mut title) = if r.key.is_empty() {
            ("#5f6b7a".to_string(), "outside namespaces".to_string())
        } else {
            (namespace_color(&r.key), r.key.clone())
        };
        if !seen.insert(r.key.as_str()) {
            title.push_str(" (continued)");
        }
        // About 8.5 units per character of the 15-unit title font.
        let title = truncate(&title, ((r.width() - 2.0 * REGION_PAD) / 8.5) as usize);
        let _ = write!(
            out,
            r#"<g class="region" data-namespace="{ns}"><rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" rx="12" fill="{fill}" fill-opacity="0.07" stroke="{fill}" stroke-opacity="0.45"/><text class="region-title" x="{tx:.1}" y="{ty:.1}" fill="{fill}">{t}<title>{full}</title></text></g>"#,
            ns = escape(&r.key),
            x = r.x,
            y = r.y,
            ty = r.y + 26.0,
            w = r.width(),
            h = r.height(),
            tx = r.x + REGION_PAD,
            t = escape(&title),
            full = escape(if r.key.is_empty() {
                "identities outside namespaces"
            } else {
                &r.key
            }),
        );
    }
    out.push_str("</g>");
}

/// The shape of a node kind, centred on 0,0.
fn shape(out: &mut String, n: &MapNode) {
    match n.kind {
        NodeKind::Workload => {
            let _ = write!(
                out,
                r#"<circle class="shape" r="16" fill="{}"/>"#,
                namespace_color(&n.namespace)
            );
        }
        NodeKind::World => out.push_str(
            r#"<circle class="shape world" r="18"/><ellipse class="glyph" rx="7" ry="18"/><path class="glyph" d="M-18,0H18M-15,-9H15M-15,9H15"/>"#,
        ),
        NodeKind::Host => out.push_str(
            r#"<rect class="shape host" x="-17" y="-15" width="34" height="30" rx="4"/><path class="glyph" d="M-11,-6H11M-11,0H11M-11,6H11"/>"#,
        ),
        NodeKind::RemoteNode => out.push_str(
            r#"<rect class="shape remote" x="-17" y="-15" width="34" height="30" rx="4"/><path class="glyph" d="M-11,-6H11M-11,0H11M-11,6H11"/><circle class="glyph-dot" cx="12" cy="-11" r="5"/>"#,
        ),
        NodeKind::Reserved => out.push_str(
            r#"<polygon class="shape reserved" points="0,-18 15.6,-9 15.6,9 0,18 -15.6,9 -15.6,-9"/>"#,
        ),
        NodeKind::Unknown => out.push_str(
            r#"<circle class="shape unknown" r="16"/><text class="glyph-text" y="6">?</text>"#,
        ),
    }
}

fn kind_words(k: NodeKind) -> &'static str {
    match k {
        NodeKind::Workload => "workload",
        NodeKind::World => "outside the cluster",
        NodeKind::Host => "the node's host",
        NodeKind::RemoteNode => "another node of the cluster",
        NodeKind::Reserved => "reserved identity",
        NodeKind::Unknown => "unknown endpoint",
    }
}

fn nodes<'a>(out: &mut String, layout: &Layout, nodes: impl Iterator<Item = &'a MapNode>) {
    out.push_str(r#"<g class="nodes">"#);
    for n in nodes {
        let Some((x, y)) = layout.position(&n.id) else {
            continue;
        };
        let kind = kind_name(n.kind);
        let _ = write!(
            out,
            r#"<g class="node kind-{kind}" data-id="{id}" data-kind="{kind}" data-namespace="{ns}" transform="translate({x:.1},{y:.1})">"#,
            id = escape(&n.id),
            ns = escape(&n.namespace),
        );
        shape(out, n);
        let _ = write!(
            out,
            r#"<text class="label" y="36">{}</text><title>{} ({})</title></g>"#,
            escape(&node_label(n)),
            escape(&n.id),
            kind_words(n.kind)
        );
    }
    out.push_str("</g>");
}

/// An edge to draw.
struct Line<'a> {
    source: &'a str,
    destination: &'a str,
    /// Orders the edges of one (source, destination) pair, for their curvature (stable).
    order: String,
    /// Element classes.
    class: String,
    /// `data-*` attributes, already escaped.
    data: String,
    /// Marker colour name (a key of [`COLORS`]).
    marker: &'static str,
    width: f64,
    label: Option<String>,
    title: String,
}

/// The curve of the `k`-th edge from `p1` to `p2`: path data and the label position.
fn curve(p1: (f64, f64), p2: (f64, f64), k: usize) -> (String, (f64, f64)) {
    let (dx, dy) = (p2.0 - p1.0, p2.1 - p1.1);
    let len = (dx * dx + dy * dy).sqrt();
    if len < 1.0 {
        // A loop above the node.
        let s = 1.0 + k as f64 * 0.35;
        let (x, y) = p1;
        let d = format!(
            "M{:.1},{:.1}C{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}",
            x - 10.0,
            y - 18.0,
            x - 34.0 * s,
            y - 70.0 * s,
            x + 34.0 * s,
            y - 70.0 * s,
            x + 10.0,
            y - 18.0
        );
        return (d, (x, y - 58.0 * s));
    }
    let (nx, ny) = (-dy / len, dx / len);
    // Long edges bend more, so that they pass beside the nodes between their ends (the nodes
    // of a region's row are on one line); parallel edges bend further out.
    let off = 16.0 + 16.0 * k as f64 + (len * 0.14).min(160.0);
    let c = (
        (p1.0 + p2.0) / 2.0 + nx * off,
        (p1.1 + p2.1) / 2.0 + ny * off,
    );
    let unit = |a: (f64, f64), b: (f64, f64)| {
        let (ux, uy) = (b.0 - a.0, b.1 - a.1);
        let l = (ux * ux + uy * uy).sqrt().max(1e-9);
        (ux / l, uy / l)
    };
    let u1 = unit(p1, c);
    let u2 = unit(c, p2);
    let s = (p1.0 + u1.0 * NODE_R, p1.1 + u1.1 * NODE_R);
    let e = (p2.0 - u2.0 * (NODE_R + 2.0), p2.1 - u2.1 * (NODE_R + 2.0));
    let d = format!(
        "M{:.1},{:.1}Q{:.1},{:.1} {:.1},{:.1}",
        s.0, s.1, c.0, c.1, e.0, e.1
    );
    let mid = (
        0.25 * s.0 + 0.5 * c.0 + 0.25 * e.0,
        0.25 * s.1 + 0.5 * c.1 + 0.25 * e.1,
    );
    (d, mid)
}

fn lines(out: &mut String, group: &str, layout: &Layout, lines: &[Line]) {
    // Curvature index of each edge within its (source, destination) pair, by a stable order.
    let mut pairs: HashMap<(&str, &str), Vec<(&str, usize)>> = HashMap::new();
    for (i, l) in lines.iter().enumerate() {
        pairs
            .entry((l.source, l.destination))
            .or_default()
            .push((&l.order, i));
    }
    let mut index = vec![0usize; lines.len()];
    for v in pairs.values_mut() {
        v.sort();
        for (k, &(_, i)) in v.iter().enumerate() {
            index[i] = k;
        }
    }
    let _ = write!(out, r#"<g class="{group}">"#);
    for (i, l) in lines.iter().enumerate() {
        let (Some(p1), Some(p2)) = (layout.position(l.source), layout.position(l.destination))
        else {
            continue;
        };
        let (d, (lx, ly)) = curve(p1, p2, index[i]);
        let _ = write!(
            out,
            r#"<g class="{}" {}><path class="hit" d="{d}"/><path class="line" d="{d}" stroke-width="{:.1}" marker-end="url(#arrow-{})"/>"#,
            l.class, l.data, l.width, l.marker
        );
        if let Some(t) = &l.label {
            let _ = write!(
                out,
                r#"<text class="edge-label" x="{lx:.1}" y="{ly:.1}">{}</text>"#,
                escape(t)
            );
        }
        let _ = write!(out, "<title>{}</title></g>", escape(&l.title));
    }
    out.push_str("</g>");
}

/// Stroke width from a flow count: 1.5 for one flow, growing with the logarithm, at most 7.
fn width(flows: u64) -> f64 {
    (1.5 + (flows as f64 + 1.0).log10() * 1.2).min(7.0)
}

/// What changes on a map edge when its counts change (a live delta patches these in place).
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeAttrs {
    /// `data-look` (and the marker colour).
    pub look: &'static str,
    /// `data-flows`.
    pub flows: u64,
    /// Stroke width of the line.
    pub width: f64,
    /// The label, when the map draws labels.
    pub label: Option<String>,
    /// The tooltip.
    pub title: String,
}

impl EdgeAttrs {
    /// The attributes of `e` (`labels`: whether the map draws edge labels).
    pub fn of(e: &periscope_ui_api::MapEdge, labels: bool) -> EdgeAttrs {
        let k = &e.key;
        EdgeAttrs {
            look: look_name(e.look()),
            flows: e.flows(),
            width: width(e.flows()),
            label: labels.then(|| edge_label(e)),
            title: format!(
                "{} → {} {}: {} (click for the flows)",
                k.source,
                k.destination,
                port_proto(&k.protocol, k.port),
                edge_counts(e)
            ),
        }
    }

    /// The element's `class`.
    pub fn class(&self) -> String {
        format!("edge look-{}", self.look)
    }

    /// The line's `stroke-width`.
    pub fn width_attr(&self) -> String {
        format!("{:.1}", self.width)
    }

    /// The line's `marker-end`.
    pub fn marker_attr(&self) -> String {
        format!("url(#arrow-{})", self.look)
    }
}

/// Whether the map of `edges` edges draws edge labels.
pub fn draws_labels(edges: usize) -> bool {
    edges <= LABEL_LIMIT
}

/// The service map: regions, edges (`.edge`), nodes (`.node`). Every node of `map` must be
/// placed in `layout` already.
pub fn map_svg(map: &MapState, layout: &Layout, vb: &ViewBox) -> String {
    let edges = map.edges_for_drawing();
    let labels = draws_labels(edges.len());
    let mut out = String::with_capacity(512 + edges.len() * 420 + map.nodes.len() * 300);
    // Many edges are drawn fainter (a node's click brings its own to the front).
    let class = if edges.len() > DENSE {
        "map dense"
    } else {
        "map"
    };
    open_svg(&mut out, class, vb);
    let present: BTreeSet<&str> = map.nodes.values().map(crate::layout::region_key).collect();
    regions(&mut out, layout, &present);
    let ls: Vec<Line> = edges
        .iter()
        .map(|e| {
            let k = &e.key;
            let a = EdgeAttrs::of(e, labels);
            Line {
                source: &k.source,
                destination: &k.destination,
                order: format!("{}/{:05}", k.protocol, k.port),
                class: a.class(),
                data: format!(
                    r#"data-source="{}" data-destination="{}" data-port="{}" data-protocol="{}" data-look="{}" data-flows="{}""#,
                    escape(&k.source),
                    escape(&k.destination),
                    k.port,
                    escape(&k.protocol),
                    a.look,
                    a.flows
                ),
                marker: a.look,
                width: a.width,
                label: a.label,
                title: a.title,
            }
        })
        .collect();
    lines(&mut out, "edges", layout, &ls);
    nodes(&mut out, layout, map.nodes.values());
    out.push_str("</svg>");
    out
}

/// Every node the policy graph names (its nodes, and the ends of its edges and denied edges).
pub fn policy_nodes(g: &PolicyGraph) -> Vec<MapNode> {
    let mut all: HashMap<String, MapNode> =
        g.nodes.iter().map(|n| (n.id.clone(), n.clone())).collect();
    let ends = g
        .edges
        .iter()
        .flat_map(|e| [&e.source, &e.destination])
        .chain(
            g.denied
                .iter()
                .flat_map(|e| [&e.key.source, &e.key.destination]),
        );
    for id in ends {
        if !all.contains_key(id) {
            all.insert(id.clone(), node_from_id(id));
        }
    }
    let mut v: Vec<MapNode> = all.into_values().collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

/// The policy graph: allow edges (`.policy-edge[data-deny=false]`), deny edges
/// (`.policy-edge[data-deny=true]`), observed denied flows on top (`.denied-edge`), nodes.
/// Every node of [`policy_nodes`] must be placed in `layout` already.
pub fn policy_svg(g: &PolicyGraph, layout: &Layout, vb: &ViewBox) -> String {
    let all = policy_nodes(g);
    let mut out = String::with_capacity(1024 + (g.edges.len() + g.denied.len()) * 420);
    open_svg(&mut out, "policy-graph", vb);
    let present: BTreeSet<&str> = all.iter().map(crate::layout::region_key).collect();
    regions(&mut out, layout, &present);
    let labels = g.edges.len() + g.denied.len() <= LABEL_LIMIT;
    let mut ls: Vec<Line> = g
        .edges
        .iter()
        .map(|e| {
            let ports = if e.ports.is_empty() {
                "any port".to_string()
            } else {
                e.ports.join(", ")
            };
            let verb = if e.deny { "denies" } else { "allows" };
            Line {
                source: &e.source,
                destination: &e.destination,
                order: format!("{}{}", e.deny as u8, e.ports.join(",")),
                class: format!(
                    "policy-edge {}",
                    if e.deny { "rule-deny" } else { "rule-allow" }
                ),
                data: format!(
                    r#"data-source="{}" data-destination="{}" data-deny="{}" data-ports="{}""#,
                    escape(&e.source),
                    escape(&e.destination),
                    e.deny,
                    escape(&e.ports.join(","))
                ),
                marker: if e.deny { "deny" } else { "allow" },
                width: 2.0,
                label: labels.then(|| ports.clone()),
                title: format!(
                    "{} {verb} {} → {} on {ports}",
                    e.policies.join(", "),
                    e.source,
                    e.destination
                ),
            }
        })
        .collect();
    ls.extend(g.denied.iter().map(|e| {
        let k = &e.key;
        Line {
            source: &k.source,
            destination: &k.destination,
            order: format!("~{}/{:05}", k.protocol, k.port),
            class: "denied-edge".to_string(),
            data: format!(
                r#"data-source="{}" data-destination="{}" data-port="{}" data-protocol="{}" data-flows="{}""#,
                escape(&k.source),
                escape(&k.destination),
                k.port,
                escape(&k.protocol),
                e.flows()
            ),
            marker: "dropped",
            width: width(e.dropped).max(2.5),
            label: labels.then(|| {
                format!(
                    "{} · {} dropped",
                    port_proto(&k.protocol, k.port),
                    e.dropped
                )
            }),
            title: format!(
                "observed: {} → {} {}: {} (click for the flows)",
                k.source,
                k.destination,
                port_proto(&k.protocol, k.port),
                edge_counts(e)
            ),
        }
    }));
    lines(&mut out, "policy-edges", layout, &ls);
    nodes(&mut out, layout, all.iter());
    out.push_str("</svg>");
    out
}

/// The empty drawing shown before there is anything to draw.
pub fn empty_bounds() -> ViewBox {
    ViewBox {
        x: 0.0,
        y: 0.0,
        w: CELL_W * 4.0,
        h: CELL_H * 3.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use periscope_ui_api::{DataSource, EdgeKey, MapEdge, PolicyEdge, ServiceMap};

    fn edge(s: &str, d: &str, port: u32, fwd: u64, drop: u64, audit: u64) -> MapEdge {
        let mut e = MapEdge::new(EdgeKey {
            source: s.into(),
            destination: d.into(),
            port,
            protocol: "TCP".into(),
        });
        e.forwarded = fwd;
        e.dropped = drop;
        e.audit = audit;
        e
    }

    fn count(hay: &str, needle: &str) -> usize {
        hay.matches(needle).count()
    }

    #[test]
    fn map_has_the_test_hooks() {
        let mut s = MapState::default();
        s.set_map(ServiceMap {
            since_ns: 0,
            until_ns: 1,
            source: DataSource::Live,
            nodes: vec![
                MapNode::new("prod", "web"),
                MapNode::new("prod", "db"),
                MapNode::new("", "reserved:world"),
                MapNode::new("", "reserved:host"),
            ],
            edges: vec![
                edge("reserved:world", "prod/web", 443, 10, 0, 0),
                edge("prod/web", "prod/db", 5432, 5, 2, 0),
                edge("prod/web", "prod/db", 6379, 0, 3, 0),
                edge("reserved:host", "prod/db", 5432, 0, 0, 4),
                edge("prod/db", "prod/db", 7000, 1, 0, 0),
            ],
            truncated: false,
        });
        let mut l = Layout::new();
        l.place(s.nodes.values());
        let svg = map_svg(&s, &l, &l.bounds());
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.ends_with("</svg>"));
        assert_eq!(count(&svg, r#"<g class="node "#), 4);
        assert_eq!(count(&svg, r#"<g class="edge "#), 5);
        assert!(svg.contains(r#"data-id="reserved:world" data-kind="world" data-namespace="""#));
        assert!(svg.contains(r#"data-id="prod/web" data-kind="workload" data-namespace="prod""#));
        assert!(svg.contains(r#"data-kind="host""#));
        assert!(svg.contains(
            r#"data-source="prod/web" data-destination="prod/db" data-port="5432" data-protocol="TCP" data-look="mixed" data-flows="7""#
        ));
        assert!(svg.contains(r#"data-port="6379" data-protocol="TCP" data-look="dropped""#));
        assert!(svg.contains(r#"data-look="audit" data-flows="4""#));
        assert!(svg.contains(r#"data-look="forwarded" data-flows="10""#));
        assert!(svg.contains("TCP/443 · 10"));
        assert_eq!(count(&svg, r#"<g class="region""#), 2);
        // Well-formed enough: every group closes.
        assert_eq!(count(&svg, "<g "), count(&svg, "</g>"));
    }

    #[test]
    fn names_are_escaped() {
        let mut s = MapState::default();
        s.set_map(ServiceMap {
            since_ns: 0,
            until_ns: 1,
            source: DataSource::Live,
            nodes: vec![],
            edges: vec![edge("a\"<b/x", "a\"<b/y", 1, 1, 0, 0)],
            truncated: false,
        });
        let mut l = Layout::new();
        l.place(s.nodes.values());
        let svg = map_svg(&s, &l, &l.bounds());
        assert!(!svg.contains("a\"<b"), "{svg}");
        assert!(svg.contains("a&quot;&lt;b/x"));
    }

    #[test]
    fn big_maps_drop_labels_not_edges() {
        let mut s = MapState::default();
        let edges: Vec<MapEdge> = (0..1000)
            .map(|i| edge(&format!("ns{}/w{}", i % 7, i), "ns0/db", 80, 1, 0, 0))
            .collect();
        s.set_map(ServiceMap {
            since_ns: 0,
            until_ns: 1,
            source: DataSource::Live,
            nodes: vec![],
            edges,
            truncated: false,
        });
        let mut l = Layout::new();
        l.place(s.nodes.values());
        let svg = map_svg(&s, &l, &l.bounds());
        assert_eq!(count(&svg, r#"<g class="edge "#), 1000);
        assert_eq!(count(&svg, "edge-label"), 0);
    }

    #[test]
    fn policy_graph_has_allow_deny_and_denied() {
        let g = PolicyGraph {
            policies: vec![],
            nodes: vec![MapNode::new("prod", "db")],
            edges: vec![
                PolicyEdge {
                    source: "prod/web".into(),
                    destination: "prod/db".into(),
                    ports: vec!["TCP/5432".into()],
                    deny: false,
                    policies: vec!["prod/db-policy".into()],
                },
                PolicyEdge {
                    source: "cidr:10.0.0.0/8".into(),
                    destination: "prod/db".into(),
                    ports: vec![],
                    deny: true,
                    policies: vec!["prod/db-policy".into()],
                },
            ],
            denied: vec![edge("prod/debug", "prod/db", 5432, 0, 3, 0)],
            errors: vec![],
        };
        let all = policy_nodes(&g);
        assert_eq!(all.len(), 4);
        let mut l = Layout::new();
        l.place(&all);
        let svg = policy_svg(&g, &l, &l.bounds());
        assert_eq!(count(&svg, r#"class="policy-edge rule-allow" "#), 1);
        assert!(svg.contains(r#"data-deny="true""#));
        assert!(svg.contains(r#"data-deny="false""#));
        assert_eq!(count(&svg, r#"class="denied-edge" "#), 1);
        assert_eq!(count(&svg, r#"<g class="node "#), 4);
        assert!(svg.contains(r#"data-id="cidr:10.0.0.0/8" data-kind="world""#));
    }
}
