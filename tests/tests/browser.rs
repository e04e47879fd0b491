//! The headless-Chromium harness (`periscope_testbed::browser`) against a real page: a tiny HTTP
//! server on 127.0.0.1 serves one HTML page with a button, an input, an element that appears
//! late and a deliberate `console.error`; real Chromium (Debian's `chromium` and
//! `chromium-driver`) loads it.
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::Duration;

use periscope_testbed::browser::{Browser, BrowserError};
use serde_json::json;

const PAGE: &str = r#"<!doctype html>
<html><head><title>harness page</title>
<style>body { margin: 0; background: #fff; } #box { width: 120px; height: 80px; background: #0a0; }</style>
</head><body>
<button id="go" data-clicks="0" onclick="
  const n = Number(this.dataset.clicks) + 1;
  this.dataset.clicks = n;
  document.getElementById('out').textContent = 'clicked ' + n;
">Go</button>
<p id="out">not clicked</p>
<input id="name" value="preset">
<ul><li class="item">one</li><li class="item">two</li><li class="item">three</li></ul>
<div id="box"></div>
<script>
  console.error("deliberate failure 42");
  console.log("just info");
  setTimeout(() => {
    const d = document.createElement('div');
    d.id = 'late';
    d.textContent = 'arrived';
    document.body.appendChild(d);
    window.lateDone = 7;
  }, 300);
</script>
</body></html>"#;

/// Serves `PAGE` for every request on a free port of 127.0.0.1; returns `http://127.0.0.1:PORT/`.
fn serve() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the page server");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut line = String::new();
            // Request line and headers up to the blank line (GET only: no body).
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{PAGE}",
                PAGE.len()
            );
        }
    });
    format!("http://127.0.0.1:{port}/")
}

#[test]
fn drives_a_real_page() {
    let url = serve();
    let b = Browser::start(800, 600).expect("start headless Chromium");
    b.goto(&url).expect("load the page");
    assert_eq!(b.title().unwrap(), "harness page");
    assert_eq!(b.url().unwrap(), url);

    // Click, text, attributes.
    let button = b.find("#go").unwrap();
    assert_eq!(button.text().unwrap(), "Go");
    assert_eq!(b.find("#out").unwrap().text().unwrap(), "not clicked");
    button.click().unwrap();
    button.click().unwrap();
    assert_eq!(b.find("#out").unwrap().text().unwrap(), "clicked 2");
    assert_eq!(
        button.attribute("data-clicks").unwrap().as_deref(),
        Some("2")
    );
    assert_eq!(button.attribute("no-such-attribute").unwrap(), None);
    assert!(button.is_displayed().unwrap());

    // Keys into an input.
    let input = b.find("#name").unwrap();
    assert_eq!(input.property("value").unwrap(), json!("preset"));
    input.clear().unwrap();
    input.send_keys("periscope").unwrap();
    assert_eq!(input.property("value").unwrap(), json!("periscope"));

    // Lists, descendants.
    let items = b.find_all("li.item").unwrap();
    let texts: Vec<String> = items.iter().map(|i| i.text().unwrap()).collect();
    assert_eq!(texts, ["one", "two", "three"]);
    assert_eq!(b.find("ul").unwrap().find_all("li").unwrap().len(), 3);
    assert!(b.find_all(".nothing").unwrap().is_empty());
    let missing = b.find("#nothing").expect_err("no such element");
    assert!(
        matches!(&missing, BrowserError::WebDriver { error, .. } if error == "no such element"),
        "{missing}"
    );
    assert!(missing.to_string().contains("#nothing"), "{missing}");

    // Scripts with arguments, elements passed in.
    let v = b
        .execute(
            "return [arguments[0] * 2, arguments[1].id, document.querySelectorAll('li').length];",
            &[json!(21), button.json()],
        )
        .unwrap();
    assert_eq!(v, json!([42, "go", 3]));
    let err = b.execute("throw new Error('bad script')", &[]).unwrap_err();
    assert!(err.to_string().contains("bad script"), "{err}");

    // Waiting for what arrives late.
    let late = b.wait_for("#late", Duration::from_secs(10)).unwrap();
    assert_eq!(late.text().unwrap(), "arrived");
    assert_eq!(
        b.wait_until("window.lateDone", Duration::from_secs(10))
            .unwrap(),
        json!(7)
    );
    // A wait that cannot succeed fails with a message naming what it waited for.
    let err = b
        .wait_until("window.neverSet === 1", Duration::from_millis(300))
        .unwrap_err();
    assert!(matches!(err, BrowserError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("window.neverSet === 1"), "{err}");
    let err = b
        .wait_for("#never", Duration::from_millis(200))
        .unwrap_err();
    assert!(
        err.to_string().contains("#never") && err.to_string().contains(&url),
        "{err}"
    );

    // The console: the deliberate error is SEVERE, the log line is not.
    let errors = b.console_errors().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.message.contains("deliberate failure 42") && e.source == "console-api"),
        "{errors:?}"
    );
    assert!(
        !errors.iter().any(|e| e.message.contains("just info")),
        "{errors:?}"
    );
    assert!(
        b.console_log()
            .unwrap()
            .iter()
            .any(|e| e.message.contains("just info")),
        "entries already read stay readable"
    );
    b.clear_console().unwrap();
    assert!(b.console_errors().unwrap().is_empty());
    b.execute(
        "setTimeout(() => { throw new Error('uncaught one'); }, 0); return 1;",
        &[],
    )
    .unwrap();
    b.wait_until("true", Duration::from_secs(1)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let errors = b.console_errors().unwrap();
    assert!(
        errors.iter().any(|e| e.message.contains("uncaught one")),
        "{errors:?}"
    );
}

