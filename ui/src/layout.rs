//! Stable placement of map nodes, and the pan/zoom view box.
//!
//! Namespaces are regions (blocks of grid slots, left to right on shelves, in order of first
//! appearance; the nodes of the first map sorted by name); identities outside any namespace
//! (world, host, remote nodes, other reserved identities) share the region "outside
//! namespaces", placed first. Inside a region nodes take grid slots in order of first
//! appearance. A node keeps its slot for the life of the layout, also when it leaves the map for
//! a while: updates never move anything.
use std::collections::HashMap;

use periscope_ui_api::{MapNode, NodeKind};

/// Width of a grid cell (one node and its label).
pub const CELL_W: f64 = 190.0;
/// Height of a grid cell.
pub const CELL_H: f64 = 96.0;
/// Room above a region's grid for its title.
pub const REGION_HEAD: f64 = 40.0;
/// Padding inside a region.
pub const REGION_PAD: f64 = 16.0;
/// Space between regions.
pub const REGION_GAP: f64 = 48.0;
/// Most grid columns a region gets.
pub const MAX_COLS: usize = 10;

/// The region key of a node: its namespace, or empty for everything outside namespaces.
pub fn region_key(n: &MapNode) -> &str {
    match n.kind {
        NodeKind::Workload => &n.namespace,
        _ => "",
    }
}

fn kind_rank(k: NodeKind) -> u8 {
    match k {
        NodeKind::World => 0,
        NodeKind::Host => 1,
        NodeKind::RemoteNode => 2,
        NodeKind::Reserved => 3,
        NodeKind::Workload => 4,
        NodeKind::Unknown => 5,
    }
}

/// One region: a block of grid slots for one namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    /// Namespace, or empty for identities outside namespaces.
    pub key: String,
    /// Left edge.
    pub x: f64,
    /// Top edge.
    pub y: f64,
    /// Grid columns (fixed when the region is made).
    pub cols: usize,
    /// Slots handed out.
    pub used: usize,
    /// Most slots it can hold (`None`: it may grow down, nothing is below it).
    pub capacity: Option<usize>,
}

impl Region {
    /// Width of the region.
    pub fn width(&self) -> f64 {
        region_width(self.cols)
    }

    /// Height of the region with all its slots.
    pub fn height(&self) -> f64 {
        region_height(self.used.div_ceil(self.cols).max(1))
    }

    /// Centre of slot `i`.
    pub fn slot_center(&self, i: usize) -> (f64, f64) {
        let (col, row) = (i % self.cols, i / self.cols);
        (
            self.x + REGION_PAD + (col as f64 + 0.5) * CELL_W,
            self.y + REGION_HEAD + (row as f64 + 0.5) * CELL_H,
        )
    }

    fn full(&self) -> bool {
        self.capacity.is_some_and(|c| self.used >= c)
    }
}

fn region_width(cols: usize) -> f64 {
    cols as f64 * CELL_W + 2.0 * REGION_PAD
}

fn region_height(rows: usize) -> f64 {
    REGION_HEAD + rows as f64 * CELL_H + REGION_PAD
}

fn cols_for(n: usize) -> usize {
    let cols = ((n as f64).sqrt().ceil() as usize).clamp(1, MAX_COLS);
    if n >= 3 { cols.max(2) } else { cols }
}

/// A row of regions.
#[derive(Debug, Clone, PartialEq)]
struct Shelf {
    y: f64,
    /// Right end of its last region.
    x_end: f64,
    /// Regions on it.
    regions: Vec<usize>,
}

/// Shelves are at least this wide (small maps stay in one row).
pub const MIN_SHELF_W: f64 = 1200.0;
/// The aspect (width / height) the first map's shelves aim at.
const ASPECT: f64 = 1.6;

/// Where every node seen so far sits.
///
/// Regions are put on shelves (rows) left to right; a shelf is as wide as the first map needs
/// for a picture of about 16:10. When a new shelf opens, the regions of the shelf above are
/// capped at their height then; a capped region that needs more slots continues in a new
/// region of the same namespace ("continued") instead of growing into the shelf below.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Width / height of the picture the first map aims at.
    aspect: f64,
    regions: Vec<Region>,
    shelves: Vec<Shelf>,
    shelf_w: f64,
    /// Regions of a key, oldest first.
    by_key: HashMap<String, Vec<usize>>,
    slots: HashMap<String, (usize, usize)>,
}

