//! Alerts: firing, pending and resolved, each with a link to its flows.
use std::time::Duration;

use leptos::prelude::*;
use periscope_ui_api::AlertView;

use super::use_ctx;
use crate::api;
use crate::query::uuid_flows_hash;

/// How often the list refreshes itself.
const REFRESH: Duration = Duration::from_secs(15);

const STATES: &[(&str, &str)] = &[
    ("firing", "Firing"),
    ("pending", "Pending"),
    ("resolved", "Resolved"),
];

/// The alerts view.
#[component]
pub fn AlertsView() -> impl IntoView {
    let ctx = use_ctx();
    let alerts = RwSignal::new(None::<Result<Vec<AlertView>, String>>);
    let tick = RwSignal::new(0u64);
    Effect::new(move |_| {
        let token = ctx.token.get();
        tick.track();
        leptos::task::spawn_local(async move {
            let r = api::get_json::<Vec<AlertView>>("alerts", token.as_deref()).await;
            alerts.try_set(Some(r.map_err(|e| ctx.fail(&e))));
        });
    });
    if let Ok(h) = set_interval_with_handle(move || tick.update(|t| *t += 1), REFRESH) {
        on_cleanup(move || h.clear());
    }
    let groups = move || {
        alerts.with(|a| match a {
            None => view! { <p class="muted">"Loading…"</p> }.into_any(),
            Some(Err(e)) => view! { <p class="error">{e.clone()}</p> }.into_any(),
            Some(Ok(list)) if list.is_empty() => {
                view! { <p class="muted empty">"No alerts: nothing pending, firing or recently resolved."</p> }
                    .into_any()
            }
            Some(Ok(list)) => {
                let known: Vec<&str> = STATES.iter().map(|(s, _)| *s).collect();
                let other: Vec<AlertView> = list
                    .iter()
                    .filter(|a| !known.contains(&a.state.as_str()))
                    .cloned()
                    .collect();
                let mut sections: Vec<(String, Vec<AlertView>)> = STATES
                    .iter()
                    .map(|(s, title)| {
                        (
                            title.to_string(),
                            list.iter().filter(|a| a.state == *s).cloned().collect(),
                        )
                    })
                    .collect();
                sections.push(("Other".into(), other));
                sections
                    .into_iter()
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(title, v)| {
                        view! {
                            <h2 class="alert-group">{title} " " <span class="muted">{v.len()}</span></h2>
                            <ul class="alerts">
                                {v.into_iter().map(|a| view! { <AlertItem a/> }).collect_view()}
                            </ul>
                        }
                    })
                    .collect_view()
                    .into_any()
            }
        })
    };
    view! {
        <section class="view alerts-view">
            <div class="toolbar">
                <button on:click=move |_| tick.update(|t| *t += 1)>"Refresh"</button>
                <span class="muted">"refreshes every 15 s"</span>
            </div>
            {groups}
        </section>
    }
}

#[component]
fn AlertItem(a: AlertView) -> impl IntoView {
    let summary = a.annotations.get("summary").cloned();
    let description = a.annotations.get("description").cloned();
    let labels = a
        .labels
        .iter()
        .map(|(k, v)| view! { <span class="label-chip">{format!("{k}={v}")}</span> })
        .collect_view();
    let times = {
        let mut t = vec![format!("active since {}", a.active_at)];
        if let Some(s) = &a.starts_at {
            t.push(format!("firing since {s}"));
        }
        if let Some(e) = &a.ends_at {
            t.push(format!("resolved at {e}"));
        }
        t.join(" · ")
    };
    let flows = if a.sample_flow_uuids.is_empty() {
        view! { <span class="muted">"no sample flows"</span> }.into_any()
    } else {
        let n = a.sample_flow_uuids.len();
        view! {
            <a class="alert-flows" href=uuid_flows_hash(&a.sample_flow_uuids)>
                {format!("Show its {n} sample flow{}", if n == 1 { "" } else { "s" })}
            </a>
        }
        .into_any()
    };
    view! {
        <li
            class=format!("alert state-{}", a.state)
            data-state=a.state.clone()
            data-rule=a.rule.clone()
            data-fingerprint=a.fingerprint.clone()
        >
            <div class="alert-head">
                <span class=format!("badge state-{}", a.state)>{a.state.clone()}</span>
                <strong>{a.rule.clone()}</strong>
                <span class=format!("severity sev-{}", a.severity)>{a.severity.clone()}</span>
            </div>
            {summary.map(|s| view! { <p class="summary">{s}</p> })}
            {description.map(|d| view! { <p class="description">{d}</p> })}
            <p class="muted">
                {format!(
                    "{} matching flows in {} (threshold {}) · {times}",
                    a.count,
                    a.window,
                    a.threshold,
                )}
            </p>
            <div class="chips">{labels}</div>
            <p>{flows}</p>
        </li>
    }
}