/// PNG signature and the IHDR's width and height.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&png[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
    (be(&png[16..20]), be(&png[20..24]))
}

#[test]
fn screenshots_and_window_size() {
    let url = serve();
    let b = Browser::start(640, 480).expect("start headless Chromium");
    b.goto(&url).unwrap();
    let inner = || {
        let v = b
            .execute("return [window.innerWidth, window.innerHeight];", &[])
            .unwrap();
        (v[0].as_u64().unwrap() as u32, v[1].as_u64().unwrap() as u32)
    };
    let (w0, h0) = inner();
    assert_eq!(w0, 640);
    assert!(h0 > 0 && h0 <= 480, "{h0}");

    let path = b.dir().join("shot.png");
    b.screenshot(&path).unwrap();
    let png = std::fs::read(&path).unwrap();
    assert_eq!(png_size(&png), (w0, h0));

    // DevTools commands pass through.
    let v = b.cdp("Browser.getVersion", json!({})).unwrap();
    assert!(
        v["product"].as_str().unwrap_or("").contains("Chrome"),
        "{v}"
    );
    b.cdp("Network.enable", json!({})).unwrap();
    b.cdp("Network.setCacheDisabled", json!({ "cacheDisabled": true }))
        .unwrap();

    b.set_window_size(1000, 700).unwrap();
    let (w1, h1) = inner();
    assert_eq!(w1, 1000);
    assert_eq!(h1, h0 + 220, "the height grows by what the window grew");
    assert_eq!(png_size(&b.screenshot_png().unwrap()), (w1, h1));
}

#[test]
fn missing_binary_is_named() {
    // Only this test's process sees the variable: a child process of its own.
    if std::env::var_os("BROWSER_TEST_CHILD").is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["missing_binary_is_named", "--exact", "--nocapture"])
            .env("BROWSER_TEST_CHILD", "1")
            .env("PERISCOPE_CHROMEDRIVER", "/nonexistent/chromedriver")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        return;
    }
    let err = Browser::start(100, 100)
        .err()
        .expect("no chromedriver there");
    let msg = err.to_string();
    assert!(
        msg.contains("/nonexistent/chromedriver")
            && msg.contains("chromium-driver")
            && msg.contains("PERISCOPE_CHROMEDRIVER"),
        "{msg}"
    );
}
