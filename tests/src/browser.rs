//! Headless Chromium for tests and benchmarks: a small W3C WebDriver client for Debian's
//! `chromedriver`.
//!
//! [`Browser::start`] runs `chromedriver` on a free port of 127.0.0.1 (in its own process group,
//! logging to a scratch directory) and opens a session with headless Chromium (own profile in the
//! same scratch directory, no sandbox, no GPU, no background networking, browser console logging
//! on). Dropping the [`Browser`] ends the session, kills chromedriver's process group and removes
//! the scratch directory.
//!
//! The protocol is plain HTTP/1.1 with JSON bodies (one connection per command,
//! `Connection: close`): `POST /session`, `POST /session/{id}/url`, `POST .../element`, ...; every
//! answer is `{"value": ...}`, errors are `{"value": {"error", "message", "stacktrace"}}` and
//! become [`BrowserError::WebDriver`]. Console messages come from chromedriver's legacy log
//! endpoint `POST /session/{id}/se/log {"type": "browser"}` (still served by chromedriver 156; it
//! drains what the browser logged since the last call, so [`Browser`] keeps everything it has
//! read).
//!
//! Binaries: `$PERISCOPE_CHROMEDRIVER` else `/usr/bin/chromedriver`, `$PERISCOPE_CHROMIUM` else
//! `/usr/bin/chromium` (Debian's `chromium-driver` and `chromium`; `xtask/setup.sh` installs
//! them).
//!
//! Waiting ([`Browser::wait_for`], [`Browser::wait_until`]) polls every 50 ms; running out of time
//! is an error naming what was awaited and the page it was awaited on, not a measurement.
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// The key of a W3C element reference (`{"element-6066-…": "<id>"}`).
pub const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long chromedriver may take to answer `/status` after its start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one command may take (page loads included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Polling period of the waits.
const POLL: Duration = Duration::from_millis(50);
/// Attempts with a fresh port when chromedriver could not bind the one chosen.
const START_ATTEMPTS: usize = 4;

/// What went wrong talking to the browser.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    /// A binary is missing.
    #[error(
        "{what} not found at {path}: run `cargo xtask setup` (Debian package {package}) or set {env}"
    )]
    Missing {
        /// `chromedriver` or `chromium`.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// The Debian package that has it.
        package: &'static str,
        /// The environment variable naming another path.
        env: &'static str,
    },
    /// chromedriver or the session did not come up.
    #[error("starting headless Chromium: {detail}\nchromedriver log (tail):\n{log}")]
    Start {
        /// What failed.
        detail: String,
        /// The end of chromedriver's log.
        log: String,
    },
    /// A local I/O operation failed (scratch directory, screenshot file, the socket).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// chromedriver answered something that is not a WebDriver answer.
    #[error("chromedriver {command}: unexpected answer: {detail}")]
    Protocol {
        /// `METHOD /path` of the command.
        command: String,
        /// What was wrong with it.
        detail: String,
    },
    /// chromedriver answered with a WebDriver error.
    #[error("{command}: {error}: {message}")]
    WebDriver {
        /// What was asked (`find "#map"`, `click`, `POST /session/…/url`, ...).
        command: String,
        /// The WebDriver error code (`no such element`, `javascript error`, ...).
        error: String,
        /// chromedriver's message.
        message: String,
    },
    /// A wait ran out of time.
    #[error("timed out after {timeout:?} waiting for {what} on {url}{last}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long it was awaited.
        timeout: Duration,
        /// The page's URL when the wait gave up.
        url: String,
        /// The last error seen while polling, if any (`; last error: …`).
        last: String,
    },
}

/// Result of the browser's operations.
pub type Result<T, E = BrowserError> = std::result::Result<T, E>;

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> BrowserError {
    let what = what.into();
    move |source| BrowserError::Io { what, source }
}

/// One entry of the browser's console log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// `SEVERE`, `WARNING`, `INFO`, `DEBUG`.
    pub level: String,
    /// Where from: `console-api` (console.*), `javascript` (uncaught errors), `network`, ...
    pub source: String,
    /// The text, as chromedriver reports it (`URL LINE:COL "message"`).
    pub message: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
}

/// A headless Chromium driven through chromedriver; see the module documentation.
pub struct Browser {
    driver: Option<Child>,
    port: u16,
    session: String,
    /// PID of the Chromium browser process (`goog:processID`), killed on drop if the session
    /// could not be ended.
    chrome_pid: Option<u32>,
    dir: PathBuf,
    /// Every console entry read so far (chromedriver hands each out once).
    console: Mutex<Vec<LogEntry>>,
}

