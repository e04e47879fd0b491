//! A pannable, zoomable SVG drawing inside an element: the map and the policy graph.
//!
//! The SVG is set as text (`innerHTML`) in one go; panning and zooming only change its
//! `viewBox` attribute.
use web_sys::{Element, PointerEvent, WheelEvent};

use crate::layout::ViewBox;

/// Pan and zoom state of one drawing.
#[derive(Debug, Default)]
pub struct Canvas {
    /// The view box; `None`: fit the drawing at the next draw.
    pub vb: Option<ViewBox>,
    drag: Option<(f64, f64)>,
    dragged: f64,
    /// A drag just ended: the click that follows is not a click on what is under the pointer.
    swallow_click: bool,
}

fn size(el: &Element) -> (f64, f64) {
    let r = el.get_bounding_client_rect();
    (r.width().max(1.0), r.height().max(1.0))
}

fn local(el: &Element, x: i32, y: i32) -> (f64, f64) {
    let r = el.get_bounding_client_rect();
    (x as f64 - r.left(), y as f64 - r.top())
}

impl Canvas {
    /// Draws `svg` into `el`, fitting `bounds` when there is no view box yet.
    pub fn draw(&mut self, el: &Element, svg_of: impl FnOnce(&ViewBox) -> String, bounds: ViewBox) {
        let (cw, ch) = size(el);
        let vb = *self.vb.get_or_insert_with(|| bounds.fit(24.0, cw, ch));
        el.set_inner_html(&svg_of(&vb));
    }

    fn apply(&self, el: &Element) {
        if let (Some(vb), Some(svg)) = (self.vb, el.first_element_child()) {
            let _ = svg.set_attribute("viewBox", &vb.attr());
        }
    }

    /// Fits `bounds` into the element.
    pub fn fit(&mut self, el: &Element, bounds: ViewBox) {
        let (cw, ch) = size(el);
        self.vb = Some(bounds.fit(24.0, cw, ch));
        self.apply(el);
    }

    /// Zooms by `factor` around the element's centre.
    pub fn zoom(&mut self, el: &Element, factor: f64) {
        let (cw, ch) = size(el);
        if let Some(vb) = self.vb {
            self.vb = Some(vb.zoom_at(factor, cw / 2.0, ch / 2.0, cw, ch));
            self.apply(el);
        }
    }

    /// Mouse wheel or trackpad: zoom around the pointer.
    pub fn wheel(&mut self, el: &Element, ev: &WheelEvent) {
        ev.prevent_default();
        let (cw, ch) = size(el);
        let (px, py) = local(el, ev.client_x(), ev.client_y());
        let dy = match ev.delta_mode() {
            1 => ev.delta_y() * 16.0,
            2 => ev.delta_y() * ch,
            _ => ev.delta_y(),
        };
        if let Some(vb) = self.vb {
            self.vb = Some(vb.zoom_at((-dy * 0.0015).exp(), px, py, cw, ch));
            self.apply(el);
        }
    }

    /// Pointer pressed: a drag may start.
    pub fn down(&mut self, ev: &PointerEvent) {
        if ev.button() == 0 {
            self.drag = Some((ev.client_x() as f64, ev.client_y() as f64));
            self.dragged = 0.0;
        }
    }

    /// Pointer moved: pans while dragging.
    pub fn moved(&mut self, el: &Element, ev: &PointerEvent) {
        let Some((x0, y0)) = self.drag else { return };
        let (x, y) = (ev.client_x() as f64, ev.client_y() as f64);
        let (cw, ch) = size(el);
        if let Some(vb) = self.vb {
            self.vb = Some(vb.pan(x - x0, y - y0, cw, ch));
            self.apply(el);
        }
        self.dragged += (x - x0).abs() + (y - y0).abs();
        self.drag = Some((x, y));
    }

    /// Pointer released or gone.
    pub fn up(&mut self) {
        if self.drag.take().is_some() && self.dragged > 4.0 {
            self.swallow_click = true;
        }
    }

    /// Whether a click is a real click (not the end of a drag).
    pub fn take_click(&mut self) -> bool {
        !std::mem::take(&mut self.swallow_click)
    }
}

/// The `data-*` value of the closest element matching `selector` around an event target.
pub fn closest_data(
    target: Option<web_sys::EventTarget>,
    selector: &str,
) -> Option<web_sys::Element> {
    use wasm_bindgen::JsCast;
    let el: Element = target?.dyn_into().ok()?;
    el.closest(selector).ok().flatten()
}

/// Marks the map as drawn for tests and benchmarks: `document.body.dataset.mapEdges` and
/// `window.__periscopeMapRenderedAt`, in the animation frame after the drawing.
pub fn mark_map_rendered(edges: usize) {
    leptos::prelude::request_animation_frame(move || {
        let Some(w) = web_sys::window() else { return };
        if let Some(body) = w.document().and_then(|d| d.body()) {
            let _ = body.dataset().set("mapEdges", &edges.to_string());
        }
        let now = w.performance().map(|p| p.now()).unwrap_or(0.0);
        let _ = js_sys::Reflect::set(&w, &"__periscopeMapRenderedAt".into(), &now.into());
    });
}

/// Marks the selected node, its edges and its peers (the rest of the drawing fades).
pub fn highlight(el: &web_sys::Element, id: Option<&str>) {
    use wasm_bindgen::JsCast;
    let each = |css: &str, f: &dyn Fn(&web_sys::Element)| {
        if let Ok(list) = el.query_selector_all(css) {
            for i in 0..list.length() {
                if let Some(e) = list
                    .item(i)
                    .and_then(|n| n.dyn_into::<web_sys::Element>().ok())
                {
                    f(&e);
                }
            }
        }
    };
    each(".selected, .hl", &|e| {
        let _ = e.class_list().remove_2("selected", "hl");
    });
    let Some(svg) = el.first_element_child() else {
        return;
    };
    let Some(id) = id else {
        let _ = svg.class_list().remove_1("focus");
        return;
    };
    let q = css_string(id);
    let Ok(Some(node)) = el.query_selector(&format!("g.node[data-id={q}]")) else {
        let _ = svg.class_list().remove_1("focus");
        return;
    };
    let _ = node.class_list().add_1("selected");
    let _ = svg.class_list().add_1("focus");
    let peers = std::cell::RefCell::new(std::collections::BTreeSet::new());
    each(
        &format!("g[data-source={q}], g[data-destination={q}]"),
        &|e| {
            let _ = e.class_list().add_1("hl");
            for a in ["data-source", "data-destination"] {
                if let Some(p) = e.get_attribute(a) {
                    peers.borrow_mut().insert(p);
                }
            }
        },
    );
    for p in peers.into_inner() {
        if let Ok(Some(n)) = el.query_selector(&format!("g.node[data-id={}]", css_string(&p))) {
            let _ = n.class_list().add_1("hl");
        }
    }
}

/// A CSS attribute-selector string for `s` (`"…"` with `\` and `"` escaped).
pub fn css_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}
