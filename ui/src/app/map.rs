//! The service map: workloads by namespace, edges coloured by verdict, live or over a range.
use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

use leptos::html::Div;
use leptos::prelude::*;
use periscope_ui_api::{DataSource, EdgeKey, MapDelta, MapEdge, NodeDetail, ServiceMap};
use send_wrapper::SendWrapper;

use super::canvas::{Canvas, closest_data, highlight, mark_map_rendered};
use super::{EdgeLegend, RangePicker, go, use_ctx};
use crate::api::{self, Stream};
use crate::format::{self, edge_counts, kind_name, look_name, namespace_color, port_proto};
use crate::layout::Layout;
use crate::mapstate::{Change, MapState};
use crate::query::{Route, TimeRange, edge_flows_hash, map_query, node_query, with_query};
use crate::svg;

/// What the status line says about the map on screen.
#[derive(Debug, Clone, PartialEq)]
struct Stats {
    nodes: usize,
    edges: usize,
    source: Option<DataSource>,
    truncated: bool,
    until_ns: i64,
}

#[derive(Default)]
struct Model {
    state: MapState,
    layout: Layout,
    canvas: Canvas,
    stream: Option<Stream>,
    /// The drawn edges by key (filled when a delta first patches a drawing).
    edge_els: HashMap<EdgeKey, web_sys::Element>,
    /// What the next animation frame does.
    pending: Pending,
    /// Bumped by every (re)load: answers of older loads are dropped.
    generation: u64,
    /// The namespace selection the layout was made for (another selection starts afresh).
    namespaces: Option<Vec<String>>,
    alive: bool,
}

/// The signals the drawing updates.
#[derive(Clone, Copy)]
struct Sigs {
    el: NodeRef<Div>,
    stats: RwSignal<Option<Stats>>,
    known_ns: RwSignal<BTreeSet<String>>,
    selected: RwSignal<Option<String>>,
    error: RwSignal<Option<String>>,
    loading: RwSignal<bool>,
    retry: RwSignal<u64>,
}

type Shared = Rc<RefCell<Model>>;

fn stats(state: &MapState) -> Stats {
    Stats {
        nodes: state.nodes.len(),
        edges: state.edges.len(),
        source: state.source,
        truncated: state.truncated,
        until_ns: state.until_ns,
    }
}

fn draw(model: &Shared, s: Sigs) {
    let mut m = model.borrow_mut();
    m.pending = Pending::Nothing;
    if !m.alive {
        return;
    }
    let Some(div) = s.el.get_untracked() else {
        return;
    };
    let Model {
        state,
        layout,
        canvas,
        edge_els,
        ..
    } = &mut *m;
    if layout.is_empty() {
        // The first map's layout aims at the window's shape.
        let r = div.get_bounding_client_rect();
        if r.width() > 0.0 && r.height() > 0.0 {
            *layout = Layout::with_aspect(r.width() / r.height());
        }
    }
    layout.place(state.nodes.values());
    let bounds = layout.bounds();
    canvas.draw(&div, |vb| svg::map_svg(state, layout, vb), bounds);
    edge_els.clear();
    highlight(&div, s.selected.get_untracked().as_deref());
    let stats = stats(state);
    let namespaces = state.namespaces();
    let edges = state.edges.len();
    drop(m);
    s.stats.set(Some(stats));
    if !s.known_ns.with_untracked(|k| namespaces.is_subset(k)) {
        s.known_ns.update(|k| k.extend(namespaces));
    }
    mark_map_rendered(edges);
}

/// The drawn edge elements by key (read from the drawing once after it is drawn).
fn edge_elements(div: &web_sys::Element) -> HashMap<EdgeKey, web_sys::Element> {
    use wasm_bindgen::JsCast;
    let mut out = HashMap::new();
    let Ok(list) = div.query_selector_all("g.edge") else {
        return out;
    };
    for i in 0..list.length() {
        let Some(el) = list
            .item(i)
            .and_then(|n| n.dyn_into::<web_sys::Element>().ok())
        else {
            continue;
        };
        let a = |n: &str| el.get_attribute(n).unwrap_or_default();
        let key = EdgeKey {
            source: a("data-source"),
            destination: a("data-destination"),
            port: a("data-port").parse().unwrap_or(0),
            protocol: a("data-protocol"),
        };
        out.insert(key, el);
    }
    out
}