impl Default for Layout {
    fn default() -> Self {
        Layout::with_aspect(ASPECT)
    }
}

impl Layout {
    /// An empty layout for a picture of about 16:10.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty layout whose first map aims at `aspect` (width / height of the window it is
    /// drawn in; narrow windows get narrower shelves).
    pub fn with_aspect(aspect: f64) -> Self {
        Layout {
            aspect: if aspect.is_finite() {
                aspect.clamp(0.3, 4.0)
            } else {
                ASPECT
            },
            regions: Vec::new(),
            shelves: Vec::new(),
            shelf_w: 0.0,
            by_key: HashMap::new(),
            slots: HashMap::new(),
        }
    }

    /// Places the nodes that have no place yet; nodes already placed do not move.
    /// A batch is placed in a deterministic order (region, kind, id), so the same map gives the
    /// same picture in every session.
    pub fn place<'a>(&mut self, nodes: impl IntoIterator<Item = &'a MapNode>) {
        let mut new: Vec<&MapNode> = nodes
            .into_iter()
            .filter(|n| !self.slots.contains_key(&n.id))
            .collect();
        if new.is_empty() {
            return;
        }
        new.sort_by(|a, b| {
            (region_key(a), kind_rank(a.kind), &a.id).cmp(&(
                region_key(b),
                kind_rank(b.kind),
                &b.id,
            ))
        });
        new.dedup_by(|a, b| a.id == b.id);
        let groups: Vec<&[&MapNode]> = new
            .chunk_by(|a, b| region_key(a) == region_key(b))
            .collect();
        if self.shelves.is_empty() {
            // The first map sets the shelf width.
            let area: f64 = groups
                .iter()
                .map(|g| {
                    let cols = cols_for(g.len());
                    (region_width(cols) + REGION_GAP)
                        * (region_height(g.len().div_ceil(cols)) + REGION_GAP)
                })
                .sum();
            let widest = groups
                .iter()
                .map(|g| region_width(cols_for(g.len())))
                .fold(0.0, f64::max);
            let min_w = MIN_SHELF_W * (self.aspect / ASPECT).clamp(0.4, 1.5);
            self.shelf_w = (area * self.aspect).sqrt().max(min_w).max(widest);
            self.shelves.push(Shelf {
                y: 0.0,
                x_end: 0.0,
                regions: Vec::new(),
            });
        }
        for g in groups {
            let key = region_key(g[0]);
            let mut rest = g;
            while !rest.is_empty() {
                let r = match self.open_region(key) {
                    Some(r) => r,
                    None => self.new_region(key, rest.len()),
                };
                let reg = &mut self.regions[r];
                let room = reg
                    .capacity
                    .map_or(rest.len(), |c| c - reg.used)
                    .min(rest.len());
                for n in &rest[..room] {
                    self.slots.insert(n.id.clone(), (r, reg.used));
                    reg.used += 1;
                }
                rest = &rest[room..];
            }
        }
    }

    /// The newest region of `key` with room left.
    fn open_region(&self, key: &str) -> Option<usize> {
        let &r = self.by_key.get(key)?.last()?;
        (!self.regions[r].full()).then_some(r)
    }

    /// A region for `n` new nodes of `key`, on the open shelf or a new one.
    fn new_region(&mut self, key: &str, n: usize) -> usize {
        let cols = cols_for(n);
        let w = region_width(cols);
        let last = self.shelves.len() - 1;
        let shelf = &self.shelves[last];
        let x = if shelf.regions.is_empty() {
            0.0
        } else {
            shelf.x_end + REGION_GAP
        };
        let (shelf_i, x) = if shelf.regions.is_empty() || x + w <= self.shelf_w {
            (last, x)
        } else {
            // Close the shelf: its regions keep the height they have now.
            let bottom = shelf
                .regions
                .iter()
                .map(|&r| self.regions[r].y + self.regions[r].height())
                .fold(shelf.y, f64::max);
            for &r in &self.shelves[last].regions {
                let reg = &mut self.regions[r];
                let rows = ((bottom - reg.y - REGION_HEAD - REGION_PAD) / CELL_H).floor() as usize;
                let rows = rows.max(reg.used.div_ceil(reg.cols)).max(1);
                reg.capacity = Some(rows * reg.cols);
            }
            self.shelves.push(Shelf {
                y: bottom + REGION_GAP,
                x_end: 0.0,
                regions: Vec::new(),
            });
            (last + 1, 0.0)
        };
        let r = self.regions.len();
        self.regions.push(Region {
            key: key.to_string(),
            x,
            y: self.shelves[shelf_i].y,
            cols,
            used: 0,
            capacity: None,
        });
        let shelf = &mut self.shelves[shelf_i];
        shelf.regions.push(r);
        shelf.x_end = x + w;
        self.by_key.entry(key.to_string()).or_default().push(r);
        r
    }

    /// Centre of a placed node.
    pub fn position(&self, id: &str) -> Option<(f64, f64)> {
        let &(r, slot) = self.slots.get(id)?;
        Some(self.regions[r].slot_center(slot))
    }

    /// The regions, in order of creation.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Number of nodes placed.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether nothing is placed.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The box around every region.
    pub fn bounds(&self) -> ViewBox {
        let w = self
            .regions
            .iter()
            .map(|r| r.x + r.width())
            .fold(CELL_W, f64::max);
        let h = self
            .regions
            .iter()
            .map(|r| r.y + r.height())
            .fold(CELL_H, f64::max);
        ViewBox {
            x: 0.0,
            y: 0.0,
            w,
            h,
        }
    }
}

