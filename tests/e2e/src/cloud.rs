//! Harness for the cloud tests: the development cloud (`ocf-dev-cloud`) as a child process, a
//! tiny blocking HTTP/1.1 client for its API (plgd hub's shape: bearer tokens, device
//! authorisation codes, identity-CSR signing, devices, resource links, resources from the
//! shadow or the device), its event subscriptions over WebSocket, and a TCP proxy that can cut
//! the agent's cloud connection on demand.
//!
//! Everything that knows the API's paths and shapes is here: tests call [`DevCloud::resource`],
//! [`DevCloud::update`], [`DevCloud::is_online`], [`DevCloud::links`], [`DevCloud::events`]...

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
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
    /// The HTTPS API listener, when started with `--https`.
    pub https: Option<SocketAddr>,
    pub data_dir: PathBuf,
    extra: Vec<String>,
    how: Spawn,
    stderr: mpsc::Receiver<String>,
    log: Vec<String>,
    /// The user the API calls act for.
    user: Mutex<String>,
    /// Bearer tokens per user.
    tokens: Mutex<std::collections::HashMap<String, String>>,
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
        let mut https = None;
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
                    } else if let Some(v) = line.strip_prefix("ocf-dev-cloud: https ") {
                        addr(v.trim(), "https://").map(|a| https = Some(a))
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
            https,
            data_dir: data_dir.to_path_buf(),
            extra,
            how: how.clone(),
            stderr: err_rx,
            log: Vec::new(),
            user: Mutex::new("user".to_string()),
            tokens: Mutex::new(std::collections::HashMap::new()),
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
        // Tokens are stored by the cloud: they survive its restart, like the current user.
        *next.user.lock().unwrap() = self.user();
        *next.tokens.lock().unwrap() = self.tokens.lock().unwrap().clone();
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

    /// The HTTPS API's URL (`https://IP:PORT`); the cloud must have been started with `--https`.
    pub fn https_url(&self) -> String {
        format!(
            "https://{}",
            self.https.expect("the cloud was started without --https")
        )
    }

    /// The cloud's CA certificate (PEM file), the trust anchor of its HTTPS API.
    pub fn ca_file(&self) -> PathBuf {
        self.data_dir.join("ca.crt")
    }

    /// The console's address (`http://IP:PORT/`).
    pub fn console_url(&self) -> String {
        format!("http://{}/", self.http)
    }

    /// Acts as `user` from now on (the user a Mediator would log in as): the API calls below use
    /// a bearer token of that user, and `auth_code` issues codes for that user.
    pub fn login(&self, user: &str) {
        *self.user.lock().unwrap() = user.to_string();
    }

    /// The user the API calls act for (default `user`).
    pub fn user(&self) -> String {
        self.user.lock().unwrap().clone()
    }

    /// A bearer token of the current user.
    pub fn token(&self) -> String {
        self.token_for(&self.user())
    }

    /// A bearer token of `user`, from the cloud's OAuth token endpoint (client credentials of
    /// the dev cloud's client, whose secret is in `DATA-DIR/client-secret`); kept per user.
    pub fn token_for(&self, user: &str) -> String {
        self.try_token_for(user).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`DevCloud::token_for`] with errors instead of panics.
    pub fn try_token_for(&self, user: &str) -> Result<String, String> {
        if let Some(t) = self.tokens.lock().unwrap().get(user) {
            return Ok(t.clone());
        }
        let secret = std::fs::read_to_string(self.data_dir.join("client-secret"))
            .map_err(|e| format!("client-secret: {e}"))?;
        let form = format!(
            "grant_type=client_credentials&client_id=ocf-dev&client_secret={}&owner={}",
            secret.trim(),
            form_encode(user)
        );
        let r = try_request(
            self.http,
            "POST",
            "/oauth/token",
            Some(("application/x-www-form-urlencoded", form.into_bytes())),
            None,
        )?;
        let j = r.expect_ok("POST /oauth/token")?;
        let t = j["access_token"]
            .as_str()
            .ok_or_else(|| format!("POST /oauth/token: no access_token in {j}"))?
            .to_string();
        self.tokens
            .lock()
            .unwrap()
            .insert(user.to_string(), t.clone());
        Ok(t)
    }

    /// `GET path` with the current user's token.
    pub fn get(&self, path: &str) -> HttpResponse {
        self.call("GET", path, None)
    }

    /// `POST path` (JSON) with the current user's token.
    pub fn post(&self, path: &str, body: &Json) -> HttpResponse {
        self.call("POST", path, Some(body))
    }

    /// `PUT path` (JSON) with the current user's token.
    pub fn put(&self, path: &str, body: &Json) -> HttpResponse {
        self.call("PUT", path, Some(body))
    }

    /// `DELETE path` with the current user's token.
    pub fn delete(&self, path: &str) -> HttpResponse {
        self.call("DELETE", path, None)
    }

    /// A request with the current user's token.
    pub fn call(&self, method: &str, path: &str, body: Option<&Json>) -> HttpResponse {
        self.try_call(method, path, body)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`DevCloud::call`] with errors instead of panics.
    pub fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Json>,
    ) -> Result<HttpResponse, String> {
        let token = self.try_token_for(&self.user())?;
        let body = body.map(|b| ("application/json", serde_json::to_vec(b).expect("json")));
        try_request(self.http, method, path, body, Some(&token))
    }

    /// `GET /.well-known/hub-configuration` (public).
    pub fn hub_configuration(&self) -> Json {
        http(self.http, "GET", "/.well-known/hub-configuration", None)
            .expect_ok("hub-configuration")
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A single-use device authorisation code (`at`) for `user`, who becomes the current user.
    pub fn auth_code(&self, user: &str) -> String {
        self.try_auth_code(user).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `GET /authorize?response_type=code&client_id=ocf-device` as `user` (who becomes the
    /// current user): a single-use authorisation code for a device's sign-up.
    pub fn try_auth_code(&self, user: &str) -> Result<String, String> {
        self.login(user);
        let r = self.try_call(
            "GET",
            "/authorize?response_type=code&client_id=ocf-device",
            None,
        )?;
        let j = r.expect_ok("authorize")?;
        j["code"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("authorize: no code in {j}"))
    }

    /// Has the cloud's CA sign a CSR: (certificate PEM, CA PEM).
    pub fn sign_csr(&self, csr_pem: &str) -> (String, String) {
        self.try_sign_csr(csr_pem).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `POST /api/v1/sign/identity-csr` (plgd's certificate authority): the device's
    /// certificate (the first of the chain it answers) and the CA of `hub-configuration`.
    pub fn try_sign_csr(&self, csr_pem: &str) -> Result<(String, String), String> {
        let body =
            serde_json::json!({ "certificateSigningRequest": BASE64.encode(csr_pem.as_bytes()) });
        let j = self
            .try_call("POST", "/api/v1/sign/identity-csr", Some(&body))?
            .expect_ok("sign/identity-csr")?;
        let chain = j["certificate"]
            .as_str()
            .and_then(|b64| BASE64.decode(b64).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| format!("sign/identity-csr: no base64 certificate in {j}"))?;
        let end = "-----END CERTIFICATE-----";
        let leaf = chain
            .find(end)
            .map(|i| format!("{}\n", &chain[..i + end.len()]))
            .ok_or_else(|| format!("sign/identity-csr: no certificate in {chain:?}"))?;
        let conf = try_request(
            self.http,
            "GET",
            "/.well-known/hub-configuration",
            None,
            None,
        )?
        .expect_ok("hub-configuration")?;
        let ca = conf["certificateAuthorities"]
            .as_str()
            .ok_or("hub-configuration: no certificateAuthorities")?
            .to_string();
        Ok((leaf, ca))
    }

    /// `GET /api/v1/devices`: the current user's devices (plgd `Device` objects).
    pub fn devices(&self) -> Vec<Json> {
        self.try_devices().unwrap_or_else(|e| panic!("{e}"))
    }

    /// `GET /api/v1/devices`, with errors instead of panics.
    pub fn try_devices(&self) -> Result<Vec<Json>, String> {
        let r = self.try_call("GET", "/api/v1/devices", None)?;
        if r.status != 200 {
            return Err(format!("devices: HTTP {} {}", r.status, r.text()));
        }
        // A stream: one `{"result": Device}` per line.
        r.text()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let j: Json = serde_json::from_str(l).map_err(|e| format!("devices: {e}: {l}"))?;
                j.get("result")
                    .cloned()
                    .ok_or_else(|| format!("devices: no result in {l}"))
            })
            .collect()
    }

    /// The current user's device `di` (`GET /api/v1/devices/{di}`), if it has it.
    pub fn device(&self, di: &str) -> Option<Json> {
        let r = self.get(&format!("/api/v1/devices/{di}"));
        match r.status {
            200 => Some(r.json()),
            404 => None,
            s => panic!("GET /api/v1/devices/{di}: HTTP {s} {}", r.text()),
        }
    }

    /// Whether the cloud lists `di` online for the current user.
    pub fn is_online(&self, di: &str) -> bool {
        self.device(di).is_some_and(|d| online(&d))
    }

    /// The links `di` published (`resources` of `GET /api/v1/devices/{di}/resource-links`),
    /// empty if the cloud has none or does not know the device.
    pub fn links(&self, di: &str) -> Vec<Json> {
        let r = self.get(&format!("/api/v1/devices/{di}/resource-links"));
        if r.status != 200 {
            return Vec::new();
        }
        r.json()["resources"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Reads a resource from the device itself through the cloud
    /// (`GET /api/v1/devices/{di}/resources{href}?shadow=false`); [`HttpResponse::content`] is
    /// the representation.
    pub fn resource(&self, di: &str, href: &str) -> HttpResponse {
        self.get(&format!(
            "/api/v1/devices/{di}/resources{href}?shadow=false"
        ))
    }

    /// [`DevCloud::resource`] with errors instead of panics.
    pub fn try_resource(&self, di: &str, href: &str) -> Result<HttpResponse, String> {
        self.try_call(
            "GET",
            &format!("/api/v1/devices/{di}/resources{href}?shadow=false"),
            None,
        )
    }

    /// A handle on the API with the current user's token, for another thread.
    pub fn api(&self) -> Api {
        Api {
            http: self.http,
            token: self.token(),
        }
    }

    /// Reads a resource from the cloud's shadow (`GET /api/v1/devices/{di}/resources{href}`).
    pub fn shadow(&self, di: &str, href: &str) -> HttpResponse {
        self.get(&format!("/api/v1/devices/{di}/resources{href}"))
    }

    /// Updates a resource (`PUT /api/v1/devices/{di}/resources{href}`).
    pub fn update(&self, di: &str, href: &str, content: &Json) -> HttpResponse {
        self.put(&format!("/api/v1/devices/{di}/resources{href}"), content)
    }

    /// `GET /dev-cloud/api/v1/log`: `[{t, di, method, path, code, from}]`.
    pub fn request_log(&self) -> Vec<Json> {
        let r = self.get("/dev-cloud/api/v1/log");
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

    /// Subscribes to the events of `di` (`/api/v1/ws/events`, every kind).
    pub fn events(&self, di: &str) -> Events {
        Events::open(
            self.http,
            &self.token(),
            &serde_json::json!({
                "createSubscription": { "deviceIdFilter": [di] },
                "correlationId": "e2e",
            }),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for DevCloud {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The API with one user's token, `Send` (see [`DevCloud::api`]).
#[derive(Debug, Clone)]
pub struct Api {
    pub http: SocketAddr,
    token: String,
}

impl Api {
    /// Reads a resource from the device through the cloud
    /// (`GET /api/v1/devices/{di}/resources{href}?shadow=false`).
    pub fn try_resource(&self, di: &str, href: &str) -> Result<HttpResponse, String> {
        try_request(
            self.http,
            "GET",
            &format!("/api/v1/devices/{di}/resources{href}?shadow=false"),
            None,
            Some(&self.token),
        )
    }

    /// The cloud's device-side request log (`GET /dev-cloud/api/v1/log`).
    pub fn try_request_log(&self) -> Result<Vec<Json>, String> {
        let r = try_request(
            self.http,
            "GET",
            "/dev-cloud/api/v1/log",
            None,
            Some(&self.token),
        )?;
        let j = r.expect_ok("GET /dev-cloud/api/v1/log")?;
        Ok(j.as_array().cloned().unwrap_or_default())
    }

    /// Updates a resource (`PUT /api/v1/devices/{di}/resources{href}`).
    pub fn try_update(&self, di: &str, href: &str, content: &Json) -> Result<HttpResponse, String> {
        let body = (
            "application/json",
            serde_json::to_vec(content).expect("json"),
        );
        try_request(
            self.http,
            "PUT",
            &format!("/api/v1/devices/{di}/resources{href}"),
            Some(body),
            Some(&self.token),
        )
    }
}

/// Whether a plgd `Device` says ONLINE (`metadata.status.value`).
pub fn online(device: &Json) -> bool {
    device["metadata"]["status"]["value"] == "ONLINE"
}

/// An event subscription over the cloud's WebSocket (`/api/v1/ws/events`).
pub struct Events {
    socket: tungstenite::WebSocket<TcpStream>,
}

impl Events {
    /// Connects with `token` (as a browser does: subprotocols `Bearer, <token>`), sends
    /// `subscribe` and waits for its `operationProcessed`.
    pub fn open(addr: SocketAddr, token: &str, subscribe: &Json) -> Result<Events, String> {
        use tungstenite::client::IntoClientRequest;
        let stream = TcpStream::connect(addr).map_err(|e| format!("ws connect {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut req = format!("ws://{addr}/api/v1/ws/events")
            .into_client_request()
            .map_err(|e| e.to_string())?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            format!("Bearer, {token}")
                .parse()
                .map_err(|e| format!("{e}"))?,
        );
        let (socket, resp) =
            tungstenite::client(req, stream).map_err(|e| format!("ws handshake: {e}"))?;
        if resp
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            != Some("Bearer")
        {
            return Err(format!(
                "ws: the server chose no Bearer subprotocol: {resp:?}"
            ));
        }
        let mut ev = Events { socket };
        ev.send(subscribe)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let first = ev
            .next_event(deadline)
            .ok_or("ws: no answer to the subscription")?;
        if first["operationProcessed"]["errorStatus"]["code"] != "OK" {
            return Err(format!("ws: subscription refused: {first}"));
        }
        Ok(ev)
    }

    /// Sends a `SubscribeToEvents` message.
    pub fn send(&mut self, msg: &Json) -> Result<(), String> {
        self.socket
            .send(tungstenite::Message::text(msg.to_string()))
            .map_err(|e| format!("ws send: {e}"))
    }

    /// The next `Event` (the `result` of a message), or `None` if none comes before `deadline`.
    pub fn next_event(&mut self, deadline: Instant) -> Option<Json> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.socket
                .get_mut()
                .set_read_timeout(Some(left.max(Duration::from_millis(10))))
                .ok()?;
            match self.socket.read() {
                Ok(tungstenite::Message::Text(t)) => {
                    let j: Json = serde_json::from_str(t.as_str()).ok()?;
                    return j.get("result").cloned();
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
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

    /// The next `resourceChanged`: (href, content).
    pub fn next_change(&mut self, deadline: Instant) -> Option<(String, Json)> {
        loop {
            let ev = self.next_event(deadline)?;
            let rc = &ev["resourceChanged"];
            if let Some(href) = rc["resourceId"]["href"].as_str() {
                return Some((href.to_string(), rc["content"].clone()));
            }
        }
    }
}

/// Writes a secret to a new file of mode 0600.
pub fn write_private(path: &Path, secret: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(secret.as_bytes())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// The application/x-www-form-urlencoded percent-encode set of the WHATWG URL standard (§1.3):
/// all but ASCII alphanumerics and `*-._`. A space is left out of it: [`form_encode`] writes `+`.
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b' ');

/// A form name or value as the WHATWG URL standard serialises it (§5.2): a space as `+`, a `+`
/// as `%2B`.
fn form_encode(s: &str) -> String {
    utf8_percent_encode(s, FORM).to_string().replace(' ', "+")
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

    /// The representation in a resource answer (`data.content` of plgd's `ResourceRetrieved`,
    /// `ResourceUpdated` or shadow `Resource`).
    pub fn content(&self) -> Json {
        self.json()["data"]["content"].clone()
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

/// One blocking HTTP/1.1 request without a token (`Connection: close`), JSON body if given.
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
    let body = body.map(|b| ("application/json", serde_json::to_vec(b).expect("json")));
    try_request(addr, method, path, body, None)
}

/// One blocking HTTP/1.1 request (`Connection: close`, 30 s timeout): a body with its content
/// type, and a bearer token, if given.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
    token: Option<&str>,
) -> Result<HttpResponse, String> {
    let mut s =
        TcpStream::connect(addr).map_err(|e| format!("{method} {path}: connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| format!("timeout: {e}"))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\n"
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some((ct, b)) = &body {
        req.push_str(&format!(
            "Content-Type: {ct}\r\nContent-Length: {}\r\n",
            b.len()
        ));
    } else if method != "GET" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some((_, b)) = body {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_are_encoded_as_the_whatwg_url_standard_says() {
        assert_eq!(form_encode("alice"), "alice");
        assert_eq!(form_encode("a b+c"), "a+b%2Bc");
        assert_eq!(form_encode("*-._~"), "*-._%7E");
        assert_eq!(form_encode("100%&x=y/"), "100%25%26x%3Dy%2F");
        assert_eq!(form_encode("\u{e9}"), "%C3%A9");
        // What a form parser makes of it: `+` a space, then `%XX` decoded.
        for s in ["a b+c %2B", "?&=#\u{e9}\u{1f600}", "%zz %"] {
            let back = percent_encoding::percent_decode_str(&form_encode(s).replace('+', " "))
                .decode_utf8()
                .unwrap()
                .into_owned();
            assert_eq!(back, s);
        }
    }
}