/// A found element of the current page; valid until the page changes.
#[derive(Clone)]
pub struct Element<'b> {
    browser: &'b Browser,
    id: String,
    /// How it was found (for error messages).
    css: String,
}

fn binary(
    env: &'static str,
    default: &str,
    what: &'static str,
    package: &'static str,
) -> Result<PathBuf> {
    let path = std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from);
    if path.is_file() {
        Ok(path)
    } else {
        Err(BrowserError::Missing {
            what,
            path,
            package,
            env,
        })
    }
}

/// A scratch directory of its own for this process.
fn scratch_dir() -> Result<PathBuf> {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "periscope-browser-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("profile"))
        .map_err(io_err(format!("creating {}", dir.display())))?;
    Ok(dir)
}

fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(io_err("choosing a free port"))
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Whether a JSON value is truthy the way JavaScript sees it.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// One HTTP/1.1 request (`Connection: close`) to `addr`: `method path` with `headers` (`Name:
/// value` lines) and `body` (JSON gets `Content-Type: application/json`); returns the status code
/// and the body (chunked bodies decoded). Used for chromedriver's commands, and by benchmarks for
/// plain HTTP GETs.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: Option<&Value>,
    timeout: Duration,
) -> io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    s.set_nodelay(true)?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if method != "GET" {
        req.push_str(&format!(
            "Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes())?;
    read_response(BufReader::new(s))
}

/// Reads an HTTP/1.1 response: status line, headers, then a `Content-Length` or chunked body (or
/// everything up to the end of the connection).
fn read_response(mut r: impl BufRead) -> io::Result<(u16, Vec<u8>)> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let (mut length, mut chunked) = (None, false);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(bad("connection closed in the headers".into()));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                length = Some(
                    v.parse::<usize>()
                        .map_err(|_| bad(format!("bad Content-Length {v:?}")))?,
                );
            } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            line.clear();
            r.read_line(&mut line)?;
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok((status, body))
}

