//! Talking to the relay: `fetch` with the bearer token, and server-sent event streams.
use std::fmt;

use serde::de::DeserializeOwned;
use wasm_bindgen::{JsCast, JsValue, closure::Closure};
use wasm_bindgen_futures::JsFuture;
use web_sys::{EventSource, Headers, MessageEvent, Request, RequestInit, Response};

use crate::query::{build, join, with_query};

/// Routes are relative to the page, so the UI also works behind a path prefix.
pub const API: &str = "api/v1";

/// Why an API call failed.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// HTTP 401: the token is missing or wrong (the relay's text).
    Unauthorized(String),
    /// HTTP 400: a parameter is wrong (the relay's text names it).
    BadRequest(String),
    /// Another HTTP status, with the body.
    Http(u16, String),
    /// The request did not get an answer.
    Network(String),
    /// The answer was not what the API promises.
    Decode(String),
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Unauthorized(t) => write!(f, "the relay refused the token (HTTP 401) {t}"),
            ApiError::BadRequest(t) => write!(f, "{}", t.trim()),
            ApiError::Http(s, t) => write!(f, "the relay answered HTTP {s}: {}", t.trim()),
            ApiError::Network(t) => write!(f, "could not reach the relay: {t}"),
            ApiError::Decode(t) => write!(f, "unexpected answer from the relay: {t}"),
        }
    }
}

fn js_text(v: &JsValue) -> String {
    v.as_string()
        .or_else(|| {
            v.dyn_ref::<js_sys::Error>()
                .map(|e| String::from(e.message()))
        })
        .unwrap_or_else(|| format!("{v:?}"))
}

/// `GET api/v1/{route}` with the token; the body as text when the status is 2xx.
pub async fn get_text(route: &str, token: Option<&str>) -> Result<String, ApiError> {
    let window = web_sys::window().ok_or_else(|| ApiError::Network("no window".into()))?;
    let net = |e: JsValue| ApiError::Network(js_text(&e));
    let headers = Headers::new().map_err(net)?;
    headers.set("Accept", "application/json").map_err(net)?;
    if let Some(t) = token.filter(|t| !t.is_empty()) {
        headers
            .set("Authorization", &format!("Bearer {t}"))
            .map_err(net)?;
    }
    let init = RequestInit::new();
    init.set_method("GET");
    init.set_headers(&headers);
    let req = Request::new_with_str_and_init(&format!("{API}/{route}"), &init).map_err(net)?;
    let resp: Response = JsFuture::from(window.fetch_with_request(&req))
        .await
        .map_err(net)?
        .dyn_into()
        .map_err(net)?;
    let text = JsFuture::from(resp.text().map_err(net)?)
        .await
        .map_err(net)?
        .as_string()
        .unwrap_or_default();
    match resp.status() {
        200..=299 => Ok(text),
        400 => Err(ApiError::BadRequest(text)),
        401 => Err(ApiError::Unauthorized(text)),
        s => Err(ApiError::Http(s, text)),
    }
}

/// `GET api/v1/{route}` decoded from JSON.
pub async fn get_json<T: DeserializeOwned>(
    route: &str,
    token: Option<&str>,
) -> Result<T, ApiError> {
    let text = get_text(route, token).await?;
    serde_json::from_str(&text).map_err(|e| ApiError::Decode(e.to_string()))
}

/// The URL of an event stream: `api/v1/{route}?{query}` plus `access_token` (an
/// `EventSource` cannot send headers).
pub fn stream_url(route: &str, query: &str, token: Option<&str>) -> String {
    let token = token
        .filter(|t| !t.is_empty())
        .map(|t| build(&[("access_token", t)]))
        .unwrap_or_default();
    with_query(&format!("{API}/{route}"), &join(query, &token))
}

type Listener = Closure<dyn FnMut(MessageEvent)>;

/// A handler of a named event of a stream: gets the event's data.
pub type Handler = (&'static str, Box<dyn FnMut(String)>);

/// An open server-sent event stream; closed when dropped.
pub struct Stream {
    es: EventSource,
    listeners: Vec<(&'static str, Listener)>,
    _on_error: Closure<dyn FnMut(web_sys::Event)>,
}

impl Stream {
    /// Opens `url`, calling `handlers` with the data of their named events. `on_error` gets
    /// `true` when the browser gave up on the stream (an HTTP error: it will not reconnect),
    /// `false` while it reconnects by itself.
    pub fn open(
        url: &str,
        handlers: Vec<Handler>,
        mut on_error: impl FnMut(bool) + 'static,
    ) -> Result<Stream, ApiError> {
        let es = EventSource::new(url).map_err(|e| ApiError::Network(js_text(&e)))?;
        let mut listeners = Vec::new();
        for (name, mut h) in handlers {
            let l: Listener = Closure::new(move |e: MessageEvent| {
                if let Some(s) = e.data().as_string() {
                    h(s)
                }
            });
            es.add_event_listener_with_callback(name, l.as_ref().unchecked_ref())
                .map_err(|e| ApiError::Network(js_text(&e)))?;
            listeners.push((name, l));
        }
        let es2 = es.clone();
        let on_error = Closure::new(move |_e: web_sys::Event| {
            on_error(es2.ready_state() == EventSource::CLOSED)
        });
        es.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        Ok(Stream {
            es,
            listeners,
            _on_error: on_error,
        })
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.es.close();
        self.es.set_onerror(None);
        for (name, l) in &self.listeners {
            let _ = self
                .es
                .remove_event_listener_with_callback(name, l.as_ref().unchecked_ref());
        }
    }
}
