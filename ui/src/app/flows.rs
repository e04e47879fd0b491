//! The flows table: filters, history and live tail, and a flow's explanation.
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use leptos::prelude::*;
use periscope_ui_api::{DataSource, Flow, FlowQuery, FlowsPage, Lost, explain};
use send_wrapper::SendWrapper;

use super::{RangePicker, go, tz_offset_min, use_ctx};
use crate::api::{self, Stream};
use crate::format;
use crate::query::{
    Route, TimeRange, flow_field, flows_api_query, flows_stream_query, set_flow_field, with_query,
};

/// Rows kept while tailing.
const TAIL_ROWS: usize = 2000;

/// One table row: a flow and a key unique in this view.
#[derive(Clone)]
struct Row {
    key: u64,
    flow: Arc<Flow>,
}

/// The filter inputs: name, label, placeholder.
const INPUTS: &[(&str, &str, &str)] = &[
    ("namespace", "Namespace", "prod,kube-system"),
    ("pod", "Pod", "ns/name prefix"),
    ("label", "Label", "app=db"),
    ("ip", "IP / CIDR", "10.0.0.0/8"),
    ("port", "Port", "53"),
    ("protocol", "Protocol", "tcp"),
    ("drop_reason", "Drop reason", "POLICY_DENIED"),
    ("text", "Text", "anything"),
    ("node", "Node", "node name"),
    ("from", "From (map node)", "ns/workload"),
    ("to", "To (map node)", "ns/workload"),
    ("uuid", "Flow uuids", "uuid,uuid"),
];

const VERDICTS: &[&str] = &[
    "FORWARDED",
    "DROPPED",
    "AUDIT",
    "ERROR",
    "REDIRECTED",
    "TRACED",
    "TRANSLATED",
];

const LIMITS: &[u32] = &[100, 200, 500, 1000, 5000];