/// Updates the counts of some edges in the drawing, without drawing it again.
fn patch(model: &Shared, s: Sigs, keys: BTreeSet<EdgeKey>) {
    let mut m = model.borrow_mut();
    if !m.alive {
        return;
    }
    let Some(div) = s.el.get_untracked() else {
        return;
    };
    let Model {
        state, edge_els, ..
    } = &mut *m;
    if edge_els.is_empty() {
        *edge_els = edge_elements(&div);
    }
    let labels = svg::draws_labels(state.edges.len());
    for k in &keys {
        let (Some(e), Some(el)) = (state.edges.get(k), edge_els.get(k)) else {
            continue;
        };
        let a = svg::EdgeAttrs::of(e, labels);
        if el.get_attribute("data-look").as_deref() != Some(a.look) {
            let highlighted = el.class_list().contains("hl");
            let _ = el.set_attribute("class", &a.class());
            if highlighted {
                let _ = el.class_list().add_1("hl");
            }
            let _ = el.set_attribute("data-look", a.look);
        }
        let _ = el.set_attribute("data-flows", &a.flows.to_string());
        if let Ok(Some(line)) = el.query_selector(".line") {
            let _ = line.set_attribute("stroke-width", &a.width_attr());
            let _ = line.set_attribute("marker-end", &a.marker_attr());
        }
        if let (Some(label), Ok(Some(t))) = (&a.label, el.query_selector(".edge-label")) {
            t.set_text_content(Some(label));
        }
        if let Ok(Some(t)) = el.query_selector("title") {
            t.set_text_content(Some(&a.title));
        }
    }
    let stats = stats(state);
    let edges = state.edges.len();
    drop(m);
    s.stats.set(Some(stats));
    mark_map_rendered(edges);
}

/// What the next animation frame does to the drawing.
#[derive(Debug, Default)]
enum Pending {
    /// Nothing.
    #[default]
    Nothing,
    /// Update the counts of these edges.
    Patch(BTreeSet<EdgeKey>),
    /// Draw it all again.
    Draw,
}

/// Runs `pending` in the next animation frame (deltas arriving together are drawn once).
fn schedule(model: &Shared, s: Sigs, what: Pending) {
    let mut m = model.borrow_mut();
    let first = matches!(m.pending, Pending::Nothing);
    m.pending = match (std::mem::take(&mut m.pending), what) {
        (Pending::Draw, _) | (_, Pending::Draw) => Pending::Draw,
        (Pending::Patch(mut a), Pending::Patch(b)) => {
            a.extend(b);
            Pending::Patch(a)
        }
        (Pending::Nothing, w) | (w, Pending::Nothing) => w,
    };
    drop(m);
    if !first {
        return;
    }
    let model = model.clone();
    request_animation_frame(move || {
        let what = std::mem::take(&mut model.borrow_mut().pending);
        match what {
            Pending::Nothing => {}
            Pending::Patch(keys) => patch(&model, s, keys),
            Pending::Draw => draw(&model, s),
        }
    });
}