/// An SVG `viewBox`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewBox {
    /// Left.
    pub x: f64,
    /// Top.
    pub y: f64,
    /// Width.
    pub w: f64,
    /// Height.
    pub h: f64,
}

impl ViewBox {
    /// The `viewBox` attribute value.
    pub fn attr(&self) -> String {
        format!("{:.1} {:.1} {:.1} {:.1}", self.x, self.y, self.w, self.h)
    }

    /// This box with `margin` around it, widened or heightened to the aspect of a
    /// `cw`×`ch` pixel element (so that `preserveAspectRatio="xMidYMid meet"` fills it), and
    /// never drawn larger than one pixel per unit (a small map is not blown up).
    pub fn fit(&self, margin: f64, cw: f64, ch: f64) -> ViewBox {
        let mut b = ViewBox {
            x: self.x - margin,
            y: self.y - margin,
            w: self.w + 2.0 * margin,
            h: self.h + 2.0 * margin,
        };
        if cw > 0.0 && ch > 0.0 {
            if b.w < cw && b.h < ch {
                b.x -= (cw - b.w) / 2.0;
                b.y -= (ch - b.h) / 2.0;
                b.w = cw;
                b.h = ch;
            }
            let want = cw / ch;
            if b.w / b.h < want {
                let w = b.h * want;
                b.x -= (w - b.w) / 2.0;
                b.w = w;
            } else {
                let h = b.w / want;
                b.y -= (h - b.h) / 2.0;
                b.h = h;
            }
        }
        b
    }

    /// Scale (pixels per unit) and offsets of the box drawn with `xMidYMid meet` in a
    /// `cw`×`ch` pixel element.
    fn meet(&self, cw: f64, ch: f64) -> (f64, f64, f64) {
        let s = (cw / self.w).min(ch / self.h);
        (s, (cw - self.w * s) / 2.0, (ch - self.h * s) / 2.0)
    }

    /// The drawing coordinates under pixel (`px`, `py`) of a `cw`×`ch` element.
    pub fn to_world(&self, px: f64, py: f64, cw: f64, ch: f64) -> (f64, f64) {
        let (s, ox, oy) = self.meet(cw, ch);
        (self.x + (px - ox) / s, self.y + (py - oy) / s)
    }

    /// Zooms by `factor` (> 1 zooms in) keeping the point under pixel (`px`, `py`) in place.
    /// The zoom stays between showing 20 units and 200,000 units across.
    pub fn zoom_at(&self, factor: f64, px: f64, py: f64, cw: f64, ch: f64) -> ViewBox {
        let (wx, wy) = self.to_world(px, py, cw, ch);
        let f = factor.clamp(self.w / 200_000.0, self.w / 20.0);
        let (w, h) = (self.w / f, self.h / f);
        ViewBox {
            x: wx - (wx - self.x) / f,
            y: wy - (wy - self.y) / f,
            w,
            h,
        }
    }