/// The flows view.
#[component]
pub fn FlowsView() -> impl IntoView {
    let ctx = use_ctx();
    // The policies explain flows; asked again when a new token is given.
    Effect::new(move |_| {
        ctx.token.track();
        if ctx.policies.with(Option::is_none) {
            ctx.load_policies();
        }
    });
    let filters = Memo::new(move |_| match ctx.route.get() {
        Route::Flows(q) => q,
        _ => FlowQuery::default(),
    });
    let draft = RwSignal::new(filters.get_untracked());
    Effect::new(move |_| draft.set(filters.get()));
    let limit = RwSignal::new(200u32);
    let reload = RwSignal::new(0u64);
    let rows = RwSignal::new(Vec::<Row>::new());
    let info = RwSignal::new(String::new());
    let error = RwSignal::new(None::<String>);
    let loading = RwSignal::new(false);
    let tail = RwSignal::new(false);
    let tail_state = RwSignal::new(String::new());
    let lost = RwSignal::new(0u64);
    let selected = RwSignal::new(None::<Row>);
    let next_key = Rc::new(Cell::new(0u64));
    let generation = Rc::new(Cell::new(0u64));

    // History: the filters and the time range.
    {
        let (next_key, generation) = (next_key.clone(), generation.clone());
        Effect::new(move |_| {
            let f = filters.get();
            let range = ctx.range.get();
            let lim = limit.get();
            let token = ctx.token.get();
            reload.track();
            generation.set(generation.get() + 1);
            let mine = generation.get();
            let generation = generation.clone();
            let next_key = next_key.clone();
            error.set(None);
            loading.set(true);
            let q = flows_api_query(&f, &range, lim);
            leptos::task::spawn_local(async move {
                let r =
                    api::get_json::<FlowsPage>(&with_query("flows", &q), token.as_deref()).await;
                if generation.get() != mine {
                    return;
                }
                loading.try_set(false);
                match r {
                    Ok(page) => {
                        let source = match page.source {
                            DataSource::Clickhouse => "ClickHouse",
                            DataSource::Window => "the relay's in-memory window",
                            DataSource::Live => "live data",
                        };
                        let more = if page.truncated {
                            format!(" (more matched: showing the newest {lim})")
                        } else {
                            String::new()
                        };
                        info.try_set(format!("{} flows from {source}{more}", page.flows.len()));
                        let new: Vec<Row> = page
                            .flows
                            .into_iter()
                            .rev()
                            .map(|f| {
                                next_key.set(next_key.get() + 1);
                                Row {
                                    key: next_key.get(),
                                    flow: Arc::new(f),
                                }
                            })
                            .collect();
                        rows.try_set(new);
                    }
                    Err(e) => {
                        rows.try_set(Vec::new());
                        info.try_set(String::new());
                        error.try_set(Some(ctx.fail(&e)));
                    }
                }
            });
        });
    }

    // Live tail: new flows on top, added in batches.
    let stream: Rc<RefCell<Option<Stream>>> = Rc::new(RefCell::new(None));
    let pending: Rc<RefCell<Vec<Flow>>> = Rc::new(RefCell::new(Vec::new()));
    {
        let (stream, pending, next_key) = (stream.clone(), pending.clone(), next_key.clone());
        Effect::new(move |_| {
            let on = tail.get();
            let f = filters.get();
            let token = ctx.token.get();
            *stream.borrow_mut() = None;
            lost.set(0);
            if !on {
                tail_state.set(String::new());
                return;
            }
            let url = api::stream_url("flows/stream", &flows_stream_query(&f), token.as_deref());
            let (p1, nk) = (pending.clone(), next_key.clone());
            let flush_scheduled = Rc::new(Cell::new(false));
            let on_flow = move |data: String| {
                match serde_json::from_str::<Flow>(&data) {
                    Ok(f) => p1.borrow_mut().push(f),
                    Err(e) => {
                        error.set(Some(format!("unexpected flow event: {e}")));
                        return;
                    }
                }
                if flush_scheduled.replace(true) {
                    return;
                }
                let (p, nk, fs) = (p1.clone(), nk.clone(), flush_scheduled.clone());
                set_timeout(
                    move || {
                        fs.set(false);
                        let batch = std::mem::take(&mut *p.borrow_mut());
                        rows.try_update(|rows| {
                            let mut new: Vec<Row> = batch
                                .into_iter()
                                .rev()
                                .map(|f| {
                                    nk.set(nk.get() + 1);
                                    Row {
                                        key: nk.get(),
                                        flow: Arc::new(f),
                                    }
                                })
                                .collect();
                            new.append(rows);
                            new.truncate(TAIL_ROWS);
                            *rows = new;
                        });
                    },
                    std::time::Duration::from_millis(200),
                );
            };
            let on_lost = move |data: String| {
                if let Ok(l) = serde_json::from_str::<Lost>(&data) {
                    lost.update(|n| *n += l.flows);
                }
            };
            let stream2 = stream.clone();
            let f2 = f.clone();
            let token2 = token.clone();
            let on_error = move |closed: bool| {
                if !closed {
                    tail_state.set("reconnecting…".into());
                    return;
                }
                tail_state.set("stopped".into());
                // Learn why from the same question without streaming (a 400 names the bad
                // parameter, a 401 asks for the token).
                let q = flows_api_query(&f2, &TimeRange::Live, 1);
                let token = token2.clone();
                let stream2 = stream2.clone();
                leptos::task::spawn_local(async move {
                    let why = match api::get_text(&with_query("flows", &q), token.as_deref()).await
                    {
                        Err(e) => ctx.fail(&e),
                        Ok(_) => "the relay closed the live tail".into(),
                    };
                    stream2.borrow_mut().take();
                    error.try_set(Some(format!("Live tail: {why}")));
                    tail.try_set(false);
                });
            };
            match Stream::open(
                &url,
                vec![("flow", Box::new(on_flow)), ("lost", Box::new(on_lost))],
                on_error,
            ) {
                Ok(s) => {
                    *stream.borrow_mut() = Some(s);
                    tail_state.set("following".into());
                }
                Err(e) => error.set(Some(e.to_string())),
            }
        });
    }
    {
        let stream = SendWrapper::new(stream);
        let generation = SendWrapper::new(generation);
        on_cleanup(move || {
            stream.borrow_mut().take();
            generation.set(generation.get() + 1);
        });
    }

    let apply = move || {
        let q = draft.get_untracked();
        let hash = Route::Flows(q).hash();
        let same = web_sys::window()
            .and_then(|w| w.location().hash().ok())
            .is_some_and(|h| h == hash);
        if same {
            reload.update(|r| *r += 1);
        } else {
            go(&hash);
        }
    };
    let on_submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        apply();
    };
    let clear = move |_| {
        draft.set(FlowQuery::default());
        apply();
    };

    let text_input = move |name: &'static str, label: &'static str, ph: &'static str| {
        let list = match name {
            "protocol" => Some("protocols"),
            "drop_reason" => Some("drop-reasons"),
            _ => None,
        };
        view! {
            <label class="filter">
                <span>{label}</span>
                <input
                    type="text"
                    name=name
                    placeholder=ph
                    list=list
                    prop:value=move || draft.with(|q| flow_field(q, name).unwrap_or_default())
                    on:input=move |ev| {
                        let v = event_target_value(&ev);
                        draft.update(|q| set_flow_field(q, name, &v));
                    }
                />
            </label>
        }
    };
    let verdict_options = move || {
        let cur = draft.with(|q| q.verdict.clone().unwrap_or_default());
        let mut opts: Vec<String> = VERDICTS.iter().map(|v| v.to_string()).collect();
        if !cur.is_empty() && !opts.contains(&cur) {
            opts.push(cur.clone());
        }
        opts.into_iter()
            .map(|v| {
                let sel = v == cur;
                view! {
                    <option value=v.clone() selected=sel>
                        {v.clone()}
                    </option>
                }
            })
            .collect_view()
    };

    view! {
        <section class="view flows-view">
            <div class="toolbar">
                <RangePicker/>
                <label class="tail">
                    <input
                        type="checkbox"
                        name="tail"
                        prop:checked=move || tail.get()
                        on:change=move |ev| tail.set(event_target_checked(&ev))
                    />
                    "Live tail"
                    <span class="muted">{move || tail_state.get()}</span>
                </label>
                <button title="Ask again" on:click=move |_| reload.update(|r| *r += 1)>
                    "Refresh"
                </button>
                <label class="limit">
                    "Rows "
                    <select
                        name="limit"
                        on:change=move |ev| {
                            if let Ok(l) = event_target_value(&ev).parse() {
                                limit.set(l);
                            }
                        }
                    >
                        {LIMITS
                            .iter()
                            .map(|l| {
                                view! {
                                    <option value=l.to_string() selected=*l == 200>
                                        {l.to_string()}
                                    </option>
                                }
                            })
                            .collect_view()}
                    </select>
                </label>
            </div>
            <form class="filters" on:submit=on_submit>
                {INPUTS[..6]
                    .iter()
                    .map(|&(n, l, p)| text_input(n, l, p))
                    .collect_view()}
                <label class="filter">
                    <span>"Verdict"</span>
                    <select
                        name="verdict"
                        on:change=move |ev| {
                            let v = event_target_value(&ev);
                            draft.update(|q| set_flow_field(q, "verdict", &v));
                        }
                    >
                        <option value="" selected=move || draft.with(|q| q.verdict.is_none())>
                            "any"
                        </option>
                        {verdict_options}
                    </select>
                </label>
                {INPUTS[6..]
                    .iter()
                    .map(|&(n, l, p)| text_input(n, l, p))
                    .collect_view()}
                <div class="filter-buttons">
                    <button id="apply-filters" type="submit">"Apply filters"</button>
                    <button type="button" on:click=clear>"Clear"</button>
                </div>
                <datalist id="protocols">
                    <option value="tcp"></option>
                    <option value="udp"></option>
                    <option value="icmp"></option>
                    <option value="sctp"></option>
                </datalist>
                <datalist id="drop-reasons">
                    <option value="POLICY_DENIED"></option>
                    <option value="POLICY_DENY"></option>
                    <option value="CT_MAP_INSERTION_FAILED"></option>
                    <option value="SERVICE_BACKEND_NOT_FOUND"></option>
                    <option value="STALE_OR_UNROUTABLE_IP"></option>
                </datalist>
            </form>
            <p class="status">
                {move || if loading.get() { "Loading…".to_string() } else { info.get() }}
                {move || {
                    let n = lost.get();
                    (n > 0)
                        .then(|| {
                            view! {
                                <span class="warning">
                                    {format!(" · {n} flows lost (the browser fell behind)")}
                                </span>
                            }
                        })
                }}
            </p>
            {move || error.get().map(|e| view! { <p class="error">{e}</p> })}
            <div class="split">
                <div class="table-wrap">
                    <table class="flows">
                        <thead>
                            <tr>
                                <th>"Time"</th>
                                <th>"Source"</th>
                                <th>"Destination"</th>
                                <th>"Port"</th>
                                <th>"Proto"</th>
                                <th>"L7"</th>
                                <th>"Verdict"</th>
                                <th>"Drop reason"</th>
                                <th>"Dir"</th>
                                <th>"TCP flags"</th>
                                <th>"Node"</th>
                            </tr>
                        </thead>
                        <tbody>
                            <For each=move || rows.get() key=|r| r.key let:row>
                                <FlowRow row selected/>
                            </For>
                        </tbody>
                    </table>
                    <Show when=move || !loading.get() && rows.with(Vec::is_empty) && error.with(Option::is_none)>
                        <p class="muted empty">"No flows match."</p>
                    </Show>
                </div>
                {move || selected.get().map(|r| view! { <FlowDetail row=r selected/> })}
            </div>
        </section>
    }
}

