//! The policies in force: who may talk to whom, with the observed denied flows on top.
use std::cell::RefCell;
use std::rc::Rc;

use leptos::html::Div;
use leptos::prelude::*;
use periscope_ui_api::{FlowQuery, PolicyGraph, PolicyInfo};
use send_wrapper::SendWrapper;

use super::canvas::{Canvas, closest_data, highlight};
use super::{EdgeLegend, go, use_ctx};
use crate::api;
use crate::format::{policy_title, rule_words};
use crate::layout::Layout;
use crate::query::Route;
use crate::svg::{policy_nodes, policy_svg};

#[derive(Default)]
struct Model {
    graph: Option<PolicyGraph>,
    layout: Layout,
    canvas: Canvas,
    alive: bool,
}

/// Whether a policy concerns a node: it selects it or names it as a peer.
fn concerns(p: &PolicyInfo, id: &str) -> bool {
    p.selects.iter().any(|s| s == id) || p.rules.iter().any(|r| r.peers.iter().any(|x| x == id))
}

/// The policies view.
#[component]
pub fn PoliciesView() -> impl IntoView {
    let ctx = use_ctx();
    let model = Rc::new(RefCell::new(Model {
        alive: true,
        ..Default::default()
    }));
    let el: NodeRef<Div> = NodeRef::new();
    let graph = RwSignal::new(None::<Result<PolicyGraph, String>>);
    let focus = RwSignal::new(None::<String>);
    let reload = RwSignal::new(0u64);
    {
        let model = model.clone();
        Effect::new(move |_| {
            let token = ctx.token.get();
            reload.track();
            let model = model.clone();
            leptos::task::spawn_local(async move {
                let r = api::get_json::<PolicyGraph>("policies", token.as_deref()).await;
                if !model.borrow().alive {
                    return;
                }
                match r {
                    Ok(g) => {
                        ctx.policies.set(Some(g.policies.clone()));
                        {
                            let mut m = model.borrow_mut();
                            let Model { layout, canvas, .. } = &mut *m;
                            let div = el.get_untracked();
                            if let Some(div) = &div
                                && layout.is_empty()
                            {
                                let r = div.get_bounding_client_rect();
                                if r.width() > 0.0 && r.height() > 0.0 {
                                    *layout = Layout::with_aspect(r.width() / r.height());
                                }
                            }
                            layout.place(&policy_nodes(&g));
                            if let Some(div) = div {
                                canvas.draw(&div, |vb| policy_svg(&g, layout, vb), layout.bounds());
                            }
                            m.graph = Some(g.clone());
                        }
                        graph.set(Some(Ok(g)));
                    }
                    Err(e) => graph.set(Some(Err(ctx.fail(&e)))),
                }
            });
        });
    }
    {
        let model = SendWrapper::new(model.clone());
        on_cleanup(move || model.borrow_mut().alive = false);
    }
    // The focused node and its rules stand out in the drawing.
    Effect::new(move |_| {
        let f = focus.get();
        graph.track();
        if let Some(div) = el.get_untracked() {
            highlight(&div, f.as_deref());
        }
    });
    let on_click = {
        let model = model.clone();
        move |ev: leptos::ev::MouseEvent| {
            if !model.borrow_mut().canvas.take_click() {
                return;
            }
            if let Some(n) = closest_data(ev.target(), "g.node") {
                focus.set(n.get_attribute("data-id"));
            } else if let Some(e) = closest_data(ev.target(), ".denied-edge") {
                let a = |n: &str| e.get_attribute(n).filter(|v| !v.is_empty() && v != "0");
                go(&Route::Flows(FlowQuery {
                    from: a("data-source"),
                    to: a("data-destination"),
                    port: a("data-port"),
                    protocol: a("data-protocol").map(|p| p.to_ascii_lowercase()),
                    verdict: Some("DROPPED".into()),
                    ..Default::default()
                })
                .hash());
            }
        }
    };
    let on_wheel = {
        let model = model.clone();
        move |ev: leptos::ev::WheelEvent| {
            if let Some(div) = el.get_untracked() {
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
            if let Some(div) = el.get_untracked() {
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
    let fit = {
        let model = model.clone();
        move |_| {
            if let Some(div) = el.get_untracked() {
                let mut m = model.borrow_mut();
                let b = m.layout.bounds();
                m.canvas.fit(&div, b);
            }
        }
    };

    let summary = move || {
        graph.with(|g| match g {
            None => "Loading…".to_string(),
            Some(Err(_)) => String::new(),
            Some(Ok(g)) => format!(
                "{} policies in force · {} allowed or denied pairs · {} observed denied edges",
                g.policies.len(),
                g.edges.len(),
                g.denied.len()
            ),
        })
    };
    let list = move || {
        let f = focus.get();
        graph.with(|g| {
            let Some(Ok(g)) = g else {
                return Vec::new();
            };
            g.policies
                .iter()
                .filter(|p| f.as_deref().is_none_or(|id| concerns(p, id)))
                .cloned()
                .collect::<Vec<_>>()
        })
    };
    view! {
        <section class="view policies-view">
            <div class="toolbar">
                <button on:click=move |_| reload.update(|r| *r += 1)>"Refresh"</button>
                <div class="zoom">
                    <button title="Fit the graph" on:click=fit>"Fit"</button>
                </div>
            </div>
            <p class="status">{summary}</p>
            {move || {
                graph
                    .with(|g| match g {
                        Some(Err(e)) => Some(e.clone()),
                        _ => None,
                    })
                    .map(|e| view! { <p class="error">{e}</p> })
            }}
            {move || {
                graph
                    .with(|g| match g {
                        Some(Ok(g)) if !g.errors.is_empty() => Some(g.errors.clone()),
                        _ => None,
                    })
                    .map(|errs| {
                        view! {
                            <div class="warning-box">
                                <p>"Some agents could not be asked:"</p>
                                <ul>{errs.into_iter().map(|e| view! { <li>{e}</li> }).collect_view()}</ul>
                            </div>
                        }
                    })
            }}
            <div class="split">
                <div class="canvas-wrap">
                    <div
                        class="canvas"
                        node_ref=el
                        on:click=on_click
                        on:wheel=on_wheel
                        on:pointerdown=on_down
                        on:pointermove=on_move
                        on:pointerup=on_up
                        on:pointerleave=on_leave
                    ></div>
                    <Show when=move || graph.with(|g| matches!(g, Some(Ok(g)) if g.edges.is_empty() && g.denied.is_empty()))>
                        <p class="canvas-empty">"No policy rules between endpoints, and no denied flows."</p>
                    </Show>
                </div>
                <aside class="panel policy-list">
                    <div class="panel-head">
                        <h2>"Policies"</h2>
                        {move || {
                            focus
                                .get()
                                .map(|id| {
                                    view! {
                                        <span class="focus">
                                            "concerning " <strong>{id}</strong> " "
                                            <button class="link" on:click=move |_| focus.set(None)>
                                                "show all"
                                            </button>
                                        </span>
                                    }
                                })
                        }}
                    </div>
                    <ul class="policies">
                        <For
                            each=list
                            key=|p| (p.policy.namespace.clone(), p.policy.name.clone(), p.policy.kind.clone())
                            let:p
                        >
                            <PolicyItem p/>
                        </For>
                    </ul>
                </aside>
            </div>
            <EdgeLegend policy=true/>
        </section>
    }
}

#[component]
fn PolicyItem(p: PolicyInfo) -> impl IntoView {
    let deny = match (p.ingress_default_deny, p.egress_default_deny) {
        (true, true) => "default deny: ingress and egress",
        (true, false) => "default deny: ingress",
        (false, true) => "default deny: egress",
        (false, false) => "no default deny",
    };
    let selects = if p.selects.is_empty() {
        "no endpoint seen".to_string()
    } else {
        p.selects.join(", ")
    };
    view! {
        <li class="policy" data-name=p.policy.name.clone() data-namespace=p.policy.namespace.clone()>
            <div class="policy-head">
                <strong>{policy_title(&p)}</strong>
                " "
                <span class="kind">{p.policy.kind.clone()}</span>
            </div>
            <div class="muted">"selector " <code>{p.selector.clone()}</code></div>
            <div class="muted">"selects " {selects}</div>
            <div class="muted">{deny}</div>
            <ul class="rules">
                {p
                    .rules
                    .iter()
                    .map(|r| {
                        view! {
                            <li class=if r.deny { "rule deny" } else { "rule allow" }>
                                {rule_words(r)}
                            </li>
                        }
                    })
                    .collect_view()}
            </ul>
            <div class="muted nodes">"in force on " {p.nodes.join(", ")}</div>
        </li>
    }
}