    /// Moves the drawing by (`dx`, `dy`) pixels of a `cw`×`ch` element.
    pub fn pan(&self, dx: f64, dy: f64, cw: f64, ch: f64) -> ViewBox {
        let (s, _, _) = self.meet(cw, ch);
        ViewBox {
            x: self.x - dx / s,
            y: self.y - dy / s,
            ..*self
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn nodes(ids: &[(&str, &str)]) -> Vec<MapNode> {
        ids.iter().map(|(ns, n)| MapNode::new(ns, n)).collect()
    }

    #[test]
    fn namespaces_are_regions_and_outside_comes_first() {
        let mut l = Layout::new();
        let n = nodes(&[
            ("prod", "web"),
            ("", "reserved:world"),
            ("prod", "db"),
            ("dev", "api"),
            ("", "reserved:host"),
        ]);
        l.place(&n);
        let keys: Vec<&str> = l.regions().iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["", "dev", "prod"]);
        // A small map is one row.
        assert!(l.regions().iter().all(|r| r.y == 0.0));
        let world = l.position("reserved:world").unwrap();
        let host = l.position("reserved:host").unwrap();
        let api = l.position("dev/api").unwrap();
        let db = l.position("prod/db").unwrap();
        let web = l.position("prod/web").unwrap();
        assert!(
            world.0 < api.0 && api.0 < db.0.min(web.0),
            "{world:?} {api:?} {db:?}"
        );
        // world before host in the outside region; db before web (by id) in prod.
        assert!(world.0 < host.0 || world.1 < host.1);
        assert!(db.0 < web.0 || db.1 < web.1);
        assert_eq!(l.len(), 5);
    }

    #[test]
    fn positions_never_move_when_nodes_come_and_go() {
        let mut l = Layout::new();
        let first = nodes(&[
            ("prod", "a"),
            ("prod", "b"),
            ("prod", "c"),
            ("", "reserved:world"),
        ]);
        l.place(&first);
        let before: Vec<_> = first.iter().map(|n| l.position(&n.id).unwrap()).collect();
        // Later: some leave (they are simply not drawn), new ones arrive, a new namespace too.
        let later = nodes(&[
            ("prod", "0-first-by-name"),
            ("prod", "c"),
            ("staging", "x"),
            ("", "reserved:host"),
        ]);
        l.place(&later);
        l.place(&first);
        let after: Vec<_> = first.iter().map(|n| l.position(&n.id).unwrap()).collect();
        assert_eq!(before, after);
        // New nodes get fresh slots, all different.
        let mut all: Vec<_> = first
            .iter()
            .chain(&later)
            .map(|n| {
                let (x, y) = l.position(&n.id).unwrap();
                ((x * 10.0) as i64, (y * 10.0) as i64)
            })
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 7);
        // The new namespace is to the right of everything before it.
        let staging = l.position("staging/x").unwrap();
        assert!(after.iter().all(|p| p.0 < staging.0));
    }

    #[test]
    fn same_map_same_picture() {
        let n = nodes(&[("b", "1"), ("a", "2"), ("a", "1"), ("", "reserved:world")]);
        let mut rev = n.clone();
        rev.reverse();
        let (mut l1, mut l2) = (Layout::new(), Layout::new());
        l1.place(&n);
        l2.place(&rev);
        for x in &n {
            assert_eq!(l1.position(&x.id), l2.position(&x.id));
        }
    }

    #[test]
    fn narrow_windows_get_narrow_shelves() {
        let n: Vec<MapNode> = (0..40)
            .map(|i| MapNode::new(&format!("ns-{}", i % 8), &format!("w{i}")))
            .collect();
        let (mut wide, mut narrow) = (Layout::with_aspect(2.0), Layout::with_aspect(0.5));
        wide.place(&n);
        narrow.place(&n);
        let (w, nb) = (wide.bounds(), narrow.bounds());
        assert!(w.w / w.h > nb.w / nb.h, "{w:?} {nb:?}");
        assert!(nb.w / nb.h < 1.2, "{nb:?}");
    }