/// Sends a WebDriver command and returns the answer's `value`.
fn command(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<Value> {
    let what = format!("{method} {path}");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (status, body) = http_request(addr, method, path, &[], body, timeout)
        .map_err(io_err(format!("chromedriver {what}")))?;
    let answer: Value = serde_json::from_slice(&body).map_err(|e| BrowserError::Protocol {
        command: what.clone(),
        detail: format!(
            "HTTP {status}, body not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        ),
    })?;
    let value = answer.get("value").cloned().unwrap_or(Value::Null);
    if let Some(error) = value.get("error").and_then(Value::as_str) {
        return Err(BrowserError::WebDriver {
            command: what,
            error: error.to_string(),
            message: value
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        });
    }
    if status != 200 {
        return Err(BrowserError::Protocol {
            command: what,
            detail: format!("HTTP {status}: {answer}"),
        });
    }
    Ok(value)
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session with a `width`×`height` window.
    pub fn start(width: u32, height: u32) -> Result<Browser> {
        let driver = binary(
            "PERISCOPE_CHROMEDRIVER",
            "/usr/bin/chromedriver",
            "chromedriver",
            "chromium-driver",
        )?;
        let chromium = binary(
            "PERISCOPE_CHROMIUM",
            "/usr/bin/chromium",
            "chromium",
            "chromium",
        )?;
        let dir = scratch_dir()?;
        let log = dir.join("chromedriver.log");
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            let out =
                fs::File::create(&log).map_err(io_err(format!("creating {}", log.display())))?;
            let err = out.try_clone().map_err(io_err("chromedriver log"))?;
            let child = Command::new(&driver)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                // Its own process group: dropping kills chromedriver and whatever it left behind.
                .process_group(0)
                .spawn()
                .map_err(io_err(format!("starting {}", driver.display())))?;
            let mut b = Browser {
                driver: Some(child),
                port,
                session: String::new(),
                chrome_pid: None,
                dir: dir.clone(),
                console: Mutex::new(Vec::new()),
            };
            match b.wait_ready() {
                Ok(()) => {
                    b.new_session(&chromium, width, height)?;
                    return Ok(b);
                }
                Err(e) => {
                    failures.push(e);
                    // The directory is reused by the next attempt.
                    b.dir = PathBuf::new();
                }
            }
        }
        let tail = log_tail(&log);
        let _ = fs::remove_dir_all(&dir);
        Err(BrowserError::Start {
            detail: failures.join("; "),
            log: tail,
        })
    }

    /// Waits until chromedriver answers `/status` with `ready`; `Err` (why) if it exited or
    /// never did.
    fn wait_ready(&mut self) -> std::result::Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .driver
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!("chromedriver exited with {status}"));
            }
            if let Ok(v) = command(self.port, "GET", "/status", None, Duration::from_secs(5))
                && v.get("ready") == Some(&Value::Bool(true))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "chromedriver not ready on port {} after {START_TIMEOUT:?}",
                    self.port
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    fn new_session(&mut self, chromium: &Path, width: u32, height: u32) -> Result<()> {
        let profile = self.dir.join("profile");
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            format!("--user-data-dir={}", profile.display()),
            format!("--window-size={width},{height}"),
        ];
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "goog:chromeOptions": {
                        "binary": chromium.to_string_lossy(),
                        "args": args,
                    },
                    "goog:loggingPrefs": { "browser": "ALL" },
                }
            }
        });
        let v =
            command(self.port, "POST", "/session", Some(&caps), COMMAND_TIMEOUT).map_err(|e| {
                BrowserError::Start {
                    detail: format!("creating the session: {e}"),
                    log: log_tail(&self.dir.join("chromedriver.log")),
                }
            })?;
        self.session = v
            .get("sessionId")
            .and_then(Value::as_str)
            .ok_or_else(|| BrowserError::Protocol {
                command: "POST /session".into(),
                detail: format!("no sessionId in {v}"),
            })?
            .to_string();
        self.chrome_pid = v
            .pointer("/capabilities/goog:processID")
            .and_then(Value::as_u64)
            .map(|p| p as u32);
        Ok(())
    }

    /// Sends a command of this session (`path` relative to `/session/{id}`).
    fn cmd(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        command(
            self.port,
            method,
            &format!("/session/{}{path}", self.session),
            body,
            COMMAND_TIMEOUT,
        )
    }

    /// Like [`Browser::cmd`], with `what` naming the command in errors.
    fn cmd_as(
        &self,
        what: impl FnOnce() -> String,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        self.cmd(method, path, body).map_err(|e| match e {
            BrowserError::WebDriver { error, message, .. } => BrowserError::WebDriver {
                command: what(),
                error,
                message,
            },
            e => e,
        })
    }

    /// The scratch directory (chromedriver's log, the browser profile).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens `url` and waits until it has loaded (the document's `load` event).
    pub fn goto(&self, url: &str) -> Result<()> {
        self.cmd_as(
            || format!("goto {url}"),
            "POST",
            "/url",
            Some(&json!({ "url": url })),
        )?;
        Ok(())
    }

    /// The current page's URL.
    pub fn url(&self) -> Result<String> {
        Ok(self
            .cmd("GET", "/url", None)?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// The current page's title.
    pub fn title(&self) -> Result<String> {
        Ok(self
            .cmd("GET", "/title", None)?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// Reloads the current page.
    pub fn refresh(&self) -> Result<()> {
        self.cmd("POST", "/refresh", Some(&json!({})))?;
        Ok(())
    }

    fn element(&self, v: &Value, css: &str) -> Result<Element<'_>> {
        let id =
            v.get(ELEMENT_KEY)
                .and_then(Value::as_str)
                .ok_or_else(|| BrowserError::Protocol {
                    command: format!("find {css:?}"),
                    detail: format!("not an element reference: {v}"),
                })?;
        Ok(Element {
            browser: self,
            id: id.to_string(),
            css: css.to_string(),
        })
    }

    /// The first element matching the CSS selector `css`; an error if there is none.
    pub fn find(&self, css: &str) -> Result<Element<'_>> {
        let v = self.cmd_as(
            || format!("find {css:?}"),
            "POST",
            "/element",
            Some(&json!({ "using": "css selector", "value": css })),
        )?;
        self.element(&v, css)
    }

    /// Every element matching `css` (possibly none).
    pub fn find_all(&self, css: &str) -> Result<Vec<Element<'_>>> {
        let v = self.cmd_as(
            || format!("find all {css:?}"),
            "POST",
            "/elements",
            Some(&json!({ "using": "css selector", "value": css })),
        )?;
        v.as_array()
            .map(|a| a.iter().map(|e| self.element(e, css)).collect())
            .unwrap_or_else(|| Ok(Vec::new()))
    }

    /// Runs `script` as the body of a function in the page (`return …` gives the result), with
    /// `args` as its `arguments` (an [`Element::json`] becomes the DOM element); returns the
    /// result as JSON (DOM elements as element references).
    pub fn execute(&self, script: &str, args: &[Value]) -> Result<Value> {
        let short: String = script.chars().take(80).collect();
        self.cmd_as(
            || format!("execute {short:?}"),
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": args })),
        )
    }

    /// Waits up to `timeout` for an element matching `css`, and returns it.
    pub fn wait_for(&self, css: &str, timeout: Duration) -> Result<Element<'_>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.find_all(css)?.into_iter().next() {
                return Ok(e);
            }
            if Instant::now() >= deadline {
                return Err(BrowserError::Timeout {
                    what: format!("an element matching {css:?}"),
                    timeout,
                    url: self.url().unwrap_or_else(|e| format!("? ({e})")),
                    last: String::new(),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits up to `timeout` until the JavaScript expression `predicate` is truthy, and returns its
    /// value. A script error while polling (the page not ready yet) counts as not yet, and is
    /// reported if the wait runs out.
    pub fn wait_until(&self, predicate: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let script = format!("return ({predicate});");
        let mut last;
        loop {
            match self.execute(&script, &[]) {
                Ok(v) if truthy(&v) => return Ok(v),
                Ok(v) => last = format!("; last value: {v}"),
                Err(BrowserError::WebDriver { error, message, .. })
                    if error == "javascript error" || error == "script timeout" =>
                {
                    last = format!("; last error: {error}: {message}");
                }
                Err(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                return Err(BrowserError::Timeout {
                    what: format!("`{predicate}`"),
                    timeout,
                    url: self.url().unwrap_or_else(|e| format!("? ({e})")),
                    last,
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Resizes the window to `width`×`height` (outer size, as `--window-size`).
    pub fn set_window_size(&self, width: u32, height: u32) -> Result<()> {
        self.cmd_as(
            || format!("set window size {width}x{height}"),
            "POST",
            "/window/rect",
            Some(&json!({ "width": width, "height": height })),
        )?;
        Ok(())
    }

    /// A PNG of the visible part of the page.
    pub fn screenshot_png(&self) -> Result<Vec<u8>> {
        let v = self.cmd_as(|| "screenshot".into(), "GET", "/screenshot", None)?;
        let b64 = v.as_str().ok_or_else(|| BrowserError::Protocol {
            command: "screenshot".into(),
            detail: format!(
                "not a string: {}",
                v.to_string().chars().take(100).collect::<String>()
            ),
        })?;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| BrowserError::Protocol {
                command: "screenshot".into(),
                detail: format!("not base64: {e}"),
            })
    }

    /// Writes a PNG of the visible part of the page to `path`.
    pub fn screenshot(&self, path: impl AsRef<Path>) -> Result<()> {
        let png = self.screenshot_png()?;
        let path = path.as_ref();
        fs::write(path, png).map_err(io_err(format!("writing {}", path.display())))
    }

    /// Runs a Chrome DevTools Protocol command (`Network.setCacheDisabled`, ...).
    pub fn cdp(&self, cmd: &str, params: Value) -> Result<Value> {
        self.cmd_as(
            || format!("DevTools {cmd}"),
            "POST",
            "/goog/cdp/execute",
            Some(&json!({ "cmd": cmd, "params": params })),
        )
    }

    /// Every console entry the browser logged since the session started (or since
    /// [`Browser::clear_console`]), all levels.
    pub fn console_log(&self) -> Result<Vec<LogEntry>> {
        let v = self.cmd_as(
            || "read the console log".into(),
            "POST",
            "/se/log",
            Some(&json!({ "type": "browser" })),
        )?;
        let mut all = self.console.lock().unwrap_or_else(|p| p.into_inner());
        for e in v.as_array().into_iter().flatten() {
            all.push(LogEntry {
                level: e
                    .get("level")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                source: e
                    .get("source")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                message: e
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                timestamp: e.get("timestamp").and_then(Value::as_i64).unwrap_or(0),
            });
        }
        Ok(all.clone())
    }

    /// The `SEVERE` entries of [`Browser::console_log`]: `console.error` calls, uncaught
    /// exceptions, failed loads.
    pub fn console_errors(&self) -> Result<Vec<LogEntry>> {
        Ok(self
            .console_log()?
            .into_iter()
            .filter(|e| e.level == "SEVERE")
            .collect())
    }

    /// Forgets the console entries logged so far.
    pub fn clear_console(&self) -> Result<()> {
        self.console_log()?;
        self.console
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let ended = self.session.is_empty()
            || command(
                self.port,
                "DELETE",
                &format!("/session/{}", self.session),
                None,
                Duration::from_secs(20),
            )
            .is_ok();
        if !ended && let Some(pid) = self.chrome_pid {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        if let Some(mut c) = self.driver.take() {
            // The whole process group: chromedriver and anything of it still running.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .stderr(Stdio::null())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
        if !self.dir.as_os_str().is_empty() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl std::fmt::Debug for Element<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Element")
            .field("css", &self.css)
            .field("id", &self.id)
            .finish()
    }
}

impl Element<'_> {
    fn path(&self, rest: &str) -> String {
        format!("/element/{}{rest}", self.id)
    }

    /// The element as an argument of [`Browser::execute`].
    pub fn json(&self) -> Value {
        json!({ ELEMENT_KEY: self.id })
    }

    /// Clicks it (scrolled into view first; an error if something else would get the click).
    pub fn click(&self) -> Result<()> {
        self.browser.cmd_as(
            || format!("click {:?}", self.css),
            "POST",
            &self.path("/click"),
            Some(&json!({})),
        )?;
        Ok(())
    }

    /// Types `text` into it.
    pub fn send_keys(&self, text: &str) -> Result<()> {
        self.browser.cmd_as(
            || format!("send keys to {:?}", self.css),
            "POST",
            &self.path("/value"),
            Some(&json!({ "text": text })),
        )?;
        Ok(())
    }

    /// Empties an input or textarea.
    pub fn clear(&self) -> Result<()> {
        self.browser.cmd_as(
            || format!("clear {:?}", self.css),
            "POST",
            &self.path("/clear"),
            Some(&json!({})),
        )?;
        Ok(())
    }

    /// Its rendered text (as a user sees it: hidden parts left out).
    pub fn text(&self) -> Result<String> {
        let v = self.browser.cmd_as(
            || format!("text of {:?}", self.css),
            "GET",
            &self.path("/text"),
            None,
        )?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// The value of attribute `name` (`None` when it has none).
    pub fn attribute(&self, name: &str) -> Result<Option<String>> {
        let v = self.browser.cmd_as(
            || format!("attribute {name:?} of {:?}", self.css),
            "GET",
            &self.path(&format!("/attribute/{name}")),
            None,
        )?;
        Ok(v.as_str().map(str::to_string))
    }

    /// The DOM property `name` (`value`, `checked`, ...).
    pub fn property(&self, name: &str) -> Result<Value> {
        self.browser.cmd_as(
            || format!("property {name:?} of {:?}", self.css),
            "GET",
            &self.path(&format!("/property/{name}")),
            None,
        )
    }

    /// Whether it is displayed.
    pub fn is_displayed(&self) -> Result<bool> {
        let v = self.browser.cmd_as(
            || format!("is {:?} displayed", self.css),
            "GET",
            &self.path("/displayed"),
            None,
        )?;
        Ok(v.as_bool().unwrap_or(false))
    }

    /// The first descendant matching `css`.
    pub fn find(&self, css: &str) -> Result<Element<'_>> {
        let v = self.browser.cmd_as(
            || format!("find {css:?} in {:?}", self.css),
            "POST",
            &self.path("/element"),
            Some(&json!({ "using": "css selector", "value": css })),
        )?;
        self.browser.element(&v, css)
    }

    /// Every descendant matching `css`.
    pub fn find_all(&self, css: &str) -> Result<Vec<Element<'_>>> {
        let v = self.browser.cmd_as(
            || format!("find all {css:?} in {:?}", self.css),
            "POST",
            &self.path("/elements"),
            Some(&json!({ "using": "css selector", "value": css })),
        )?;
        v.as_array()
            .map(|a| a.iter().map(|e| self.browser.element(e, css)).collect())
            .unwrap_or_else(|| Ok(Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: application/json\r\n\r\n{\"value\":42}\n";
        let (s, b) = read_response(&r[..]).unwrap();
        assert_eq!((s, b.as_slice()), (200, &b"{\"value\":42}\n"[..]));
        let r = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n";
        let (s, b) = read_response(&r[..]).unwrap();
        assert_eq!((s, b.as_slice()), (404, &b"hello world"[..]));
        let r = b"HTTP/1.1 200 OK\r\n\r\nuntil the end";
        assert_eq!(read_response(&r[..]).unwrap().1, b"until the end");
        assert!(read_response(&b"garbage\r\n\r\n"[..]).is_err());
        assert!(read_response(&b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"[..]).is_err());
    }

    #[test]
    fn javascript_truthiness() {
        for v in [json!(null), json!(false), json!(0), json!(""), json!(0.0)] {
            assert!(!truthy(&v), "{v}");
        }
        for v in [
            json!(true),
            json!(1),
            json!("x"),
            json!([]),
            json!({}),
            json!(-2.5),
        ] {
            assert!(truthy(&v), "{v}");
        }
    }
}