#[component]
fn FlowRow(row: Row, selected: RwSignal<Option<Row>>) -> impl IntoView {
    let f = &row.flow;
    let key = row.key;
    let ns = format::flow_ns(f);
    let off = tz_offset_min();
    let (proto, _, dport) = periscope_ui_api::l4(f);
    let (saddr, daddr) = format::addresses(f);
    let verdict = format::verdict_name(f);
    let l7 = format::l7(f).unwrap_or_default();
    let r2 = row.clone();
    view! {
        <tr
            class="flow"
            class:selected=move || selected.with(|s| s.as_ref().is_some_and(|s| s.key == key))
            data-verdict=verdict
            data-uuid=f.uuid.clone()
            on:click=move |_| selected.set(Some(r2.clone()))
        >
            <td class="time" title=format::date_time(ns, off)>{format::clock(ns, off)}</td>
            <td class="ep">
                <span class="name">{format::endpoint(f.source.as_ref())}</span>
                <span class="addr">{saddr}</span>
            </td>
            <td class="ep">
                <span class="name">{format::endpoint(f.destination.as_ref())}</span>
                <span class="addr">{daddr}</span>
            </td>
            <td class="num">{(dport != 0).then(|| dport.to_string())}</td>
            <td>{proto}</td>
            <td class="l7" title=l7.clone()>{l7.clone()}</td>
            <td>
                <span class=format!("verdict v-{}", verdict.to_ascii_lowercase())>{verdict}</span>
            </td>
            <td class="reason">{format::drop_reason_name(f)}</td>
            <td>{format::direction_name(f)}</td>
            <td class="flags">{format::tcp_flags(f)}</td>
            <td class="node">{f.node_name.clone()}</td>
        </tr>
    }
}