fn load(model: &Shared, s: Sigs, range: TimeRange, ns: Vec<String>, token: Option<String>) {
    let ctx = use_ctx();
    let generation = {
        let mut m = model.borrow_mut();
        m.stream = None;
        m.generation += 1;
        if m.namespaces.as_ref() != Some(&ns) {
            // Another namespace selection is another picture: start the layout afresh.
            if m.namespaces.is_some() {
                m.layout = Layout::new();
                m.canvas.vb = None;
                m.state = MapState::default();
            }
            m.namespaces = Some(ns.clone());
        }
        m.generation
    };
    s.error.set(None);
    s.loading.set(true);
    let q = map_query(&range, &ns);
    if range.is_live() {
        let url = api::stream_url("map/stream", &q, token.as_deref());
        let (m1, m2, m3) = (model.clone(), model.clone(), model.clone());
        let handlers: Vec<api::Handler> = vec![
            (
                "map",
                Box::new(
                    move |data: String| match serde_json::from_str::<ServiceMap>(&data) {
                        Ok(map) => {
                            m1.borrow_mut().state.set_map(map);
                            s.loading.set(false);
                            s.error.set(None);
                            schedule(&m1, s, Pending::Draw);
                        }
                        Err(e) => s.error.set(Some(format!("unexpected map event: {e}"))),
                    },
                ),
            ),
            (
                "delta",
                Box::new(
                    move |data: String| match serde_json::from_str::<MapDelta>(&data) {
                        Ok(d) => {
                            let change = m2.borrow_mut().state.apply(d);
                            let what = match change {
                                Change::Reshaped => Pending::Draw,
                                Change::Counts(keys) => Pending::Patch(keys.into_iter().collect()),
                            };
                            schedule(&m2, s, what);
                        }
                        Err(e) => s.error.set(Some(format!("unexpected delta event: {e}"))),
                    },
                ),
            ),
        ];
        let on_error = move |closed: bool| {
            if !closed {
                s.error.set(Some(
                    "The live stream was interrupted; reconnecting…".into(),
                ));
                return;
            }
            // The browser gave up (an HTTP error): ask the same question without streaming to
            // learn why, then try the stream again a little later.
            let (m3, q, token) = (m3.clone(), q.clone(), token.clone());
            leptos::task::spawn_local(async move {
                if m3.borrow().generation != generation {
                    return;
                }
                let why = match api::get_text(&with_query("map", &q), token.as_deref()).await {
                    Err(e) => ctx.fail(&e),
                    Ok(_) => "The live stream was closed by the relay; retrying in 5 s.".into(),
                };
                if m3.borrow().generation != generation {
                    return;
                }
                s.loading.set(false);
                s.error.set(Some(why));
                m3.borrow_mut().stream = None;
                set_timeout(
                    move || {
                        if m3.borrow().alive
                            && m3.borrow().generation == generation
                            && ctx.ask_token.with_untracked(Option::is_none)
                        {
                            s.retry.update(|r| *r += 1);
                        }
                    },
                    std::time::Duration::from_secs(5),
                );
            });
        };
        match Stream::open(&url, handlers, on_error) {
            Ok(st) => model.borrow_mut().stream = Some(st),
            Err(e) => s.error.set(Some(e.to_string())),
        }
    } else {
        let model = model.clone();
        leptos::task::spawn_local(async move {
            let r = api::get_json::<ServiceMap>(&with_query("map", &q), token.as_deref()).await;
            if !model.borrow().alive || model.borrow().generation != generation {
                return;
            }
            s.loading.set(false);
            match r {
                Ok(map) => {
                    model.borrow_mut().state.set_map(map);
                    draw(&model, s);
                }
                Err(e) => s.error.set(Some(ctx.fail(&e))),
            }
        });
    }
}

