//! The dev cloud's web console in a real browser: headless Chromium driven through
//! chromedriver's W3C WebDriver HTTP API (a few JSON requests), while the agent on the sim
//! board runs, onboarded by the Mediator. The device shows online; clicking the switch
//! switches the device (read back through the API); a change made elsewhere and the drifting
//! temperature appear without a reload; the chart has points; the factory reset asks first.
//! A screenshot goes to `target/console.png`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`cargo xtask test` installs them).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use ocf_e2e::cloud::DevCloud;
use ocf_e2e::mediator::{pin_file, Mediator, SecureAgent};
use ocf_e2e::TempDir;
use serde_json::{json, Value as Json};

const PIN: &str = "27182818";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver, killed by PID when dropped.
struct Driver {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn find_program(names: &[&str]) -> PathBuf {
    for n in names {
        for dir in ["/usr/bin", "/usr/lib/chromium"] {
            let p = Path::new(dir).join(n);
            if p.exists() {
                return p;
            }
        }
    }
    panic!("{names:?} not found: install Debian's chromium and chromium-driver (cargo xtask test does)");
}

impl Driver {
    fn start(log: &Path) -> Driver {
        let port = free_port();
        let child = Command::new(find_program(&["chromedriver"]))
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let d = Driver { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while d.call("GET", "/status", None).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    /// One WebDriver command: the `value` of its answer, or its error. chromedriver keeps the
    /// connection open whatever the request says, so the body is read by its Content-Length.
    fn call(&self, method: &str, path: &str, body: Option<&Json>) -> Result<Json, String> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut s = TcpStream::connect(self.addr).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .map_err(|e| e.to_string())?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("{method} {path}: bad status line {line:?}"))?;
        let mut len = 0usize;
        loop {
            line.clear();
            r.read_line(&mut line).map_err(|e| e.to_string())?;
            if line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut buf = vec![0u8; len];
        r.read_exact(&mut buf).map_err(|e| e.to_string())?;
        let j: Json = serde_json::from_slice(&buf).map_err(|e| format!("{method} {path}: {e}"))?;
        if status != 200 {
            return Err(format!("{method} {path}: {status} {}", j["value"]));
        }
        Ok(j["value"].clone())
    }
}

struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

impl Session<'_> {
    fn cmd(&self, method: &str, what: &str, body: Option<&Json>) -> Result<Json, String> {
        self.driver
            .call(method, &format!("/session/{}{what}", self.id), body)
    }

    fn find(&self, css: &str) -> Option<String> {
        let v = self.cmd(
            "POST",
            "/element",
            Some(&json!({"using": "css selector", "value": css})),
        );
        v.ok()?[ELEMENT].as_str().map(str::to_string)
    }