#[component]
fn FlowDetail(row: Row, selected: RwSignal<Option<Row>>) -> impl IntoView {
    let ctx = use_ctx();
    let f = row.flow.clone();
    let f2 = f.clone();
    let explanation = move || {
        let e = ctx
            .policies
            .with(|p| explain(&f2, p.as_deref().unwrap_or_default()));
        view! {
            <p class="explanation-headline">{e.headline}</p>
            <ul class="explanation-details">
                {e.details.into_iter().map(|d| view! { <li>{d}</li> }).collect_view()}
            </ul>
        }
    };
    let allowed = format::policy_names(
        &f.ingress_allowed_by
            .iter()
            .chain(&f.egress_allowed_by)
            .cloned()
            .collect::<Vec<_>>(),
    );
    let denied = format::policy_names(
        &f.ingress_denied_by
            .iter()
            .chain(&f.egress_denied_by)
            .cloned()
            .collect::<Vec<_>>(),
    );
    let off = tz_offset_min();
    let ns = format::flow_ns(&f);
    let (saddr, daddr) = format::addresses(&f);
    let raw = serde_json::to_string_pretty(&*f).unwrap_or_default();
    let ep_facts =
        |label: &'static str, ep: Option<&periscope_proto::flow::Endpoint>, addr: String| {
            let (identity, labels) = ep
                .map(|e| (e.identity.to_string(), e.labels.join(" ")))
                .unwrap_or_default();
            view! {
                <dt>{label}</dt>
                <dd>
                    <div>
                        <strong>{format::endpoint(ep)}</strong>
                    </div>
                    <div class="addr">{addr}</div>
                    <div class="muted">"identity " {identity}</div>
                    <div class="labels">{labels}</div>
                </dd>
            }
        };
    let none = |v: Vec<String>| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    let match_type = format::match_type(&f);
    view! {
        <aside id="flow-detail" class="panel">
            <div class="panel-head">
                <h2>"Flow " <span class=format!("verdict v-{}", format::verdict_name(&f).to_ascii_lowercase())>{format::verdict_name(&f)}</span></h2>
                <button class="close" title="Close" on:click=move |_| selected.set(None)>
                    "×"
                </button>
            </div>
            <div class="explanation">{explanation}</div>
            <dl class="facts">
                <dt>"Allowed by"</dt>
                <dd class="allowed-by">{none(allowed)}</dd>
                <dt>"Denied by"</dt>
                <dd class="denied-by">{none(denied)}</dd>
                <dt>"Match type"</dt>
                <dd class="match-type">
                    {if match_type.is_empty() { "none".to_string() } else { match_type.to_string() }}
                </dd>
                <dt>"Time"</dt>
                <dd>{format::date_time(ns, off)}</dd>
                {ep_facts("Source", f.source.as_ref(), saddr)}
                {ep_facts("Destination", f.destination.as_ref(), daddr)}
                <dt>"Drop reason"</dt>
                <dd>{format::drop_reason_name(&f)}</dd>
                <dt>"Direction"</dt>
                <dd>{format::direction_name(&f)}</dd>
                <dt>"Node"</dt>
                <dd>{f.node_name.clone()}</dd>
                <dt>"Traffic"</dt>
                <dd class="traffic">{format::traffic(&f)}</dd>
                <dt>"UUID"</dt>
                <dd class="uuid">{f.uuid.clone()}</dd>
            </dl>
            <details class="raw">
                <summary>"Raw fields"</summary>
                <pre>{raw}</pre>
            </details>
        </aside>
    }
}
