//! The Leptos app: navigation, access token, time range, and the four views.
use leptos::prelude::*;
use periscope_ui_api::{DataSource, PolicyGraph, PolicyInfo, UiConfig};

use crate::api::{self, ApiError};
use crate::query::{Location, PRESETS, Route, TimeRange};

mod alerts;
mod canvas;
mod flows;
mod map;
mod policies;

/// Where the token is kept between visits.
const TOKEN_KEY: &str = "periscope.token";

/// State shared by the views.
#[derive(Clone, Copy)]
pub struct Ctx {
    /// The access token (`None`: none given).
    pub token: RwSignal<Option<String>>,
    /// `Some(message)`: the token form is shown.
    pub ask_token: RwSignal<Option<String>>,
    /// The relay's UI config (`None` until it answered).
    pub config: RwSignal<Option<UiConfig>>,
    /// The time range of the map and the flows.
    pub range: RwSignal<TimeRange>,
    /// The current view.
    pub route: RwSignal<Route>,
    /// The policies in force, for explaining flows (`None`: not asked yet).
    pub policies: RwSignal<Option<Vec<PolicyInfo>>>,
}

impl Ctx {
    /// The token now, without tracking.
    pub fn token_now(&self) -> Option<String> {
        self.token.get_untracked()
    }

    /// The words for an API error; a 401 brings the token form back.
    pub fn fail(&self, e: &ApiError) -> String {
        if let ApiError::Unauthorized(_) = e {
            let msg = if self.token.get_untracked().is_some() {
                "The relay refused this token (HTTP 401). Enter a valid token."
            } else {
                "The relay wants an access token (HTTP 401)."
            };
            self.ask_token.set(Some(msg.to_string()));
        }
        e.to_string()
    }

    /// Asks for the policies once (for flow explanations); failures leave an empty list.
    pub fn load_policies(&self) {
        if self.policies.get_untracked().is_some() {
            return;
        }
        let ctx = *self;
        self.policies.set(Some(Vec::new()));
        leptos::task::spawn_local(async move {
            let token = ctx.token_now();
            match api::get_json::<PolicyGraph>("policies", token.as_deref()).await {
                Ok(g) => {
                    ctx.policies.try_set(Some(g.policies));
                }
                Err(e) => {
                    // Explanations still work without them (less precisely): not an error line.
                    if let ApiError::Unauthorized(_) = e {
                        ctx.policies.try_set(None);
                        ctx.fail(&e);
                    }
                }
            }
        });
    }
}

/// The shared state.
pub fn use_ctx() -> Ctx {
    use_context::<Ctx>().expect("Ctx is provided by App")
}

fn storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok().flatten()
}

fn current_hash() -> String {
    web_sys::window()
        .and_then(|w| w.location().hash().ok())
        .unwrap_or_default()
}

/// The namespaces the current location hash names for the map (`#/map?namespaces=a,b`).
pub fn hash_namespaces() -> Option<Vec<String>> {
    Location::parse(&current_hash()).namespaces
}

/// Goes to a location hash (`#/flows?…`).
pub fn go(hash: &str) {
    if let Some(w) = web_sys::window() {
        let _ = w.location().set_hash(hash);
    }
}

/// Minutes east of UTC of the browser's time zone.
pub fn tz_offset_min() -> i32 {
    -(js_sys::Date::new_0().get_timezone_offset() as i32)
}

/// A `datetime-local` value (`2024-05-01T12:30`, local time) as RFC 3339 UTC.
fn local_to_rfc3339(v: &str) -> Option<String> {
    if v.is_empty() {
        return None;
    }
    let d = js_sys::Date::new(&wasm_bindgen::JsValue::from_str(v));
    if d.get_time().is_nan() {
        return None;
    }
    Some(String::from(d.to_iso_string()))
}

/// Logs panics to the browser console instead of failing silently.
fn panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        web_sys::console::error_1(&format!("periscope-ui panicked: {info}").into());
    }));
}

/// Mounts the app on the page's body.
pub fn start() {
    panic_hook();
    leptos::mount::mount_to_body(App);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    Map,
    Flows,
    Policies,
    Alerts,
}