    fn wait_find(&self, css: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(e) = self.find(css) {
                return e;
            }
            if Instant::now() > deadline {
                let page = self
                    .cmd(
                        "POST",
                        "/execute/sync",
                        Some(&json!({"script": "return document.body.innerText;", "args": []})),
                    )
                    .unwrap_or_default();
                panic!("no {css} on the page after {limit:?}; the page reads:\n{page}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn text(&self, element: &str) -> String {
        self.cmd("GET", &format!("/element/{element}/text"), None)
            .unwrap()
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn script(&self, script: &str) -> Json {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": []})),
        )
        .unwrap()
    }

    fn click(&self, element: &str) {
        self.cmd(
            "POST",
            &format!("/element/{element}/click"),
            Some(&json!({})),
        )
        .unwrap();
    }
}

fn wait_until<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_console_shows_the_device_live_and_drives_it() {
    let dir = TempDir::new("console");
    let cloud = DevCloud::start(&dir.path().join("cloud"), &[]);
    let pin = pin_file(dir.path(), PIN);
    let agent = SecureAgent::start(&dir.path().join("state"), Some(&pin), &[]);
    let med = Mediator::new(&dir.path().join("mediator"));
    med.token_from(&cloud);
    let di = agent.di.clone();

    let driver = Driver::start(&dir.path().join("chromedriver.log"));
    let profile = dir.path().join("chromium-profile");
    // Root, no sandbox, no GPU; nothing reaching out to the network (it is closed here).
    let args = json!([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        format!("--user-data-dir={}", profile.display()),
    ]);
    let caps = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {"binary": find_program(&["chromium"]).display().to_string(), "args": args},
    }}});
    let session = driver
        .call("POST", "/session", Some(&caps))
        .unwrap_or_else(|e| panic!("a Chromium session: {e}"));
    let s = Session {
        driver: &driver,
        id: session["sessionId"].as_str().unwrap().to_string(),
    };

    // Open the console before the device exists: it must appear and come online by itself.
    let url = format!("{}#token={}", cloud.console_url(), cloud.token());
    s.cmd("POST", "/url", Some(&json!({ "url": url }))).unwrap();
    s.wait_find("#live.on", Duration::from_secs(10));
    let run = med.onboard(PIN, &agent.ep, &format!("http://{}", cloud.http), &[]);
    assert!(run.ok(), "{}", run.output());
    let card = format!(".device[data-di=\"{di}\"]");
    s.wait_find(
        &format!("{card}[data-online=\"true\"]"),
        Duration::from_secs(20),
    );
    let badge = s.wait_find(&format!("{card} [data-status]"), Duration::from_secs(5));
    assert_eq!(s.text(&badge), "online");
    assert!(s
        .text(&s.wait_find(&format!("{card} h3"), Duration::from_secs(1)))
        .contains("Simulated sensor"));

    // The switch: a click on the page switches the device.
    let switch_css = format!("{card} .res[data-href=\"/switch\"] input[data-control=switch]");
    s.wait_find(&switch_css, Duration::from_secs(10));
    let value = |cloud: &DevCloud| cloud.resource(&di, "/switch").content()["value"].clone();
    assert_eq!(value(&cloud), json!(false));
    let label = s.wait_find(
        &format!("{card} .res[data-href=\"/switch\"] label.switch"),
        Duration::from_secs(5),
    );
    s.click(&label);
    wait_until(Duration::from_secs(10), "the device's switch on", || {
        (value(&cloud) == json!(true)).then_some(())
    });

    // A change made elsewhere arrives on the page without a reload (pushed by the events).
    let checked = |s: &Session| {
        s.script(&format!(
            "return document.querySelector('{}').checked;",
            switch_css.replace('\'', "\\'")
        ))
    };
    let r = cloud.update(&di, "/switch", &json!({"value": false}));
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until(Duration::from_secs(10), "the page's switch off", || {
        (checked(&s) == json!(false)).then_some(())
    });
    let temp = s.wait_find(
        &format!("{card} .res[data-href=\"/temperature\"] [data-value]"),
        Duration::from_secs(5),
    );
    let first = s.text(&temp);
    assert!(first.ends_with("°C"), "{first:?}");
    wait_until(
        Duration::from_secs(20),
        "a new temperature on the page",
        || {
            let now = s.text(&temp);
            (now != first && now.ends_with("°C")).then_some(())
        },
    );

    // The chart has points (every reading since the page opened).
    let chart = format!("{card} .res[data-href=\"/temperature\"] svg[data-chart]");
    let points = wait_until(Duration::from_secs(20), "chart points", || {
        let n = s.script(&format!(
            "return Number(document.querySelector('{}').getAttribute('data-points'));",
            chart.replace('\'', "\\'")
        ));
        n.as_u64().filter(|n| *n >= 6)
    });
    assert!(s.find(&format!("{chart} polyline")).is_some());

    // Factory reset asks first; dismissed, nothing happens.
    let reset = s.wait_find(
        &format!("{card} button[data-action=factory-reset]"),
        Duration::from_secs(5),
    );
    s.click(&reset);
    let question = s.cmd("GET", "/alert/text", None).unwrap();
    assert!(
        question
            .as_str()
            .unwrap_or_default()
            .contains("Factory-reset"),
        "{question}"
    );
    s.cmd("POST", "/alert/dismiss", Some(&json!({}))).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(cloud.is_online(&di), "the dismissed reset reset the device");

    // The request log fills from the API too.
    s.wait_find("#log tbody tr", Duration::from_secs(10));

    // The screenshot, for a person (and the README).
    let png = s.cmd("GET", "/screenshot", None).unwrap();
    let png = base64::engine::general_purpose::STANDARD
        .decode(png.as_str().unwrap())
        .expect("base64 PNG");
    assert!(png.starts_with(b"\x89PNG"));
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("console.png");
    std::fs::write(&target, &png).unwrap();
    eprintln!(
        "console: {points} chart points; screenshot {}",
        target.display()
    );
    let _ = s.cmd("DELETE", "", None);
    drop(agent);
}
