//! Integration tests: the `ocf-dev-cloud` binary on loopback (ports chosen by the OS), played
//! against by a device written here over rustls (or plain TCP) and the shared `TcpConnection`.

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coap_lite::option_value::OptionValueU32;
use coap_lite::{CoapOption, MessageClass, Packet, RequestType, ResponseType};
use ocf::cloud::payload::{from_cbor, to_cbor};
use ocf::coap::tcp_conn::{ConnEvent, TcpConnection};
use ocf::resource::{Method, Request};
use ocf::x509::certificates_from_pem;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use rustls::pki_types::{PrivateKeyDer, ServerName};
use serde_json::{json, Value};

mod contract;

const TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The cloud process
// ---------------------------------------------------------------------------------------------

struct Cloud {
    child: Child,
    dir: PathBuf,
    data: PathBuf,
    sid: String,
    coap: SocketAddr,
    plain: Option<SocketAddr>,
    http: SocketAddr,
    /// The user the API calls act for (set by `authcode`).
    user: std::cell::RefCell<String>,
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ocf-dev-cloud-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn addr_of(line: &str) -> SocketAddr {
    let s = line.rsplit("://").next().unwrap();
    s.parse().unwrap_or_else(|e| panic!("{line}: {e}"))
}

impl Cloud {
    fn start(dir: &std::path::Path, extra: &[&str]) -> Cloud {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("stderr.log"))
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ocf-dev-cloud"))
            .args([
                "--coap",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(dir.join("data"))
            .args(extra)
            .env("OCF_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line == "ocf-dev-cloud: ready" => break,
                Ok(line) => lines.push(line),
                Err(_) => {
                    let _ = child.kill();
                    panic!("the cloud did not get ready: {lines:?}");
                }
            }
        }
        let find = |prefix: &str| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(prefix))
                .map(str::to_owned)
        };
        let sid = find("ocf-dev-cloud: sid ").expect("sid line");
        let coap = addr_of(&find("ocf-dev-cloud: coap ").expect("coap line"));
        assert!(find("ocf-dev-cloud: coap ")
            .unwrap()
            .starts_with("coaps+tcp://"));
        let plain = find("ocf-dev-cloud: coap-plain ").map(|l| {
            assert!(l.starts_with("coap+tcp://"));
            addr_of(&l)
        });
        let http = addr_of(&find("ocf-dev-cloud: http ").expect("http line"));
        Cloud {
            child,
            dir: dir.to_owned(),
            data: dir.join("data"),
            sid,
            coap,
            plain,
            http,
            user: std::cell::RefCell::new("user".to_owned()),
        }
    }

    /// SIGTERM and wait: returns the exit code.
    fn stop(mut self) -> Option<i32> {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on the PID of our own child, which has not been reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A bearer token of `user` from the cloud's OAuth token endpoint (client credentials).
    fn token_of(&self, user: &str) -> String {
        let secret = std::fs::read_to_string(self.data.join("client-secret")).unwrap();
        let form = format!(
            "grant_type=client_credentials&client_id=ocf-dev&client_secret={}&owner={user}",
            secret.trim()
        );
        let (status, head, text) = http_raw(
            self.http,
            "POST",
            "/oauth/token",
            Some(("application/x-www-form-urlencoded", &form)),
            "",
        );
        assert_eq!(status, 200, "{text}");
        assert!(head.contains("cache-control: no-store"), "{head}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["token_type"], "Bearer");
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// A token of the current user.
    fn token(&self) -> String {
        let user = self.user.borrow().clone();
        self.token_of(&user)
    }

    fn get(&self, path: &str) -> (u16, Value) {
        let (status, _, body) = http(self.http, "GET", path, None, &self.token());
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, _, body) = http(
            self.http,
            "POST",
            path,
            Some(&body.to_string()),
            &self.token(),
        );
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// `GET /.well-known/hub-configuration`, without a token.
    fn hub_configuration(&self) -> Value {
        let (status, _, body) = http(self.http, "GET", "/.well-known/hub-configuration", None, "");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// `GET /api/v1/devices`: the current user's devices (one `{"result"}` per line).
    fn devices(&self) -> Vec<Value> {
        let (status, _, body) = http(self.http, "GET", "/api/v1/devices", None, &self.token());
        assert_eq!(status, 200, "{body}");
        body.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["result"].clone())
            .collect()
    }

    /// A device authorisation code for `user`, who becomes the current user.
    fn authcode(&self, user: &str) -> String {
        *self.user.borrow_mut() = user.to_owned();
        let (status, body) = self.get("/authorize?response_type=code&client_id=ocf-device");
        assert_eq!(status, 200, "{body}");
        body["code"].as_str().unwrap().to_owned()
    }

    fn log(&self) -> Vec<Value> {
        let (status, body) = self.get("/dev-cloud/api/v1/log");
        assert_eq!(status, 200);
        body.as_array().unwrap().clone()
    }

    fn count(&self, from: &str, method: &str, path: &str, code: Option<&str>) -> usize {
        self.log()
            .iter()
            .filter(|e| {
                e["from"] == from
                    && e["method"] == method
                    && e["path"] == path
                    && code.is_none_or(|c| e["code"] == c)
            })
            .count()
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

type Ws = tungstenite::WebSocket<TcpStream>;

/// Opens `/api/v1/ws/events` as a browser does (the token as the subprotocol `Bearer, <token>`),
/// sends `subscribe` and checks its `operationProcessed`.
fn subscribe(cloud: &Cloud, subscribe: &Value) -> Ws {
    use tungstenite::client::IntoClientRequest;
    let stream = TcpStream::connect(cloud.http).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut req = format!("ws://{}/api/v1/ws/events", cloud.http)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        format!("Bearer, {}", cloud.token()).parse().unwrap(),
    );
    let (mut ws, resp) = tungstenite::client(req, stream).unwrap();
    assert_eq!(
        resp.headers()["sec-websocket-protocol"].to_str().unwrap(),
        "Bearer"
    );
    ws.send(tungstenite::Message::text(subscribe.to_string()))
        .unwrap();
    let ack = ws_next(&mut ws).expect("operationProcessed");
    assert_eq!(
        ack["operationProcessed"]["errorStatus"]["code"], "OK",
        "{ack}"
    );
    assert!(ack["subscriptionId"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    ws
}

/// The next event (`result` of a message), `None` after [`TIMEOUT`].
fn ws_next(ws: &mut Ws) -> Option<Value> {
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                return Some(v["result"].clone());
            }
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

fn online(d: &Value) -> bool {
    d["metadata"]["status"]["value"] == "ONLINE"
}

/// A minimal HTTP/1.1 client with a bearer token (`""`: none), JSON body: (status, head, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: &str,
) -> (u16, String, String) {
    http_raw(
        addr,
        method,
        path,
        body.map(|b| ("application/json", b)),
        token,
    )
}

/// [`http`] with any content type.
fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<(&str, &str)>,
    token: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let (ct, body) = body.unwrap_or(("application/json", ""));
    let auth = if token.is_empty() {
        String::new()
    } else {
        format!("Authorization: Bearer {token}\r\n")
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: {ct}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, head.to_ascii_lowercase(), body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Identities
// ---------------------------------------------------------------------------------------------

struct Identity {
    di: String,
    key: KeyPair,
    cert_pem: String,
    ca_pem: String,
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                B64[((n >> (18 - 6 * i)) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

fn unb64(s: &str) -> Vec<u8> {
    let (mut bits, mut n, mut out) = (0u32, 0, Vec::new());
    for c in s.bytes().take_while(|c| *c != b'=') {
        let v = B64.iter().position(|x| *x == c).expect("base64") as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

fn new_di() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A device identity certificate from the cloud's CSR endpoint, for `cn_di`.
fn identity(cloud: &Cloud, cn_di: &str) -> Identity {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("uuid:{cn_di}"));
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let (status, body) = cloud.post(
        "/api/v1/sign/identity-csr",
        &json!({ "certificateSigningRequest": b64(csr.as_bytes()) }),
    );
    assert_eq!(status, 200, "{body}");
    let chain = String::from_utf8(unb64(body["certificate"].as_str().unwrap())).unwrap();
    let end = "-----END CERTIFICATE-----";
    let leaf = &chain[..chain.find(end).unwrap() + end.len()];
    Identity {
        di: cn_di.to_owned(),
        key,
        cert_pem: format!("{leaf}\n"),
        ca_pem: cloud.hub_configuration()["certificateAuthorities"]
            .as_str()
            .unwrap()
            .to_owned(),
    }
}

fn client_config(id: &Identity, tls12_only: bool) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(certificates_from_pem(&id.ca_pem).unwrap().remove(0))
        .unwrap();
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let provider = if tls12_only {
        Arc::new(rustls::crypto::CryptoProvider {
            cipher_suites: vec![
                rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            ],
            ..(*provider).clone()
        })
    } else {
        provider
    };
    let chain = vec![certificates_from_pem(&id.cert_pem).unwrap().remove(0)];
    let key = PrivateKeyDer::Pkcs8(id.key.serialize_der().into());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap(),
    )
}

// ---------------------------------------------------------------------------------------------
// The device side
// ---------------------------------------------------------------------------------------------

trait Io: Read + Write + Send {}
impl<T: Read + Write + Send> Io for T {}

struct Device {
    io: Box<dyn Io>,
    conn: TcpConnection,
    inbox: VecDeque<Packet>,
    raw: Vec<u8>,
    pings: usize,
    answer_pings: bool,
    eof: bool,
    next_token: u64,
}

impl Device {
    fn tls(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Device {
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_nodelay(true).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
        let conn = rustls::ClientConnection::new(config, name).unwrap();
        Device::over(Box::new(rustls::StreamOwned::new(conn, sock)))
    }

    fn plain(addr: SocketAddr) -> Device {
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_nodelay(true).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Device::over(Box::new(sock))
    }

    fn over(io: Box<dyn Io>) -> Device {
        Device {
            io,
            conn: TcpConnection::new(64 * 1024),
            inbox: VecDeque::new(),
            raw: Vec::new(),
            pings: 0,
            answer_pings: true,
            eof: false,
            next_token: 0x0102_0304_0506_0700,
        }
    }

    fn send_csm(&mut self) {
        let csm = self.conn.start();
        self.write(&csm);
    }

    fn write(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).unwrap();
        self.io.flush().unwrap();
    }

    fn send(&mut self, p: &Packet) {
        let bytes = self.conn.encode(p).unwrap();
        self.write(&bytes);
    }

    /// Reads once (up to the socket timeout); false at EOF or on an error.
    fn pump(&mut self) -> bool {
        if self.eof {
            return false;
        }
        let mut buf = [0u8; 16 * 1024];
        match self.io.read(&mut buf) {
            Ok(0) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.raw.extend_from_slice(&buf[..n]);
                for ev in self.conn.receive(&buf[..n]) {
                    match ev {
                        ConnEvent::Message(p) => self.inbox.push_back(p),
                        ConnEvent::Transmit(b) => {
                            self.pings += 1;
                            if self.answer_pings {
                                self.write(&b);
                            }
                        }
                        ConnEvent::Pong { .. } => {}
                        ConnEvent::Close { .. } => {
                            self.eof = true;
                            return false;
                        }
                    }
                }
                true
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                true
            }
            Err(_) => {
                self.eof = true;
                false
            }
        }
    }

    fn token(&mut self) -> Vec<u8> {
        self.next_token += 1;
        self.next_token.to_be_bytes().to_vec()
    }

    /// Sends a request and waits for its response; other messages stay in the inbox.
    fn request(&mut self, mut p: Packet) -> Packet {
        let token = self.token();
        p.set_token(token.clone());
        self.send(&p);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(i) = self
                .inbox
                .iter()
                .position(|m| m.get_token() == token && is_response(m))
            {
                return self.inbox.remove(i).unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "no response to {:?}",
                p.header.code
            );
            assert!(
                self.pump(),
                "connection closed while waiting for a response"
            );
        }
    }

    /// The next request the cloud sends.
    fn expect_request(&mut self) -> Packet {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(i) = self.inbox.iter().position(|m| !is_response(m)) {
                return self.inbox.remove(i).unwrap();
            }
            assert!(Instant::now() < deadline, "no request from the cloud");
            assert!(self.pump(), "connection closed while waiting for a request");
        }
    }

    fn respond(
        &mut self,
        req: &Packet,
        code: ResponseType,
        body: Option<Value>,
        observe: Option<u32>,
    ) {
        let mut p = Packet::new();
        p.header.code = MessageClass::Response(code);
        p.set_token(req.get_token().to_vec());
        if let Some(o) = observe {
            p.add_option_as(CoapOption::Observe, OptionValueU32(o));
        }
        if let Some(b) = body {
            p.add_option_as(CoapOption::ContentFormat, OptionValueU32(10000));
            p.payload = to_cbor(&b).unwrap();
        }
        self.send(&p);
    }

    /// Waits for the cloud to close the connection.
    fn wait_closed(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if !self.pump() {
                return true;
            }
        }
        false
    }

    /// Every frame the cloud sent was at least six bytes (OCF-PROTOCOL.md §7.7).
    fn assert_frames_at_least_six_bytes(&self) {
        let mut rest = &self.raw[..];
        let mut n = 0;
        while !rest.is_empty() {
            let Ok((_, used)) = ocf::coap::tcp::decode(rest) else {
                break;
            };
            assert!(
                used >= 6,
                "frame {n} is {used} bytes: {:02x?}",
                &rest[..used]
            );
            rest = &rest[used..];
            n += 1;
        }
        assert!(n > 0);
    }
}

fn is_response(p: &Packet) -> bool {
    matches!(p.header.code, MessageClass::Response(_))
}

fn post(path: &str, query: &[(&str, &str)], body: Value) -> Packet {
    let mut r = Request::new(Method::Post, path);
    r.query = query
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    r.content_format = Some(10000);
    r.accept = Some(10000);
    r.payload = to_cbor(&body).unwrap();
    r.to_packet(&[])
}

fn delete(path: &str, query: &[(&str, &str)]) -> Packet {
    let mut r = Request::new(Method::Delete, path);
    r.query = query
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    r.accept = Some(10000);
    r.to_packet(&[])
}

fn code(p: &Packet) -> ResponseType {
    match p.header.code {
        MessageClass::Response(c) => c,
        other => panic!("not a response: {other:?}"),
    }
}

fn body(p: &Packet) -> Value {
    from_cbor(&p.payload).unwrap()
}

fn path_of(p: &Packet) -> String {
    p.get_option(CoapOption::UriPath)
        .map(|segs| {
            segs.iter()
                .map(|s| format!("/{}", String::from_utf8_lossy(s)))
                .collect()
        })
        .unwrap_or_default()
}

fn queries(p: &Packet) -> Vec<String> {
    p.get_option(CoapOption::UriQuery)
        .map(|q| {
            q.iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn crc32(bytes: &[u8]) -> i64 {
    i64::from(ocf_dev_cloud::core::crc32(bytes))
}

struct Tokens {
    access: String,
    refresh: String,
    uid: String,
}

fn sign_up(dev: &mut Device, di: &str, code_: &str) -> Tokens {
    let resp = dev.request(post(
        "/oic/sec/account",
        &[],
        json!({"di": di, "accesstoken": code_, "authprovider": "plgd", "devicetype": "device"}),
    ));
    assert_eq!(
        code(&resp),
        ResponseType::Changed,
        "{}",
        String::from_utf8_lossy(&resp.payload)
    );
    let b = body(&resp);
    assert_eq!(b["redirecturi"], "");
    Tokens {
        access: b["accesstoken"].as_str().unwrap().into(),
        refresh: b["refreshtoken"].as_str().unwrap().into(),
        uid: b["uid"].as_str().unwrap().into(),
    }
}

fn sign_in(dev: &mut Device, di: &str, t: &Tokens) -> Packet {
    dev.request(post(
        "/oic/sec/session",
        &[],
        json!({"di": di, "uid": t.uid, "accesstoken": t.access, "login": true}),
    ))
}

fn links_body(di: &str, hrefs: &[&str]) -> Value {
    let links: Vec<Value> = hrefs
        .iter()
        .map(|h| {
            json!({"href": h, "rt": ["oic.r.switch.binary"], "if": ["oic.if.a", "oic.if.baseline"],
                        "rel": "hosts", "p": {"bm": 3}})
        })
        .collect();
    json!({"di": di, "n": "Test Pi", "ttl": 0, "links": links})
}

/// Answers the cloud's discovery GET /oic/res?if=oic.if.ll; returns the next request (the
/// batch observation).
fn answer_discovery(dev: &mut Device, di: &str) -> Packet {
    let disc = dev.expect_request();
    assert_eq!(path_of(&disc), "/oic/res");
    assert_eq!(queries(&disc), vec!["if=oic.if.ll"]);
    assert_eq!(disc.header.code, MessageClass::Request(RequestType::Get));
    dev.respond(
        &disc,
        ResponseType::Content,
        Some(json!([
            {"href": "/oic/res", "rt": ["oic.wk.res"], "if": ["oic.if.ll", "oic.if.b", "oic.if.baseline"],
             "rel": ["self"], "p": {"bm": 3}, "anchor": format!("ocf://{di}")},
            {"href": "/switch/1", "rt": ["oic.r.switch.binary"], "if": ["oic.if.a"], "p": {"bm": 3}}
        ])),
        None,
    );
    let batch = dev.expect_request();
    assert_eq!(path_of(&batch), "/oic/res");
    assert_eq!(queries(&batch), vec!["if=oic.if.b"]);
    assert!(batch.get_option(CoapOption::Observe).is_some());
    batch
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn tls_device_registers_publishes_and_is_reachable_over_http() {
    let dir = temp_dir("flow");
    let cloud = Cloud::start(&dir, &[]);
    let wk = cloud.hub_configuration();
    assert_eq!(wk["id"], cloud.sid.as_str());
    assert_eq!(wk["coapGateway"], format!("coaps+tcp://{}", cloud.coap));
    assert_eq!(wk["deviceOauthClient"]["providerName"], "plgd");
    assert_eq!(wk["authority"], format!("http://{}", cloud.http));
    assert!(wk["certificateAuthorities"]
        .as_str()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));

    let di = new_di();
    let id = identity(&cloud, &di);
    let mut dev = Device::tls(cloud.coap, client_config(&id, false));
    dev.send_csm();
    let code_ = cloud.authcode("alice");
    let tokens = sign_up(&mut dev, &di, &code_);
    assert_eq!(tokens.uid, "alice");
    let resp = sign_in(&mut dev, &di, &tokens);
    assert_eq!(code(&resp), ResponseType::Changed);
    let expiresin = body(&resp)["expiresin"].as_i64().unwrap();
    assert!((3590..=3600).contains(&expiresin), "{expiresin}");

    // Discovery and batch observation, hub style.
    let batch = answer_discovery(&mut dev, &di);
    dev.respond(
        &batch,
        ResponseType::Content,
        Some(json!([{"href": format!("ocf://{di}/switch/1"), "rep": {"value": false}}])),
        Some(0),
    );

    // Publish: ins is the CRC-32 of the href.
    let resp = dev.request(post(
        "/oic/rd",
        &[("rt", "oic.wk.rdpub")],
        links_body(&di, &["/switch/1", "/oic/d"]),
    ));
    assert_eq!(code(&resp), ResponseType::Changed);
    let b = body(&resp);
    assert_eq!(b["links"][0]["href"], "/switch/1");
    assert_eq!(b["links"][0]["ins"], crc32(b"/switch/1"));
    assert_eq!(b["links"][1]["ins"], crc32(b"/oic/d"));

    let devices = cloud.devices();
    let me = devices
        .iter()
        .find(|d| d["id"] == di.as_str())
        .unwrap()
        .clone();
    assert!(online(&me), "{me}");
    assert_eq!(me["name"], "Test Pi");
    // Another user's token sees none of alice's devices, as in plgd.
    let (status, _, text) = http(
        cloud.http,
        "GET",
        &format!("/api/v1/devices/{di}"),
        None,
        &cloud.token_of("mallory"),
    );
    assert_eq!(status, 404, "{text}");
    let (status, links) = cloud.get(&format!("/api/v1/devices/{di}/resource-links"));
    assert_eq!(status, 200);
    assert_eq!(links["resources"].as_array().unwrap().len(), 2, "{links}");
    assert_eq!(links["resources"][0]["deviceId"], di.as_str());

    // The shadow: what the batch observation delivered.
    let (status, shadow) = cloud.get(&format!("/api/v1/devices/{di}/resources/switch/1"));
    assert_eq!(status, 200, "{shadow}");
    assert_eq!(shadow["data"]["content"], json!({"value": false}));
    assert_eq!(shadow["data"]["resourceId"]["href"], "/switch/1");

    // A GET to the device with an interface: CoAP GET with Accept 10000 and no OCF version
    // options.
    let (http_addr, token) = (cloud.http, cloud.token());
    let path = format!("/api/v1/devices/{di}/resources/switch/1?resourceInterface=oic.if.baseline");
    let t = token.clone();
    let client = std::thread::spawn(move || http(http_addr, "GET", &path, None, &t));
    let req = dev.expect_request();
    assert_eq!(req.header.code, MessageClass::Request(RequestType::Get));
    assert_eq!(path_of(&req), "/switch/1");
    assert_eq!(queries(&req), vec!["if=oic.if.baseline"]);
    assert_eq!(
        req.get_first_option(CoapOption::Accept).cloned(),
        Some(Vec::from(OptionValueU32(10000)))
    );
    assert!(req.get_option(CoapOption::Unknown(2049)).is_none());
    assert!(req.get_token().len() >= 4);
    dev.respond(
        &req,
        ResponseType::Content,
        Some(json!({"rt": ["oic.r.switch.binary"], "value": false})),
        None,
    );
    let (status, head, text) = client.join().unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(head.contains("x-coap-code: 2.05"), "{head}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["data"]["content"]["value"],
        false
    );

    // An update: PUT of JSON, CBOR to the device as a POST, 2.04 without a body → content null.
    let path = format!("/api/v1/devices/{di}/resources/switch/1");
    let t = token.clone();
    let client =
        std::thread::spawn(move || http(http_addr, "PUT", &path, Some(r#"{"value":true}"#), &t));
    let req = dev.expect_request();
    assert_eq!(req.header.code, MessageClass::Request(RequestType::Post));
    assert_eq!(
        req.get_first_option(CoapOption::ContentFormat).cloned(),
        Some(Vec::from(OptionValueU32(10000)))
    );
    assert!(req.get_option(CoapOption::Unknown(2053)).is_none());
    assert_eq!(body(&req), json!({"value": true}));
    dev.respond(&req, ResponseType::Changed, None, None);
    let (status, head, text) = client.join().unwrap();
    assert_eq!(status, 200, "{text}");
    let updated: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(updated["data"]["status"], "OK");
    assert_eq!(updated["data"]["content"], Value::Null);
    assert!(head.contains("x-coap-code: 2.04"));

    // A device error: status and diagnostic carried over in a google.rpc.Status.
    let path = format!("/api/v1/devices/{di}/resources/nope?shadow=false");
    let t = token.clone();
    let client = std::thread::spawn(move || http(http_addr, "GET", &path, None, &t));
    let req = dev.expect_request();
    assert_eq!(req.header.code, MessageClass::Request(RequestType::Get));
    let mut p = Packet::new();
    p.header.code = MessageClass::Response(ResponseType::NotFound);
    p.set_token(req.get_token().to_vec());
    p.payload = b"no such resource".to_vec();
    dev.send(&p);
    let (status, head, text) = client.join().unwrap();
    assert_eq!(status, 404);
    assert!(head.contains("x-coap-code: 4.04"));
    let err: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(err["code"], 5, "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("4.04: no such resource"),
        "{err}"
    );
    // Nothing in the shadow for it: 404 too.
    let (status, _) = cloud.get(&format!("/api/v1/devices/{di}/resources/nope"));
    assert_eq!(status, 404);

    // Events of the batch observation, over the WebSocket subscription.
    let mut ws = subscribe(
        &cloud,
        &json!({
            "createSubscription": {"eventFilter": ["RESOURCE_CHANGED"], "deviceIdFilter": [di]},
            "correlationId": "t1",
        }),
    );
    // The subscription starts with the shadow as it is.
    let first = ws_next(&mut ws).expect("the current shadow");
    assert_eq!(first["correlationId"], "t1");
    assert_eq!(first["resourceChanged"]["content"], json!({"value": false}));
    let mut notif = Packet::new();
    notif.header.code = MessageClass::Response(ResponseType::Content);
    notif.set_token(batch.get_token().to_vec());
    notif.add_option_as(CoapOption::Observe, OptionValueU32(2));
    notif.add_option_as(CoapOption::ContentFormat, OptionValueU32(10000));
    notif.payload = to_cbor(&json!([
        {"href": format!("ocf://{di}/switch/1"), "rep": {"value": true}},
        {"href": "/oic/d", "rep": {"n": "Test Pi", "di": di}}
    ]))
    .unwrap();
    dev.send(&notif);
    let mut got = None;
    while got.is_none() {
        let Some(ev) = ws_next(&mut ws) else { break };
        let rc = &ev["resourceChanged"];
        if rc["resourceId"]["href"] == "/switch/1" {
            got = Some(rc["content"].clone());
        }
    }
    assert_eq!(got.expect("a change event"), json!({"value": true}));

    // Deregistration: 2.02, records deleted, connection closed.
    let resp = dev.request(delete(
        "/oic/sec/account",
        &[("uid", "alice"), ("di", di.as_str())],
    ));
    assert_eq!(code(&resp), ResponseType::Deleted);
    assert!(
        dev.wait_closed(TIMEOUT),
        "the cloud did not close the connection"
    );
    dev.assert_frames_at_least_six_bytes();
    assert!(!cloud.devices().iter().any(|d| d["id"] == di.as_str()));
    let (status, _) = cloud.get(&format!("/api/v1/devices/{di}/resource-links"));
    assert_eq!(status, 404);

    // The log: one sign-up, no 4.01, the deregistration, the cloud's own requests.
    assert_eq!(cloud.count("device", "POST", "/oic/sec/account", None), 1);
    assert_eq!(
        cloud.count("device", "DELETE", "/oic/sec/account", Some("2.02")),
        1
    );
    assert_eq!(cloud.count("cloud", "GET", "/oic/res", Some("2.05")), 2);
    assert_eq!(cloud.count("cloud", "POST", "/switch/1", Some("2.04")), 1);
    let log = cloud.log();
    assert!(log.iter().all(|e| e["code"] != "4.01"), "{log:?}");
    // No secret in the log.
    let text = serde_json::to_string(&log).unwrap();
    assert!(!text.contains(&tokens.access) && !text.contains(&code_));
    drop(cloud);
}

#[test]
fn request_before_sign_in_gets_4_01_and_close() {
    let dir = temp_dir("early");
    let cloud = Cloud::start(&dir, &[]);
    let di = new_di();
    let id = identity(&cloud, &di);
    let mut dev = Device::tls(cloud.coap, client_config(&id, false));
    dev.send_csm();
    let resp = dev.request(post("/oic/rd", &[], links_body(&di, &["/a"])));
    assert_eq!(code(&resp), ResponseType::Unauthorized);
    assert!(dev.wait_closed(TIMEOUT));
    assert_eq!(cloud.count("device", "POST", "/oic/rd", Some("4.01")), 1);
}

#[test]
fn certificate_identity_is_enforced() {
    let dir = temp_dir("identity");
    let cloud = Cloud::start(&dir, &[]);
    // A certificate for one device, a sign-up body for another: 4.01 (over TLS 1.2 with
    // ECDHE-ECDSA-AES128-GCM, which must be offered).
    let di = new_di();
    let id = identity(&cloud, &di);
    let mut dev = Device::tls(cloud.coap, client_config(&id, true));
    dev.send_csm();
    let code_ = cloud.authcode("alice");
    let other = new_di();
    let resp = dev.request(post(
        "/oic/sec/account",
        &[],
        json!({"di": other, "accesstoken": code_}),
    ));
    assert_eq!(code(&resp), ResponseType::Unauthorized);
    // The code was not consumed: the right device can still use it.
    let tokens = sign_up(&mut dev, &di, &code_);
    assert_eq!(tokens.uid, "alice");
    // Sign-in with the other di: refused too.
    let resp = dev.request(post(
        "/oic/sec/session",
        &[],
        json!({"di": other, "uid": "alice", "accesstoken": tokens.access, "login": true}),
    ));
    assert_eq!(code(&resp), ResponseType::Unauthorized);

    // A certificate from another CA is refused.
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("uuid:{di}"));
    params.distinguished_name = dn;
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        rcgen::ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 4, 1, 44924, 1, 6]),
    ];
    let foreign = Identity {
        di: di.clone(),
        cert_pem: params.self_signed(&key).unwrap().pem(),
        key,
        ca_pem: id.ca_pem.clone(),
    };
    let mut dev = Device::tls(cloud.coap, client_config(&foreign, false));
    let _ = dev.io.write_all(&dev.conn.start());
    let _ = dev.io.flush();
    assert!(
        dev.wait_closed(TIMEOUT),
        "a foreign certificate was accepted"
    );
    assert!(dev.inbox.is_empty());
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
        if log.contains("TLS handshake failed") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the handshake did not fail: {log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(foreign.di, di);
}

#[test]
fn reference_device_sequence_on_the_plain_listener() {
    let dir = temp_dir("reference");
    let cloud = Cloud::start(
        &dir,
        &["--coap-plain", "127.0.0.1:0", "--token-lifetime", "0"],
    );
    let plain = cloud.plain.expect("plain listener");
    let di = new_di();
    let code_ = cloud.authcode("bob");

    // iotivity-lite: no CSM, sign-up with OCF version options and `devicetype`.
    let mut dev = Device::plain(plain);
    let tokens = sign_up(&mut dev, &di, &code_);
    assert_eq!(tokens.uid, "bob");
    let resp = sign_in(&mut dev, &di, &tokens);
    assert_eq!(code(&resp), ResponseType::Changed);
    assert_eq!(body(&resp)["expiresin"], -1);
    let resp = dev.request(post(
        "/oic/rd",
        &[("rt", "oic.wk.rdpub")],
        links_body(&di, &["/light/1", "/oic/mnt"]),
    ));
    assert_eq!(code(&resp), ResponseType::Changed);
    assert_eq!(body(&resp)["links"][0]["ins"], crc32(b"/light/1"));

    // /oic/res is not observable on iotivity-lite: 2.05 without Observe → the cloud observes
    // each published href instead.
    let batch = answer_discovery(&mut dev, &di);
    dev.respond(
        &batch,
        ResponseType::Content,
        Some(json!([{"href": format!("ocf://{di}/light/1"), "rep": {"state": false}}])),
        None,
    );
    let mut observed = BTreeSet::new();
    let mut light_token = Vec::new();
    for _ in 0..2 {
        let req = dev.expect_request();
        assert!(req.get_option(CoapOption::Observe).is_some());
        let href = path_of(&req);
        if href == "/light/1" {
            light_token = req.get_token().to_vec();
        }
        dev.respond(
            &req,
            ResponseType::Content,
            Some(json!({"state": false})),
            Some(0),
        );
        observed.insert(href);
    }
    assert_eq!(
        observed,
        BTreeSet::from(["/light/1".to_owned(), "/oic/mnt".to_owned()])
    );
    // A notification lands in the cache: a 2.03 answer is served from it.
    let mut notif = Packet::new();
    notif.header.code = MessageClass::Response(ResponseType::Content);
    notif.set_token(light_token);
    notif.add_option_as(CoapOption::Observe, OptionValueU32(2));
    notif.add_option_as(CoapOption::ContentFormat, OptionValueU32(10000));
    notif.payload = to_cbor(&json!({"state": true, "power": 10})).unwrap();
    dev.send(&notif);
    let (http_addr, token) = (cloud.http, cloud.token());
    let path = format!("/api/v1/devices/{di}/resources/light/1?shadow=false");
    // Give the cloud a moment to take the notification before the forwarded GET.
    std::thread::sleep(Duration::from_millis(200));
    let client = std::thread::spawn(move || http(http_addr, "GET", &path, None, &token));
    let req = dev.expect_request();
    dev.respond(&req, ResponseType::Valid, None, None);
    let (status, head, text) = client.join().unwrap();
    assert_eq!(status, 200);
    assert!(head.contains("x-coap-code: 2.03"));
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["data"]["content"],
        json!({"state": true, "power": 10})
    );

    // A Ping gets a Pong with its token.
    let mut ping_token = vec![9u8; 8];
    ping_token[0] = 1;
    let ping = dev.conn.ping(&ping_token);
    dev.write(&ping);
    let deadline = Instant::now() + TIMEOUT;
    let mut ponged = false;
    while !ponged && Instant::now() < deadline {
        let before = dev.raw.len();
        assert!(dev.pump());
        if dev.raw.len() > before {
            ponged = dev.raw[before..].windows(2).any(|w| w == [0x08, 0xE3]);
        }
    }
    assert!(ponged, "no Pong");
    dev.assert_frames_at_least_six_bytes();
    drop(dev);

    // Reconnect as iotivity-lite does: refresh first, then sign in; no new sign-up.
    let mut dev = Device::plain(plain);
    let resp = dev.request(post(
        "/oic/sec/tokenrefresh",
        &[],
        json!({"uid": tokens.uid, "di": di, "authprovider": "plgd",
               "granttype": "refresh_token", "refreshtoken": tokens.refresh}),
    ));
    assert_eq!(code(&resp), ResponseType::Changed);
    let b = body(&resp);
    assert_eq!(b["expiresin"], -1);
    let fresh = Tokens {
        access: b["accesstoken"].as_str().unwrap().into(),
        refresh: b["refreshtoken"].as_str().unwrap().into(),
        uid: tokens.uid.clone(),
    };
    assert_ne!(fresh.refresh, tokens.refresh);
    assert_eq!(code(&sign_in(&mut dev, &di, &fresh)), ResponseType::Changed);
    assert_eq!(
        code(&sign_in(&mut dev, &di, &tokens)),
        ResponseType::Unauthorized
    );
    assert_eq!(cloud.count("device", "POST", "/oic/sec/account", None), 1);
}

#[test]
fn restarted_cloud_keeps_the_registration() {
    let dir = temp_dir("restart");
    let data = dir.clone();
    let cloud = Cloud::start(&data, &["--coap-plain", "127.0.0.1:0"]);
    let sid = cloud.sid.clone();
    let di = new_di();
    let id = identity(&cloud, &di);
    let code_ = cloud.authcode("carol");
    let mut dev = Device::tls(cloud.coap, client_config(&id, false));
    dev.send_csm();
    let tokens = sign_up(&mut dev, &di, &code_);
    assert_eq!(
        code(&sign_in(&mut dev, &di, &tokens)),
        ResponseType::Changed
    );
    let resp = dev.request(post("/oic/rd", &[], links_body(&di, &["/switch/1"])));
    assert_eq!(code(&resp), ResponseType::Changed);

    // Graceful stop: exit 0, the device sees the connection end.
    let mut cloud = cloud;
    cloud.dir = PathBuf::new(); // keep the data directory for the restart
    assert_eq!(cloud.stop(), Some(0));
    assert!(dev.wait_closed(TIMEOUT));

    let cloud = Cloud::start(&data, &[]);
    assert_eq!(cloud.sid, sid);
    *cloud.user.borrow_mut() = "carol".into();
    // The API token issued before the restart is still good (tokens are stored).
    let devices = cloud.devices();
    let me = devices
        .iter()
        .find(|d| d["id"] == di.as_str())
        .expect("device still known")
        .clone();
    assert_eq!(me["metadata"]["status"]["value"], "OFFLINE");
    let (status, links) = cloud.get(&format!("/api/v1/devices/{di}/resource-links"));
    assert_eq!(status, 200);
    assert_eq!(links["resources"][0]["href"], "/switch/1");
    // Offline device: 503 from the device; the shadow did not survive the restart.
    let (status, err) = cloud.get(&format!(
        "/api/v1/devices/{di}/resources/switch/1?shadow=false"
    ));
    assert_eq!(status, 503);
    assert_eq!(err["code"], 14);

    // The same certificate and tokens sign in again, with no sign-up.
    let mut dev = Device::tls(cloud.coap, client_config(&id, false));
    dev.send_csm();
    assert_eq!(
        code(&sign_in(&mut dev, &di, &tokens)),
        ResponseType::Changed
    );
    assert_eq!(cloud.count("device", "POST", "/oic/sec/account", None), 0);
    assert_eq!(
        cloud.count("device", "POST", "/oic/sec/session", Some("2.04")),
        1
    );
    assert!(cloud
        .devices()
        .iter()
        .any(|d| d["id"] == di.as_str() && online(d)));
}

#[test]
fn keepalive_pings_a_silent_device_and_closes_without_pong() {
    let dir = temp_dir("keepalive");
    let cloud = Cloud::start(
        &dir,
        &["--coap-plain", "127.0.0.1:0", "--keepalive-secs", "2"],
    );
    let plain = cloud.plain.unwrap();

    // A device that answers Pings stays connected.
    let mut dev = Device::plain(plain);
    dev.send_csm();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(5500) {
        assert!(dev.pump(), "closed although Pongs were sent");
    }
    assert!(dev.pings >= 2, "pings: {}", dev.pings);

    // One that does not is closed after the Pong timeout.
    let mut mute = Device::plain(plain);
    mute.answer_pings = false;
    mute.send_csm();
    assert!(mute.wait_closed(Duration::from_secs(8)));
    assert!(mute.pings >= 1);
    let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
    assert!(log.contains("no Pong to the keepalive Ping"), "{log}");
    mute.assert_frames_at_least_six_bytes();
}

#[test]
fn http_api_refuses_bad_input() {
    let dir = temp_dir("http");
    let cloud = Cloud::start(&dir, &["--apn", "plgd.web"]);
    let h = cloud.http;
    // No token, a wrong token: 401 in google.rpc.Status form (Unauthenticated).
    for token in ["", "dev.0000"] {
        for path in [
            "/api/v1/devices",
            "/authorize?response_type=code&client_id=ocf-device",
            "/dev-cloud/api/v1/log",
        ] {
            let (status, _, text) = http(h, "GET", path, None, token);
            assert_eq!(status, 401, "{path}: {text}");
            let err: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(err["code"], 16, "{text}");
        }
    }
    // The WebSocket needs a token too.
    let (status, _, _) = http(h, "GET", "/api/v1/ws/events", None, "");
    assert_eq!(status, 401);
    // The token endpoint: a wrong secret, a wrong grant.
    for form in [
        "grant_type=client_credentials&client_id=ocf-dev&client_secret=nope",
        "grant_type=password&client_id=ocf-dev&client_secret=x",
        "client_id=ocf-dev",
        "grant_type=client_credentials&client_id=other&client_secret=x",
    ] {
        let (status, _, text) = http_raw(
            h,
            "POST",
            "/oauth/token",
            Some(("application/x-www-form-urlencoded", form)),
            "",
        );
        assert!(status == 400 || status == 401, "{form}: {status} {text}");
        assert!(serde_json::from_str::<Value>(&text).unwrap()["error"].is_string());
    }
    // The default user; the apn the hub expects.
    assert_eq!(
        cloud.hub_configuration()["deviceOauthClient"]["providerName"],
        "plgd.web"
    );
    let (status, reply) = cloud.get("/authorize?response_type=code&client_id=someone-else");
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["error"], "unauthorized_client");
    // With a redirect_uri: a redirect carrying the code and the state.
    let (status, head, _) = http(
        h,
        "GET",
        "/authorize?response_type=code&client_id=ocf-device&redirect_uri=http%3A%2F%2Fapp%2Fcb&state=s%201",
        None,
        &cloud.token(),
    );
    assert_eq!(status, 307, "{head}");
    assert!(head.contains("location: http://app/cb?code="), "{head}");
    assert!(head.contains("&state=s%201"), "{head}");
    // CSRs: not base64 nor PEM, not a CSR, CN not uuid:<UUID>, not JSON.
    let (status, reply) = cloud.post(
        "/api/v1/sign/identity-csr",
        &json!({"certificateSigningRequest": "no*pe"}),
    );
    assert_eq!(status, 400);
    assert_eq!(reply["code"], 3);
    assert!(reply["message"].is_string());
    let (status, _) = cloud.post(
        "/api/v1/sign/identity-csr",
        &json!({"certificateSigningRequest": b64(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")}),
    );
    assert_eq!(status, 400);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "my-device");
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let (status, reply) = cloud.post(
        "/api/v1/sign/identity-csr",
        &json!({ "certificateSigningRequest": b64(csr.as_bytes()) }),
    );
    assert_eq!(status, 400);
    assert!(reply["message"].as_str().unwrap().contains("uuid"));
    let (status, _, _) = http(
        h,
        "POST",
        "/api/v1/sign/identity-csr",
        Some("{"),
        &cloud.token(),
    );
    assert_eq!(status, 400);
    // Unknown device, unknown endpoint, a bad shadow flag, an update that is not an object.
    let (status, reply) = cloud.get(&format!("/api/v1/devices/{}/resources/x", new_di()));
    assert_eq!((status, reply["code"].as_i64()), (404, Some(5)));
    let (status, _) = cloud.get("/api/v1/nothing-here");
    assert_eq!(status, 404);
    // Sign-up with the wrong provider: 4.01.
    let di = new_di();
    let id = identity(&cloud, &di);
    let code_ = cloud.authcode("user");
    let mut dev = Device::tls(cloud.coap, client_config(&id, false));
    dev.send_csm();
    let resp = dev.request(post(
        "/oic/sec/account",
        &[],
        json!({"di": di, "accesstoken": code_, "authprovider": "plgd"}),
    ));
    assert_eq!(code(&resp), ResponseType::Unauthorized);
    let resp = dev.request(post(
        "/oic/sec/account",
        &[],
        json!({"di": di, "accesstoken": code_, "authprovider": "plgd.web"}),
    ));
    assert_eq!(code(&resp), ResponseType::Changed);
    assert_eq!(body(&resp)["uid"], "user");
}

/// OCF-PROTOCOL.md §5.2, §7.5: a device that signed out (before a reboot) and comes back on a
/// new connection signs in without publishing (it persisted what the RD holds): the cloud still
/// lists its links and forwards requests to it.
#[test]
fn signed_out_device_keeps_its_links_and_is_reachable_without_publishing_again() {
    let dir = temp_dir("signout");
    let cloud = Cloud::start(&dir, &[]);
    let di = new_di();
    let id = identity(&cloud, &di);
    let mut dev = Device::tls(cloud.coap, client_config(&id, false));
    dev.send_csm();
    let tokens = sign_up(&mut dev, &di, &cloud.authcode("dave"));
    assert_eq!(
        code(&sign_in(&mut dev, &di, &tokens)),
        ResponseType::Changed
    );
    let batch = answer_discovery(&mut dev, &di);
    dev.respond(&batch, ResponseType::Content, Some(json!([])), Some(0));
    let resp = dev.request(post(
        "/oic/rd",
        &[("rt", "oic.wk.rdpub")],
        links_body(&di, &["/switch/1", "/oic/d"]),
    ));
    assert_eq!(code(&resp), ResponseType::Changed);

    // Sign-out, then the device goes away.
    let resp = dev.request(post(
        "/oic/sec/session",
        &[],
        json!({"di": di, "uid": tokens.uid, "accesstoken": tokens.access, "login": false}),
    ));
    assert_eq!(code(&resp), ResponseType::Changed);
    drop(dev);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let devices = cloud.devices();
        if devices.iter().any(|d| d["id"] == di.as_str() && !online(d)) {
            break;
        }
        assert!(Instant::now() < deadline, "still online: {devices:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, links) = cloud.get(&format!("/api/v1/devices/{di}/resource-links"));
    assert_eq!(status, 200);
    assert_eq!(links["resources"].as_array().unwrap().len(), 2, "{links}");

    // A new connection: sign-in only (the access token is still valid), no publish.
    let mut dev = Device::tls(cloud.coap, client_config(&id, false));
    dev.send_csm();
    assert_eq!(
        code(&sign_in(&mut dev, &di, &tokens)),
        ResponseType::Changed
    );
    let batch = answer_discovery(&mut dev, &di);
    dev.respond(&batch, ResponseType::Content, Some(json!([])), Some(0));
    let (status, links) = cloud.get(&format!("/api/v1/devices/{di}/resource-links"));
    assert_eq!(status, 200);
    let hrefs: BTreeSet<&str> = links["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["href"].as_str())
        .collect();
    assert_eq!(hrefs, BTreeSet::from(["/oic/d", "/switch/1"]));

    // Requests are forwarded on the new connection.
    let (http_addr, token) = (cloud.http, cloud.token());
    let path = format!("/api/v1/devices/{di}/resources/switch/1?shadow=false");
    let client = std::thread::spawn(move || http(http_addr, "GET", &path, None, &token));
    let req = dev.expect_request();
    assert_eq!(path_of(&req), "/switch/1");
    dev.respond(
        &req,
        ResponseType::Content,
        Some(json!({"value": true})),
        None,
    );
    let (status, _, text) = client.join().unwrap();
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["data"]["content"]["value"],
        true
    );
    assert_eq!(cloud.count("device", "POST", "/oic/rd", None), 1);
    assert_eq!(cloud.count("device", "POST", "/oic/sec/account", None), 1);
}

/// The contract with plgd hub's client API: every kind of answer this cloud gives, and every
/// event kind, validated against `contract/plgd-hub.schema.json` (written from plgd's swagger
/// and protos), so that a renamed field, a wrong type or an invented one fails here.
#[test]
fn answers_match_the_plgd_hub_schema() {
    use contract::assert_valid;
    let dir = temp_dir("contract");
    let cloud = Cloud::start(&dir, &[]);
    assert_valid("HubConfiguration", &cloud.hub_configuration());
    let (status, signed) = {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("uuid:{}", new_di()));
        params.distinguished_name = dn;
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        cloud.post(
            "/api/v1/sign/identity-csr",
            &json!({ "certificateSigningRequest": b64(csr.as_bytes()) }),
        )
    };
    assert_eq!(status, 200);
    assert_valid("SignCertificateResponse", &signed);

    let di = new_di();
    let id = identity(&cloud, &di);
    let code_ = cloud.authcode("erin");
    // Every event from the start: the device's registration, status, links, changes.
    let mut ws = subscribe(
        &cloud,
        &json!({"createSubscription": {}, "correlationId": "c"}),
    );
    let mut dev = Device::tls(cloud.coap, client_config(&id, false));
    dev.send_csm();
    let tokens = sign_up(&mut dev, &di, &code_);
    assert_eq!(
        code(&sign_in(&mut dev, &di, &tokens)),
        ResponseType::Changed
    );
    let batch = answer_discovery(&mut dev, &di);
    dev.respond(
        &batch,
        ResponseType::Content,
        Some(json!([
            {"href": format!("ocf://{di}/switch/1"), "rep": {"value": false}},
            {"href": "/oic/d", "rep": {"n": "Test Pi", "di": di, "piid": new_di(),
                "rt": ["oic.d.light", "oic.wk.d"], "if": ["oic.if.r", "oic.if.baseline"],
                "dmno": "m1", "dmn": [{"language": "en", "value": "maker"}]}}
        ])),
        Some(0),
    );
    let resp = dev.request(post(
        "/oic/rd",
        &[("rt", "oic.wk.rdpub")],
        links_body(&di, &["/switch/1", "/oic/d"]),
    ));
    assert_eq!(code(&resp), ResponseType::Changed);

    // Devices: a stream of {"result": Device}; one Device.
    let (status, _, text) = http(cloud.http, "GET", "/api/v1/devices", None, &cloud.token());
    assert_eq!(status, 200);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    for l in &lines {
        assert_valid("DeviceStreamItem", l);
    }
    let (status, device) = cloud.get(&format!("/api/v1/devices/{di}"));
    assert_eq!(status, 200);
    assert_valid("Device", &device);
    assert_eq!(device["types"], json!(["oic.d.light", "oic.wk.d"]));
    assert_eq!(device["modelNumber"], "m1");
    let (_, links) = cloud.get(&format!("/api/v1/devices/{di}/resource-links"));
    assert_valid("ResourceLinks", &links);
    let (status, shadow) = cloud.get(&format!("/api/v1/devices/{di}/resources/switch/1"));
    assert_eq!(status, 200);
    assert_valid("ShadowResource", &shadow);

    // From the device, and an update.
    let (h, t) = (cloud.http, cloud.token());
    let path = format!("/api/v1/devices/{di}/resources/switch/1?shadow=false");
    let client = std::thread::spawn(move || http(h, "GET", &path, None, &t));
    let req = dev.expect_request();
    dev.respond(
        &req,
        ResponseType::Content,
        Some(json!({"value": false})),
        None,
    );
    let (status, _, text) = client.join().unwrap();
    assert_eq!(status, 200);
    assert_valid("DeviceAnswer", &serde_json::from_str(&text).unwrap());
    let (h, t) = (cloud.http, cloud.token());
    let path = format!("/api/v1/devices/{di}/resources/switch/1");
    let client = std::thread::spawn(move || http(h, "PUT", &path, Some(r#"{"value":true}"#), &t));
    let req = dev.expect_request();
    dev.respond(
        &req,
        ResponseType::Changed,
        Some(json!({"value": true})),
        None,
    );
    let (status, _, text) = client.join().unwrap();
    assert_eq!(status, 200);
    assert_valid("DeviceAnswer", &serde_json::from_str(&text).unwrap());

    // Errors: no token, an unknown device, a bad body, a device error.
    let (status, _, text) = http(cloud.http, "GET", "/api/v1/devices", None, "");
    assert_eq!(status, 401);
    assert_valid("Error", &serde_json::from_str(&text).unwrap());
    let (status, err) = cloud.get(&format!("/api/v1/devices/{}", new_di()));
    assert_eq!(status, 404);
    assert_valid("Error", &err);
    let (status, _, text) = http(
        cloud.http,
        "PUT",
        &format!("/api/v1/devices/{di}/resources/switch/1"),
        Some("[1]"),
        &cloud.token(),
    );
    assert_eq!(status, 400);
    assert_valid("Error", &serde_json::from_str(&text).unwrap());

    // A change, then the device deregisters: every event kind went by.
    let mut notif = Packet::new();
    notif.header.code = MessageClass::Response(ResponseType::Content);
    notif.set_token(batch.get_token().to_vec());
    notif.add_option_as(CoapOption::Observe, OptionValueU32(2));
    notif.add_option_as(CoapOption::ContentFormat, OptionValueU32(10000));
    notif.payload = to_cbor(&json!([{"href": "/switch/1", "rep": {"value": true}}])).unwrap();
    dev.send(&notif);
    let resp = dev.request(delete(
        "/oic/rd",
        &[("di", di.as_str()), ("ins", &crc32(b"/oic/d").to_string())],
    ));
    assert_eq!(code(&resp), ResponseType::Deleted);
    let resp = dev.request(delete(
        "/oic/sec/account",
        &[("uid", "erin"), ("di", di.as_str())],
    ));
    assert_eq!(code(&resp), ResponseType::Deleted);
    let mut kinds = BTreeSet::new();
    while let Some(ev) = ws_next(&mut ws) {
        assert_valid("Event", &ev);
        let kind = ev
            .as_object()
            .unwrap()
            .keys()
            .find(|k| !["subscriptionId", "correlationId"].contains(&k.as_str()))
            .unwrap()
            .clone();
        kinds.insert(kind.clone());
        if kind == "deviceUnregistered" {
            break;
        }
    }
    for want in [
        "deviceRegistered",
        "deviceMetadataUpdated",
        "resourcePublished",
        "resourceUnpublished",
        "resourceChanged",
        "deviceUnregistered",
    ] {
        assert!(kinds.contains(want), "no {want} event: {kinds:?}");
    }
}

/// The check itself fails on drift: a renamed field, a wrong type, a missing field.
#[test]
fn the_schema_check_catches_drift() {
    let good = json!({"code": 5, "message": "m", "details": []});
    assert!(contract::check("Error", &good).is_empty());
    for bad in [
        json!({"code": 5, "msg": "m", "details": []}),
        json!({"code": "5", "message": "m", "details": []}),
        json!({"code": 5, "details": []}),
    ] {
        assert!(!contract::check("Error", &bad).is_empty(), "{bad}");
    }
    let status = json!({"status": {"value": "ONLINE"}});
    assert!(contract::check("DeviceMetadata", &status).is_empty());
    assert!(!contract::check("DeviceMetadata", &json!({"status": {"value": "UP"}})).is_empty());
    assert!(!contract::check("Int64", &json!(5)).is_empty());
    assert!(!contract::check("ResourceId", &json!({"deviceId": "x", "href": "/a"})).is_empty());
}