/// The whole page.
#[component]
pub fn App() -> impl IntoView {
    let token = storage()
        .and_then(|s| s.get_item(TOKEN_KEY).ok().flatten())
        .filter(|t| !t.is_empty());
    let loc = Location::parse(&current_hash());
    let ctx = Ctx {
        token: RwSignal::new(token),
        ask_token: RwSignal::new(None),
        config: RwSignal::new(None),
        range: RwSignal::new(loc.range.unwrap_or_default()),
        route: RwSignal::new(loc.route),
        policies: RwSignal::new(None),
    };
    provide_context(ctx);
    let handle = window_event_listener(leptos::ev::hashchange, move |_| {
        let loc = Location::parse(&current_hash());
        if let Some(r) = loc.range {
            ctx.range.set(r);
        }
        ctx.route.set(loc.route);
    });
    on_cleanup(move || handle.remove());

    let config_error = RwSignal::new(None::<String>);
    let load_config = move || {
        config_error.set(None);
        leptos::task::spawn_local(async move {
            match api::get_json::<UiConfig>("ui-config", None).await {
                Ok(c) => {
                    if c.auth_required && ctx.token.get_untracked().is_none() {
                        ctx.ask_token
                            .set(Some("This relay wants an access token.".into()));
                    }
                    ctx.config.set(Some(c));
                }
                Err(e) => config_error.set(Some(e.to_string())),
            }
        });
    };
    load_config();

    let view_kind = Memo::new(move |_| match ctx.route.get() {
        Route::Map => View::Map,
        Route::Flows(_) => View::Flows,
        Route::Policies => View::Policies,
        Route::Alerts => View::Alerts,
    });
    let ready = move || {
        ctx.config.with(|c| {
            c.as_ref()
                .is_some_and(|c| !c.auth_required || ctx.token.with(Option::is_some))
        })
    };
    view! {
        <Header view_kind/>
        <main>
            {move || {
                if let Some(e) = config_error.get() {
                    return view! {
                        <div class="page-message">
                            <p class="error">"Cannot load the UI config: " {e}</p>
                            <button on:click=move |_| load_config()>"Retry"</button>
                        </div>
                    }
                        .into_any();
                }
                if ctx.config.with(Option::is_none) {
                    return view! { <p class="page-message">"Connecting to the relay…"</p> }
                        .into_any();
                }
                if !ready() {
                    return view! { <p class="page-message">"An access token is needed."</p> }
                        .into_any();
                }
                match view_kind.get() {
                    View::Map => view! { <map::MapView/> }.into_any(),
                    View::Flows => view! { <flows::FlowsView/> }.into_any(),
                    View::Policies => view! { <policies::PoliciesView/> }.into_any(),
                    View::Alerts => view! { <alerts::AlertsView/> }.into_any(),
                }
            }}
        </main>
        <TokenForm/>
    }
}

#[component]
fn Header(view_kind: Memo<View>) -> impl IntoView {
    let ctx = use_ctx();
    let link = move |id: &'static str, href: &'static str, label: &'static str, v: View| {
        view! {
            <a
                id=id
                href=href
                class:active=move || view_kind.get() == v
            >
                {label}
            </a>
        }
    };
    let cluster = move || {
        ctx.config.with(|c| {
            c.as_ref()
                .map(|c| {
                    let history = match c.history {
                        DataSource::Clickhouse => "ClickHouse history",
                        DataSource::Window => "in-memory history",
                        DataSource::Live => "live only",
                    };
                    format!("{} · {history}", c.cluster)
                })
                .unwrap_or_default()
        })
    };
    let auth = move || {
        ctx.config
            .with(|c| c.as_ref().is_some_and(|c| c.auth_required))
    };
    view! {
        <header class="top">
            <span class="brand">"Periscope"</span>
            <nav>
                {link("nav-map", "#/map", "Map", View::Map)}
                {link("nav-flows", "#/flows", "Flows", View::Flows)}
                {link("nav-policies", "#/policies", "Policies", View::Policies)}
                {link("nav-alerts", "#/alerts", "Alerts", View::Alerts)}
            </nav>
            <span class="cluster">{cluster}</span>
            <Show when=auth>
                <button
                    class="token-button"
                    on:click=move |_| ctx.ask_token.set(Some("Enter an access token.".into()))
                >
                    "Token"
                </button>
            </Show>
        </header>
    }
}

#[component]
fn TokenForm() -> impl IntoView {
    let ctx = use_ctx();
    let value = RwSignal::new(String::new());
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let t = value.get_untracked().trim().to_string();
        if t.is_empty() {
            return;
        }
        if let Some(s) = storage() {
            let _ = s.set_item(TOKEN_KEY, &t);
        }
        ctx.policies.set(None);
        ctx.ask_token.set(None);
        ctx.token.set(Some(t));
        value.set(String::new());
    };
    let forget = move |_| {
        if let Some(s) = storage() {
            let _ = s.remove_item(TOKEN_KEY);
        }
        ctx.token.set(None);
        ctx.ask_token.set(Some(
            "The token was forgotten. Enter an access token.".into(),
        ));
    };
    view! {
        <Show when=move || ctx.ask_token.with(Option::is_some)>
            <div class="overlay">
                <form id="token-form" on:submit=submit>
                    <h2>"Access token"</h2>
                    <p class="message">{move || ctx.ask_token.get().unwrap_or_default()}</p>
                    // Browsers want a user name beside a password field; the token has none.
                    <input
                        type="text"
                        name="username"
                        autocomplete="username"
                        value="periscope"
                        hidden=true
                        readonly=true
                    />
                    <input
                        name="token"
                        type="password"
                        autocomplete="current-password"
                        placeholder="token"
                        prop:value=move || value.get()
                        on:input=move |ev| value.set(event_target_value(&ev))
                    />
                    <div class="buttons">
                        <button type="submit">"Use token"</button>
                        <Show when=move || ctx.token.with(Option::is_some)>
                            <button type="button" on:click=forget>"Forget the stored token"</button>
                            <button type="button" on:click=move |_| ctx.ask_token.set(None)>
                                "Cancel"
                            </button>
                        </Show>
                    </div>
                    <p class="hint">"The token is kept in this browser's local storage."</p>
                </form>
            </div>
        </Show>
    }
}