/// The map view.
#[component]
pub fn MapView() -> impl IntoView {
    let ctx = use_ctx();
    let model: Shared = Rc::new(RefCell::new(Model {
        alive: true,
        ..Default::default()
    }));
    let s = Sigs {
        el: NodeRef::new(),
        stats: RwSignal::new(None),
        known_ns: RwSignal::new(BTreeSet::new()),
        selected: RwSignal::new(None),
        error: RwSignal::new(None),
        loading: RwSignal::new(true),
        retry: RwSignal::new(0),
    };
    let selected_ns = RwSignal::new(
        super::hash_namespaces()
            .unwrap_or_default()
            .into_iter()
            .collect::<BTreeSet<String>>(),
    );
    {
        let model = model.clone();
        Effect::new(move |_| {
            let range = ctx.range.get();
            let ns: Vec<String> = selected_ns.get().into_iter().collect();
            let token = ctx.token.get();
            s.retry.track();
            load(&model, s, range, ns, token);
        });
    }
    {
        let model = SendWrapper::new(model.clone());
        on_cleanup(move || {
            let mut m = model.borrow_mut();
            m.alive = false;
            m.stream = None;
            m.generation += 1;
        });
    }
    // Highlight the selected node without redrawing.
    Effect::new(move |_| {
        let sel = s.selected.get();
        if let Some(div) = s.el.get_untracked() {
            highlight(&div, sel.as_deref());
        }
    });

    let on_click = {
        let model = model.clone();
        move |ev: leptos::ev::MouseEvent| {
            if !model.borrow_mut().canvas.take_click() {
                return;
            }
            if let Some(n) = closest_data(ev.target(), "g.node") {
                s.selected.set(n.get_attribute("data-id"));
            } else if let Some(e) = closest_data(ev.target(), ".edge") {
                let a = |n: &str| e.get_attribute(n).unwrap_or_default();
                go(&edge_flows_hash(
                    &a("data-source"),
                    &a("data-destination"),
                    a("data-port").parse().unwrap_or(0),
                    &a("data-protocol"),
                ));
            }
        }
    };
    let on_wheel = {
        let model = model.clone();
        move |ev: leptos::ev::WheelEvent| {
            if let Some(div) = s.el.get_untracked() {
                model.borrow_mut().canvas.wheel(&div, &ev);
            }
        }
    };
    let on_down = {
        let model = model.clone();
        move |ev: leptos::ev::PointerEvent| model.borrow_mut().canvas.down(&ev)
    };
    let on_move = {
        let model = model.clone();
        move |ev: leptos::ev::PointerEvent| {
            if let Some(div) = s.el.get_untracked() {
                model.borrow_mut().canvas.moved(&div, &ev);
            }
        }
    };
    let on_up = {
        let model = model.clone();
        move |_| model.borrow_mut().canvas.up()
    };
    let on_leave = {
        let model = model.clone();
        move |_| model.borrow_mut().canvas.up()
    };
    let zoom = {
        let model = model.clone();
        move |f: f64| {
            if let Some(div) = s.el.get_untracked() {
                model.borrow_mut().canvas.zoom(&div, f);
            }
        }
    };
    let zoom2 = zoom.clone();
    let fit = {
        let model = model.clone();
        move |_| {
            if let Some(div) = s.el.get_untracked() {
                let mut m = model.borrow_mut();
                let b = m.layout.bounds();
                m.canvas.fit(&div, b);
            }
        }
    };

    let status = move || {
        let range = ctx.range.with(TimeRange::words);
        match s.stats.get() {
            None => format!("{range} · loading…"),
            Some(st) => {
                let src = match st.source {
                    Some(DataSource::Live) => "live aggregation",
                    Some(DataSource::Clickhouse) => "ClickHouse",
                    Some(DataSource::Window) => "in-memory window",
                    None => "?",
                };
                let upd = if st.until_ns > 0 {
                    format!(
                        " · until {}",
                        format::clock(st.until_ns, super::tz_offset_min())
                    )
                } else {
                    String::new()
                };
                format!(
                    "{range} · {} nodes · {} edges · from {src}{upd}",
                    st.nodes, st.edges
                )
            }
        }
    };
    view! {
        <section class="view map-view">
            <div class="toolbar">
                <RangePicker/>
                <NamespaceSelect selected=selected_ns known=s.known_ns/>
                <div class="zoom" role="group" aria-label="Zoom">
                    <button title="Zoom in" on:click=move |_| zoom(1.4)>"+"</button>
                    <button title="Zoom out" on:click=move |_| zoom2(1.0 / 1.4)>"−"</button>
                    <button title="Fit the map" on:click=fit>"Fit"</button>
                </div>
            </div>
            <p class="status">
                {status}
                {move || {
                    s.stats
                        .with(|st| st.as_ref().is_some_and(|st| st.truncated))
                        .then(|| {
                            view! {
                                <span class="warning">
                                    " · only the busiest edges are shown (limit reached)"
                                </span>
                            }
                        })
                }}
            </p>
            {move || s.error.get().map(|e| view! { <p class="error">{e}</p> })}
            <div class="split">
                <div class="canvas-wrap">
                    <div
                        class="canvas"
                        node_ref=s.el
                        on:click=on_click
                        on:wheel=on_wheel
                        on:pointerdown=on_down
                        on:pointermove=on_move
                        on:pointerup=on_up
                        on:pointerleave=on_leave
                    ></div>
                    <Show when=move || {
                        !s.loading.get() && s.stats.with(|st| st.as_ref().is_some_and(|st| st.edges == 0))
                    }>
                        <p class="canvas-empty">"No flows in this time range."</p>
                    </Show>
                </div>
                <Show when=move || s.selected.with(Option::is_some)>
                    <NodePanel selected=s.selected/>
                </Show>
            </div>
            <EdgeLegend/>
        </section>
    }
}

