//! A fake Kubernetes API server, for tests of the Kubernetes sources (the agent's metadata
//! source, the relay's agent discovery): no real API server can run on this machine (no
//! container engine, no internet), so tests serve the API's HTTP surface themselves, with list
//! responses in the exact shape the API server returns them.
//!
//! A hand-rolled HTTP/1.1 server on 127.0.0.1 (one request per connection, `Connection:
//! close`): list requests (`limit`, `resourceVersion`, `labelSelector`… are accepted; one page),
//! watch requests (`watch=true`, `resourceVersion`, `allowWatchBookmarks`, `timeoutSeconds`)
//! streamed chunked and kept open, 404 `Status` for paths it does not serve, and a 410 `ERROR`
//! event to expire watches. It can be stopped and started again on the same port.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The request path.
    pub path: String,
    /// The query parameters, decoded.
    pub query: BTreeMap<String, String>,
    /// The `Authorization` header.
    pub authorization: Option<String>,
}

struct Resource {
    list: Value,
    /// Watch events with their resource versions.
    log: Vec<(u64, String)>,
}

#[derive(Default)]
struct State {
    resources: BTreeMap<String, Resource>,
    requests: Vec<Seen>,
}

/// A fake Kubernetes API server on 127.0.0.1. See the module documentation.
pub struct FakeApiServer {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    bump: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeApiServer {
    /// Serves `lists` (path → list response) on 127.0.0.1:`port` (0 = ephemeral).
    pub async fn start(port: u16, lists: BTreeMap<String, Value>) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            resources: lists
                .into_iter()
                .map(|(p, list)| {
                    (
                        p,
                        Resource {
                            list,
                            log: Vec::new(),
                        },
                    )
                })
                .collect(),
            requests: Vec::new(),
        }));
        let (bump, _) = watch::channel(0u64);
        let (st, tx) = (state.clone(), bump.clone());
        let task = tokio::spawn(async move {
            // Connection tasks live in this set: stopping the server (aborting this task) drops
            // them, closing every connection, watches included.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((sock, _)) = accepted else { continue };
                        conns.spawn(serve(sock, st.clone(), tx.subscribe()));
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        FakeApiServer {
            addr,
            state,
            bump,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops listening and drops every connection.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Records a watch event (one line of a `watch-*.jsonl` fixture) for `path`: applied to the
    /// list (as the API server's state) and streamed to the path's watches.
    pub fn push_event(&self, path: &str, line: &str) {
        let ev: Value = serde_json::from_str(line).expect("event JSON");
        let obj = &ev["object"];
        let rv: u64 = obj["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("event object has a numeric resourceVersion");
        let id = |o: &Value| {
            (
                o["metadata"]["namespace"].clone(),
                o["metadata"]["name"].clone(),
            )
        };
        {
            let mut st = self.state.lock().unwrap();
            let res = st.resources.get_mut(path).expect("served path");
            let items = res.list["items"].as_array_mut().unwrap();
            items.retain(|i| id(i) != id(obj));
            if ev["type"] != "DELETED" {
                let mut item = obj.clone();
                if let Some(m) = item.as_object_mut()
                    && !path.starts_with("/apis/cilium.io/")
                {
                    // List items of built-in kinds carry no kind/apiVersion.
                    m.remove("kind");
                    m.remove("apiVersion");
                }
                items.push(item);
            }
            res.list["metadata"]["resourceVersion"] = Value::String(rv.to_string());
            res.log.push((rv, line.to_string()));
        }
        self.bump.send_modify(|n| *n += 1);
    }

    /// Replaces a list without telling watches (objects changed while no event reached them)
    /// and expires the path's watches with `410 Gone`, as after an etcd compaction.
    pub fn replace_and_expire(&self, path: &str, list: Value) {
        let gone = serde_json::json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "too old resource version: 100 (200)", "reason": "Expired", "code": 410}});
        {
            let mut st = self.state.lock().unwrap();
            let res = st.resources.get_mut(path).expect("served path");
            let rv = list["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("list resourceVersion");
            res.list = list;
            res.log.push((rv, gone.to_string()));
        }
        self.bump.send_modify(|n| *n += 1);
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Watch requests currently recorded for `path`.
    pub fn watches(&self, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.path == path && r.query.get("watch").map(String::as_str) == Some("true"))
            .count()
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn respond(sock: &mut TcpStream, status: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body).await?;
    sock.shutdown().await
}

async fn chunk(sock: &mut TcpStream, line: &str) -> std::io::Result<()> {
    let data = format!("{line}\n");
    sock.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
        .await?;
    sock.flush().await
}

async fn serve(
    mut sock: TcpStream,
    state: Arc<Mutex<State>>,
    mut bump: watch::Receiver<u64>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 * 1024 || sock.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let (method, target) = (
        request_line.next().unwrap_or_default(),
        request_line.next().unwrap_or_default(),
    );
    let authorization = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim().to_string());
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query: BTreeMap<String, String> = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    state.lock().unwrap().requests.push(Seen {
        path: path.to_string(),
        query: query.clone(),
        authorization,
    });
    let not_found = |what: &str| {
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": format!("the server could not find the requested resource ({what})"),
            "reason": "NotFound", "details": {}, "code": 404})
        .to_string()
    };
    let served = state
        .lock()
        .unwrap()
        .resources
        .get(path)
        .map(|r| r.list.clone());
    let Some(list) = served.filter(|_| method == "GET") else {
        return respond(&mut sock, "404 Not Found", not_found(path).as_bytes()).await;
    };
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    if !watching {
        let body = serde_json::to_vec(&list).unwrap();
        return respond(&mut sock, "200 OK", &body).await;
    }
    // A watch: events after the requested resourceVersion, then new ones as they come.
    let mut sent: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    sock.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    )
    .await?;
    let list_kind = list["kind"].as_str().unwrap_or_default();
    let bookmark = serde_json::json!({"type": "BOOKMARK", "object": {
        "kind": list_kind.strip_suffix("List").unwrap_or(list_kind),
        "apiVersion": list["apiVersion"],
        "metadata": {"resourceVersion": list["metadata"]["resourceVersion"]}}});
    if query.get("allowWatchBookmarks").map(String::as_str) == Some("true") {
        chunk(&mut sock, &bookmark.to_string()).await?;
    }
    loop {
        let _ = bump.borrow_and_update();
        let pending: Vec<(u64, String)> = state.lock().unwrap().resources[path]
            .log
            .iter()
            .filter(|(rv, _)| *rv > sent)
            .cloned()
            .collect();
        for (rv, line) in pending {
            chunk(&mut sock, &line).await?;
            sent = rv;
            if line.contains("\"ERROR\"") {
                // The API server ends a watch after an error event.
                sock.write_all(b"0\r\n\r\n").await?;
                return sock.shutdown().await;
            }
        }
        if bump.changed().await.is_err() {
            return Ok(());
        }
    }
}
