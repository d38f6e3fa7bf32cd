//! Harness for the cloud tests: the development cloud (`ocf-dev-cloud`) as a child process, a
//! tiny blocking HTTP/1.1 client for its JSON API and its server-sent events, and a TCP proxy
//! that can cut the agent's cloud connection on demand.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::{Spawn, Spawned};

/// A running `ocf-dev-cloud`, killed (by PID) when dropped.
pub struct DevCloud {
    pub child: Child,
    pub sid: String,
    /// The coaps+tcp listener.
    pub coaps: SocketAddr,
    /// The plain coap+tcp listener.
    pub coap_plain: Option<SocketAddr>,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    extra: Vec<String>,
    how: Spawn,
    stderr: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl DevCloud {
    /// Starts the cloud on loopback with OS-chosen ports (coaps+tcp, plain coap+tcp, HTTP).
    pub fn start(data_dir: &Path, extra: &[&str]) -> DevCloud {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        DevCloud::spawn(
            data_dir,
            "127.0.0.1:0",
            "127.0.0.1:0",
            "127.0.0.1:0",
            extra,
            &Spawn::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the cloud on the given listener addresses (`IP:0`: a port chosen by the OS; an
    /// empty `plain`: no plain coap+tcp listener) as `how` says; an error if it does not print `ocf-dev-cloud: ready` within 30 s.
    pub fn spawn(
        data_dir: &Path,
        coaps: &str,
        plain: &str,
        http: &str,
        extra: Vec<String>,
        how: &Spawn,
    ) -> Result<DevCloud, String> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| format!("cloud data dir {}: {e}", data_dir.display()))?;
        let mut args: Vec<String> = ["--coap", coaps, "--http", http, "--data-dir"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(data_dir.display().to_string());
        if !plain.is_empty() {
            args.push("--coap-plain".into());
            args.push(plain.into());
        }
        args.extend(extra.iter().cloned());
        let Spawned {
            mut child,
            stdout: rx,
            stderr: err_rx,
        } = how.start("ocf-dev-cloud", &args)?;
        let addr = |v: &str, scheme: &str| -> Result<SocketAddr, String> {
            v.strip_prefix(scheme)
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| format!("ocf-dev-cloud: unexpected address line {v:?}"))
        };
        let (mut sid, mut coaps, mut coap_plain, mut http) = (None, None, None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        let parsed = loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    let r = if let Some(v) = line.strip_prefix("ocf-dev-cloud: sid ") {
                        sid = Some(v.trim().to_string());
                        Ok(())
                    } else if let Some(v) = line.strip_prefix("ocf-dev-cloud: coap ") {
                        addr(v.trim(), "coaps+tcp://").map(|a| coaps = Some(a))
                    } else if let Some(v) = line.strip_prefix("ocf-dev-cloud: coap-plain ") {
                        addr(v.trim(), "coap+tcp://").map(|a| coap_plain = Some(a))
                    } else if let Some(v) = line.strip_prefix("ocf-dev-cloud: http ") {
                        addr(v.trim(), "http://").map(|a| http = Some(a))
                    } else if line.trim() == "ocf-dev-cloud: ready" {
                        break Ok(());
                    } else {
                        Ok(())
                    };
                    if let Err(e) = r {
                        break Err(e);
                    }
                }
                Err(_) => return Err(how.not_ready("ocf-dev-cloud", &mut child, &err_rx)),
            }
        };
        let (Ok(()), Some(sid), Some(coaps), Some(http)) = (parsed.clone(), sid, coaps, http)
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(parsed.err().unwrap_or_else(|| {
                "ocf-dev-cloud: ready without its sid, coap and http lines".to_string()
            }));
        };
        // Keep draining stdout so the cloud never blocks on a full pipe.
        std::thread::spawn(move || for _ in rx {});
        Ok(DevCloud {
            child,
            sid,
            coaps,
            coap_plain,
            http,
            data_dir: data_dir.to_path_buf(),
            extra,
            how: how.clone(),
            stderr: err_rx,
            log: Vec::new(),
        })
    }

    /// `coaps+tcp://IP:PORT` of the cloud.
    pub fn cis(&self) -> String {
        format!("coaps+tcp://{}", self.coaps)
    }

    /// `coap+tcp://IP:PORT` of the plain listener.
    pub fn cis_plain(&self) -> String {
        format!("coap+tcp://{}", self.coap_plain.expect("plain listener"))
    }

    /// Kills the cloud (SIGKILL: no goodbye to the devices) and starts it again on the same
    /// ports with the same data directory.
    pub fn restart(&mut self) {
        self.kill();
        let plain = self.coap_plain.map(|a| a.to_string()).unwrap_or_default();
        let mut next = None;
        // The ports were just released; retry briefly in case one is still held.
        for _ in 0..20 {
            match DevCloud::spawn(
                &self.data_dir,
                &self.coaps.to_string(),
                &plain,
                &self.http.to_string(),
                self.extra.clone(),
                &self.how,
            ) {
                Ok(c) => {
                    next = Some(c);
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        }
        let next = next.expect("restart ocf-dev-cloud");
        assert_eq!(next.sid, self.sid, "sid survives a restart");
        let old = std::mem::replace(self, next);
        drop(old);
    }

    /// Kills the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Everything the cloud wrote to stderr so far.
    pub fn stderr_log(&mut self) -> &[String] {
        self.log.extend(self.stderr.try_iter());
        &self.log
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        http(self.http, "GET", path, None)
    }

    pub fn post(&self, path: &str, body: &Json) -> HttpResponse {
        http(self.http, "POST", path, Some(body))
    }

    pub fn delete(&self, path: &str) -> HttpResponse {
        http(self.http, "DELETE", path, None)
    }

    /// A single-use authorisation code for the sign-up.
    pub fn auth_code(&self, user: &str) -> String {
        self.try_auth_code(user).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `POST /api/v1/authcodes`: a single-use authorisation code for `user`.
    pub fn try_auth_code(&self, user: &str) -> Result<String, String> {
        let r = try_http(
            self.http,
            "POST",
            "/api/v1/authcodes",
            Some(&serde_json::json!({ "user": user })),
        )?;
        let j = r.expect_ok("authcodes")?;
        j["code"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("authcodes: no code in {j}"))
    }

    /// Has the cloud's CA sign a CSR: (certificate PEM, CA PEM).
    pub fn sign_csr(&self, csr_pem: &str) -> (String, String) {
        self.try_sign_csr(csr_pem).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `POST /api/v1/csr`: (certificate PEM, CA PEM).
    pub fn try_sign_csr(&self, csr_pem: &str) -> Result<(String, String), String> {
        let r = try_http(
            self.http,
            "POST",
            "/api/v1/csr",
            Some(&serde_json::json!({ "csr_pem": csr_pem })),
        )?;
        let j = r.expect_ok("csr")?;
        match (j["certificate_pem"].as_str(), j["ca_pem"].as_str()) {
            (Some(cert), Some(ca)) => Ok((cert.to_string(), ca.to_string())),
            _ => Err(format!("csr: no certificate_pem and ca_pem in {j}")),
        }
    }

    /// `GET /api/v1/devices`.
    pub fn devices(&self) -> Vec<Json> {
        self.try_devices().unwrap_or_else(|e| panic!("{e}"))
    }

    /// `GET /api/v1/devices`, with errors instead of panics.
    pub fn try_devices(&self) -> Result<Vec<Json>, String> {
        let j = try_http(self.http, "GET", "/api/v1/devices", None)?.expect_ok("devices")?;
        j.as_array()
            .cloned()
            .ok_or_else(|| format!("devices: not an array: {j}"))
    }

    /// The entry of `di` in `GET /api/v1/devices`.
    pub fn device(&self, di: &str) -> Option<Json> {
        self.devices().into_iter().find(|d| d["di"] == di)
    }

    /// `GET /api/v1/log`: `[{t, di, method, path, code}]`.
    pub fn request_log(&self) -> Vec<Json> {
        let r = self.get("/api/v1/log");
        assert_eq!(r.status, 200, "log: {}", r.text());
        r.json().as_array().cloned().unwrap_or_default()
    }

    /// Log entries of `di` with this method whose path starts with `path`.
    pub fn requests(&self, di: &str, method: &str, path: &str) -> Vec<Json> {
        self.request_log()
            .into_iter()
            .filter(|e| {
                e["di"] == di
                    && e["method"]
                        .as_str()
                        .is_some_and(|m| m.eq_ignore_ascii_case(method))
                    && e["path"].as_str().is_some_and(|p| p.starts_with(path))
            })
            .collect()
    }

    /// Opens `GET /api/v1/devices/{di}/events`.
    pub fn events(&self, di: &str) -> Sse {
        Sse::open(self.http, &format!("/api/v1/devices/{di}/events"))
    }
}

impl Drop for DevCloud {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A CoAP code from the cloud's log (`"4.01"`, `129`, or `401`), as `class.detail`.
pub fn coap_code(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Number(n) => match n.as_u64() {
            Some(c) if c < 256 => format!("{}.{:02}", c >> 5, c & 0x1f),
            Some(c) => format!("{}.{:02}", c / 100, c % 100),
            None => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Json {
        self.try_json().unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_json(&self) -> Result<Json, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("not JSON ({e}): {:?}", self.text()))
    }

    /// The JSON body of a 2xx answer, or an error naming `what`, the status and the body.
    pub fn expect_ok(&self, what: &str) -> Result<Json, String> {
        if self.status / 100 != 2 {
            return Err(format!(
                "{what}: HTTP {} {}",
                self.status,
                self.text().trim()
            ));
        }
        self.try_json().map_err(|e| format!("{what}: {e}"))
    }
}

/// One blocking HTTP/1.1 request (`Connection: close`), JSON body if given.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&Json>) -> HttpResponse {
    try_http(addr, method, path, body).unwrap_or_else(|e| panic!("{e}"))
}

/// [`http`] with errors instead of panics (30 s timeout).
pub fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Json>,
) -> Result<HttpResponse, String> {
    let mut s =
        TcpStream::connect(addr).map_err(|e| format!("{method} {path}: connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| format!("timeout: {e}"))?;
    let body = body.map(|b| serde_json::to_vec(b).expect("json"));
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\n"
    );
    if let Some(b) = &body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    } else if method != "GET" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        bytes.extend(b);
    }
    s.write_all(&bytes)
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let split = find(&raw, b"\r\n\r\n").ok_or_else(|| {
        format!(
            "{method} {path}: no header end: {:?}",
            String::from_utf8_lossy(&raw)
        )
    })?;
    let (status, headers) =
        try_parse_head(&raw[..split]).map_err(|e| format!("{method} {path}: {e}"))?;
    let rest = &raw[split + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        let mut d = Dechunker::default();
        d.push(rest);
        d.out
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(head: &[u8]) -> (u16, Vec<(String, String)>) {
    try_parse_head(head).unwrap_or_else(|e| panic!("{e}"))
}

fn try_parse_head(head: &[u8]) -> Result<(u16, Vec<(String, String)>), String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok((status, headers))
}

/// Incremental decoder of `Transfer-Encoding: chunked`.
#[derive(Default)]
struct Dechunker {
    buf: Vec<u8>,
    out: Vec<u8>,
    done: bool,
}

impl Dechunker {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        while !self.done {
            let Some(eol) = find(&self.buf, b"\r\n") else {
                return;
            };
            let size_text = String::from_utf8_lossy(&self.buf[..eol]);
            let size_text = size_text
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            let Ok(size) = usize::from_str_radix(&size_text, 16) else {
                self.done = true;
                return;
            };
            if size == 0 {
                self.done = true;
                return;
            }
            if self.buf.len() < eol + 2 + size + 2 {
                return;
            }
            self.out
                .extend_from_slice(&self.buf[eol + 2..eol + 2 + size]);
            self.buf.drain(..eol + 2 + size + 2);
        }
    }
}

/// A server-sent events stream (`text/event-stream`).
pub struct Sse {
    stream: TcpStream,
    chunked: bool,
    dechunker: Dechunker,
    text: String,
}

/// One event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

impl Sse {
    fn open(addr: SocketAddr, path: &str) -> Sse {
        let mut s = TcpStream::connect(addr).expect("connect for SSE");
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
        s.write_all(req.as_bytes()).expect("write SSE request");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let split = loop {
            if let Some(i) = find(&raw, b"\r\n\r\n") {
                break i;
            }
            let n = s.read(&mut buf).expect("SSE response head");
            assert!(n > 0, "SSE connection closed before the head");
            raw.extend_from_slice(&buf[..n]);
        };
        let (status, headers) = parse_head(&raw[..split]);
        assert_eq!(
            status,
            200,
            "SSE {path}: {:?}",
            String::from_utf8_lossy(&raw)
        );
        let chunked = headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
        });
        let mut sse = Sse {
            stream: s,
            chunked,
            dechunker: Dechunker::default(),
            text: String::new(),
        };
        let rest = raw[split + 4..].to_vec();
        sse.feed(&rest);
        sse
    }

    fn feed(&mut self, bytes: &[u8]) {
        if self.chunked {
            self.dechunker.push(bytes);
            let out = std::mem::take(&mut self.dechunker.out);
            self.text.push_str(&String::from_utf8_lossy(&out));
        } else {
            self.text.push_str(&String::from_utf8_lossy(bytes));
        }
        // Normalise line ends so events split on "\n\n".
        if self.text.contains('\r') {
            self.text = self.text.replace("\r\n", "\n");
        }
    }

    /// The next event, or `None` if none arrives before `deadline`.
    pub fn next_event(&mut self, deadline: Instant) -> Option<SseEvent> {
        let mut buf = [0u8; 4096];
        loop {
            while let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                let mut ev = SseEvent {
                    event: "message".into(),
                    data: String::new(),
                };
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim().to_string();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if !ev.data.is_empty() {
                            ev.data.push('\n');
                        }
                        ev.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                        any = true;
                    }
                }
                if any {
                    return Some(ev);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(10))))
                .ok()?;
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.feed(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                Err(_) => return None,
            }
        }
    }
}

/// A TCP forwarder between the agent and the cloud: [`Proxy::cut`] drops every connection it
/// carries, as a network failure would.
pub struct Proxy {
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, a, st) = (conns.clone(), accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(inbound) = inbound else { continue };
                let Ok(outbound) = TcpStream::connect(target) else {
                    continue;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                a.fetch_add(1, Ordering::SeqCst);
                let mut list = c.lock().unwrap();
                for s in [&inbound, &outbound] {
                    if let Ok(s) = s.try_clone() {
                        list.push(s);
                    }
                }
                drop(list);
                for (mut from, mut to) in [
                    (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                    (outbound, inbound),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy {
            addr,
            conns,
            accepted,
            stop,
        }
    }

    /// Drops every connection going through the proxy.
    pub fn cut(&self) {
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        self.cut();
    }
}

/// Polls `f` every 100 ms until it gives `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