/// The namespace multi-select: all namespaces (the default) or any subset.
#[component]
fn NamespaceSelect(
    selected: RwSignal<BTreeSet<String>>,
    known: RwSignal<BTreeSet<String>>,
) -> impl IntoView {
    let summary = move || {
        selected.with(|s| match s.len() {
            0 => "All namespaces".to_string(),
            1 => format!("Namespace {}", s.iter().next().unwrap()),
            n => format!("{n} namespaces"),
        })
    };
    let options = move || {
        let mut all = known.get();
        all.extend(selected.get());
        all.into_iter().collect::<Vec<_>>()
    };
    // An open list closes on a click anywhere else, like a select.
    let el = NodeRef::<leptos::html::Details>::new();
    let handle = window_event_listener(leptos::ev::click, move |e| {
        use wasm_bindgen::JsCast;
        let Some(d) = el.get_untracked() else {
            return;
        };
        let inside = e
            .target()
            .and_then(|t| t.dyn_into::<web_sys::Node>().ok())
            .is_some_and(|n| d.contains(Some(&n)));
        if d.open() && !inside {
            d.set_open(false);
        }
    });
    on_cleanup(move || handle.remove());
    view! {
        <details class="ns-select" node_ref=el>
            <summary>{summary}</summary>
            <div class="ns-options">
                <label>
                    <input
                        type="checkbox"
                        name="ns-all"
                        prop:checked=move || selected.with(BTreeSet::is_empty)
                        on:change=move |_| selected.set(BTreeSet::new())
                    />
                    "All namespaces"
                </label>
                <For each=options key=|n| n.clone() let:ns>
                    {
                        let ns2 = ns.clone();
                        let ns3 = ns.clone();
                        view! {
                            <label>
                                <input
                                    type="checkbox"
                                    name="ns"
                                    value=ns.clone()
                                    prop:checked=move || selected.with(|s| s.contains(&ns2))
                                    on:change=move |_| {
                                        selected
                                            .update(|s| {
                                                if !s.remove(&ns3) {
                                                    s.insert(ns3.clone());
                                                }
                                            })
                                    }
                                />
                                <span
                                    class="chip"
                                    style=format!("background:{}", namespace_color(&ns))
                                ></span>
                                {ns.clone()}
                            </label>
                        }
                    }
                </For>
            </div>
        </details>
    }
}

fn edge_rows(edges: Vec<MapEdge>, inbound: bool) -> impl IntoView {
    if edges.is_empty() {
        return view! { <p class="muted">"none"</p> }.into_any();
    }
    view! {
        <table class="mini">
            <thead>
                <tr>
                    <th>{if inbound { "from" } else { "to" }}</th>
                    <th>"port"</th>
                    <th>"flows"</th>
                </tr>
            </thead>
            <tbody>
                {edges
                    .into_iter()
                    .map(|e| {
                        let peer = if inbound { e.key.source.clone() } else { e.key.destination.clone() };
                        let href = edge_flows_hash(
                            &e.key.source,
                            &e.key.destination,
                            e.key.port,
                            &e.key.protocol,
                        );
                        let look = look_name(e.look());
                        view! {
                            <tr class=format!("look-{look}")>
                                <td>
                                    <a href=href title="the flows of this edge">{peer}</a>
                                </td>
                                <td>{port_proto(&e.key.protocol, e.key.port)}</td>
                                <td title=edge_counts(&e)>
                                    <span class=format!("dot {look}")></span>
                                    {format::count(e.flows())}
                                </td>
                            </tr>
                        }
                    })
                    .collect_view()}
            </tbody>
        </table>
    }
    .into_any()
}