/// The time range selector shared by the map and the flows.
#[component]
pub fn RangePicker() -> impl IntoView {
    let ctx = use_ctx();
    // The custom range starts as the last hour, in the browser's time zone.
    let local = |ns: i64| crate::format::date_time(ns, tz_offset_min())[..16].replacen(' ', "T", 1);
    let now_ns = (js_sys::Date::now() * 1e6) as i64;
    let from = RwSignal::new(local(now_ns - 3_600_000_000_000));
    let to = RwSignal::new(local(now_ns));
    let custom_open = RwSignal::new(matches!(
        ctx.range.get_untracked(),
        TimeRange::Custom { .. }
    ));
    let error = RwSignal::new(None::<String>);
    let apply_custom = move |_| match (
        local_to_rfc3339(&from.get_untracked()),
        local_to_rfc3339(&to.get_untracked()),
    ) {
        (Some(f), Some(t)) if f < t => {
            error.set(None);
            ctx.range.set(TimeRange::Custom { from: f, to: t });
        }
        (Some(_), Some(_)) => error.set(Some("'from' must be before 'to'".into())),
        _ => error.set(Some("give both 'from' and 'to'".into())),
    };
    let preset = move |d: &'static str| {
        let is = move || {
            ctx.range
                .with(|r| matches!(r, TimeRange::Last(x) if x == d))
        };
        view! {
            <button
                class="range"
                class:active=is
                data-range=d
                on:click=move |_| {
                    custom_open.set(false);
                    ctx.range.set(TimeRange::Last(d.to_string()));
                }
            >
                {d}
            </button>
        }
    };
    view! {
        <div class="range-picker" role="group" aria-label="Time range">
            <button
                class="range live"
                data-range="live"
                class:active=move || ctx.range.with(TimeRange::is_live)
                on:click=move |_| {
                    custom_open.set(false);
                    ctx.range.set(TimeRange::Live);
                }
            >
                "● Live"
            </button>
            {PRESETS.iter().map(|d| preset(d)).collect_view()}
            <button
                class="range"
                data-range="custom"
                class:active=move || {
                    custom_open.get() || ctx.range.with(|r| matches!(r, TimeRange::Custom { .. }))
                }
                on:click=move |_| custom_open.update(|o| *o = !*o)
            >
                "Custom…"
            </button>
            <Show when=move || custom_open.get()>
                <span class="custom-range">
                    <label>
                        "from "
                        <input
                            type="datetime-local"
                            name="range-from"
                            prop:value=move || from.get()
                            on:input=move |ev| from.set(event_target_value(&ev))
                        />
                    </label>
                    <label>
                        "to "
                        <input
                            type="datetime-local"
                            name="range-to"
                            prop:value=move || to.get()
                            on:input=move |ev| to.set(event_target_value(&ev))
                        />
                    </label>
                    <button on:click=apply_custom>"Apply"</button>
                    {move || error.get().map(|e| view! { <span class="error">{e}</span> })}
                </span>
            </Show>
        </div>
    }
}

/// The legend of the map's edge colours and node shapes.
#[component]
pub fn EdgeLegend(#[prop(optional)] policy: bool) -> impl IntoView {
    let items: Vec<(&str, &str)> = if policy {
        vec![
            ("rule-allow", "allowed by a rule"),
            ("rule-deny", "denied by a rule"),
            ("denied", "observed dropped flows"),
        ]
    } else {
        vec![
            ("forwarded", "forwarded"),
            ("dropped", "dropped"),
            ("mixed", "some forwarded, some dropped"),
            ("audit", "audit (would be dropped)"),
        ]
    };
    view! {
        <div class="legend">
            {items
                .into_iter()
                .map(|(c, t)| {
                    view! {
                        <span class="legend-item">
                            <svg width="34" height="10" class=format!("swatch-line {c}")>
                                <line x1="1" y1="5" x2="33" y2="5"></line>
                            </svg>
                            {t}
                        </span>
                    }
                })
                .collect_view()}
            <span class="legend-item">
                <span class="swatch-dot workload"></span>
                "workload (colour of its namespace)"
            </span>
            <span class="legend-item"><span class="swatch-dot world"></span>"world"</span>
            <span class="legend-item"><span class="swatch-dot host"></span>"host"</span>
            <span class="legend-item">
                <span class="swatch-dot remote"></span>
                "remote node"
            </span>
            <span class="legend-item">
                <span class="swatch-dot reserved"></span>
                "reserved identity"
            </span>
            <span class="legend-item">
                <span class="swatch-dot unknown"></span>
                "unknown"
            </span>
        </div>
    }
}