    #[test]
    fn big_namespaces_get_a_grid() {
        let ids: Vec<String> = (0..100).map(|i| format!("w{i:03}")).collect();
        let n: Vec<MapNode> = ids.iter().map(|i| MapNode::new("prod", i)).collect();
        let mut l = Layout::new();
        l.place(&n);
        assert_eq!(l.regions()[0].cols, 10);
        let b = l.bounds();
        assert!(b.w < 2100.0 && b.h < 1100.0, "{b:?}");
    }

    fn overlap(a: &Region, b: &Region) -> bool {
        a.x < b.x + b.width()
            && b.x < a.x + a.width()
            && a.y < b.y + b.height()
            && b.y < a.y + a.height()
    }

    fn assert_apart(l: &Layout) {
        let rs = l.regions();
        for i in 0..rs.len() {
            for j in i + 1..rs.len() {
                assert!(
                    !overlap(&rs[i], &rs[j]),
                    "{:?} and {:?} overlap",
                    rs[i],
                    rs[j]
                );
            }
        }
    }

    #[test]
    fn many_namespaces_wrap_into_shelves_and_growth_never_overlaps() {
        // The benchmark's shape: 1,000 workloads in 20 namespaces.
        let n: Vec<MapNode> = (0..1000)
            .map(|i| MapNode::new(&format!("ns-{:02}", i % 20), &format!("svc-{i}")))
            .collect();
        let mut l = Layout::new();
        l.place(&n);
        assert_eq!(l.len(), 1000);
        let b = l.bounds();
        assert!(b.w / b.h > 0.8 && b.w / b.h < 3.0, "aspect of {b:?}");
        let shelves: BTreeSet<i64> = l.regions().iter().map(|r| r.y as i64).collect();
        assert!(shelves.len() > 2, "{shelves:?}");
        assert_apart(&l);
        let before: Vec<_> = n.iter().map(|x| l.position(&x.id).unwrap()).collect();
        // A namespace on the first shelf grows a lot: it continues elsewhere.
        let more: Vec<MapNode> = (0..200)
            .map(|i| MapNode::new("ns-00", &format!("late-{i}")))
            .collect();
        l.place(&more);
        assert_apart(&l);
        let after: Vec<_> = n.iter().map(|x| l.position(&x.id).unwrap()).collect();
        assert_eq!(before, after);
        assert!(l.regions().iter().filter(|r| r.key == "ns-00").count() > 1);
        let mut all: Vec<(i64, i64)> = n
            .iter()
            .chain(&more)
            .map(|x| {
                let (a, b) = l.position(&x.id).unwrap();
                (a as i64, b as i64)
            })
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 1200);
    }

    #[test]
    fn zoom_keeps_the_point_under_the_pointer() {
        let v = ViewBox {
            x: 0.0,
            y: 0.0,
            w: 1000.0,
            h: 500.0,
        };
        // A 1000x1000 element: the box is letterboxed vertically (250 px above and below).
        let (wx, wy) = v.to_world(500.0, 250.0, 1000.0, 1000.0);
        assert!((wx - 500.0).abs() < 1e-9 && wy.abs() < 1e-9);
        let z = v.zoom_at(2.0, 200.0, 400.0, 1000.0, 1000.0);
        let before = v.to_world(200.0, 400.0, 1000.0, 1000.0);
        let after = z.to_world(200.0, 400.0, 1000.0, 1000.0);
        assert!((before.0 - after.0).abs() < 1e-6 && (before.1 - after.1).abs() < 1e-6);
        assert!((z.w - 500.0).abs() < 1e-9);
        let p = v.pan(100.0, 0.0, 1000.0, 1000.0);
        assert!((p.x + 100.0).abs() < 1e-9);
        let f = v.fit(10.0, 800.0, 800.0);
        assert!((f.w / f.h - 1.0).abs() < 1e-9 && f.w >= 1020.0);
        // Small drawings are not enlarged: one unit per pixel at most, centred.
        let small = ViewBox {
            x: 0.0,
            y: 0.0,
            w: 200.0,
            h: 100.0,
        };
        let f = small.fit(10.0, 800.0, 600.0);
        assert_eq!((f.w, f.h), (800.0, 600.0));
        assert!((f.x + f.w / 2.0 - 100.0).abs() < 1e-9 && (f.y + f.h / 2.0 - 50.0).abs() < 1e-9);
    }
}