/// The side panel of a clicked node.
#[component]
fn NodePanel(selected: RwSignal<Option<String>>) -> impl IntoView {
    let ctx = use_ctx();
    let detail = RwSignal::new(None::<Result<NodeDetail, String>>);
    let seq = Rc::new(Cell::new(0u64));
    Effect::new(move |_| {
        let Some(id) = selected.get() else { return };
        let range = ctx.range.get();
        let token = ctx.token.get();
        seq.set(seq.get() + 1);
        let mine = seq.get();
        let seq = seq.clone();
        detail.set(None);
        leptos::task::spawn_local(async move {
            let r = api::get_json::<NodeDetail>(
                &with_query("map/node", &node_query(&id, &range)),
                token.as_deref(),
            )
            .await;
            if seq.get() == mine {
                detail.try_set(Some(r.map_err(|e| ctx.fail(&e))));
            }
        });
    });
    let body = move || {
        let id = selected.get().unwrap_or_default();
        match detail.get() {
            None => view! { <p class="muted">"Loading " {id} "…"</p> }.into_any(),
            Some(Err(e)) => view! { <p class="error">{e}</p> }.into_any(),
            Some(Ok(d)) => {
                let from = Route::Flows(periscope_ui_api::FlowQuery {
                    from: Some(d.node.id.clone()),
                    ..Default::default()
                })
                .hash();
                let to = Route::Flows(periscope_ui_api::FlowQuery {
                    to: Some(d.node.id.clone()),
                    ..Default::default()
                })
                .hash();
                view! {
                    <dl class="facts">
                        <dt>"kind"</dt>
                        <dd>{kind_name(d.node.kind)}</dd>
                        <Show when={
                            let ns = d.node.namespace.clone();
                            move || !ns.is_empty()
                        }>
                            <dt>"namespace"</dt>
                            <dd>{d.node.namespace.clone()}</dd>
                        </Show>
                        <dt>"identities"</dt>
                        <dd>
                            {if d.identities.is_empty() {
                                "none seen".to_string()
                            } else {
                                d.identities
                                    .iter()
                                    .map(u32::to_string)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            }}
                        </dd>
                    </dl>
                    <p class="links">
                        <a href=from>"Flows from it"</a>
                        " · "
                        <a href=to>"Flows to it"</a>
                    </p>
                    <h3>"Labels"</h3>
                    <div class="chips">
                        {d
                            .labels
                            .iter()
                            .map(|l| view! { <span class="label-chip">{l.clone()}</span> })
                            .collect_view()}
                    </div>
                    <h3>"Pods " <span class="muted">{d.pods.len()}</span></h3>
                    <ul class="plain">
                        {d.pods.iter().map(|p| view! { <li>{p.clone()}</li> }).collect_view()}
                    </ul>
                    <h3>"Inbound"</h3>
                    {edge_rows(d.inbound.clone(), true)}
                    <h3>"Outbound"</h3>
                    {edge_rows(d.outbound.clone(), false)}
                    <h3>"Policies selecting it"</h3>
                    {if d.policies.is_empty() {
                        view! { <p class="muted">"none"</p> }.into_any()
                    } else {
                        view! {
                            <ul class="plain">
                                {d
                                    .policies
                                    .iter()
                                    .map(|p| {
                                        let name = if p.namespace.is_empty() {
                                            p.name.clone()
                                        } else {
                                            format!("{}/{}", p.namespace, p.name)
                                        };
                                        view! {
                                            <li>
                                                <a href="#/policies">{name}</a>
                                                " "
                                                <span class="muted">{p.kind.clone()}</span>
                                            </li>
                                        }
                                    })
                                    .collect_view()}
                            </ul>
                        }
                            .into_any()
                    }}
                }
                .into_any()
            }
        }
    };
    view! {
        <aside id="node-detail" class="panel">
            <div class="panel-head">
                <h2>{move || selected.get().unwrap_or_default()}</h2>
                <button class="close" title="Close" on:click=move |_| selected.set(None)>
                    "×"
                </button>
            </div>
            {body}
        </aside>
    }
}
