//! Harness for the end-to-end tests: start the real binaries on loopback with ports the OS
//! picks, talk CoAP to them over UDP and TCP, and clean up by PID.

pub mod cloud;
pub mod mediator;
pub mod provision;
pub mod qemu;
pub mod signals;
pub mod soak;
pub mod tls_client;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ciborium::Value;
use coap_lite::{CoapOption, MessageType, Packet};
use ocf::coap::block::Block;
use ocf::coap::tcp_conn::{ConnEvent, TcpConnection};
use ocf::model::{decode_payload, ContentFormat};
use ocf::resource::{Method, Request, Response};

/// Directory holding the workspace's binaries (next to the test executable's `deps/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe.parent().expect("deps dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a workspace binary, failing with the command that builds it.
pub fn binary(name: &str) -> PathBuf {
    try_binary(&bin_dir(), name).unwrap_or_else(|e| panic!("{e}"))
}

/// Path of a binary in `dir`, or the command that builds it.
pub fn try_binary(dir: &Path, name: &str) -> Result<PathBuf, String> {
    let path = dir.join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} is not built; run `cargo build --workspace --bins` (cargo xtask test does)",
            path.display()
        ))
    }
}

/// libcoap's client for the interop tests (`$OCF_COAP_CLIENT`, default `coap-client-openssl`),
/// failing with how to install it when it is missing.
pub fn coap_client() -> String {
    let tool = std::env::var("OCF_COAP_CLIENT").unwrap_or_else(|_| "coap-client-openssl".into());
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output();
    assert!(
        found.map(|o| o.status.success()).unwrap_or(false),
        "{tool} not found: run `cargo xtask test`, or `apt-get install libcoap3-bin`"
    );
    tool
}

/// The Python with aiocoap for the interop tests (`$OCF_INTEROP_PYTHON`, default the venv
/// `cargo xtask test` makes in `target/interop-venv`), failing with how to make it when missing.
pub fn interop_python() -> PathBuf {
    let p = std::env::var("OCF_INTEROP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/interop-venv/bin/python")
        });
    assert!(
        p.exists(),
        "{} not found: run `cargo xtask test`, which creates the aiocoap venv",
        p.display()
    );
    p
}

/// How the harness starts `ocf-agent` and `ocf-dev-cloud`. The default is what the tests
/// want: binaries next to the test executable, `OCF_LOG=debug`, stderr captured in memory.
#[derive(Clone, Debug)]
pub struct Spawn {
    /// Directory holding the binaries.
    pub bin_dir: PathBuf,
    /// `OCF_LOG` for the child.
    pub log_level: String,
    /// Append the child's stderr to this file instead of capturing it.
    pub log_file: Option<PathBuf>,
    /// Start the child in its own process group, so that a terminal's Ctrl-C reaches only the
    /// parent (which stops the child by PID), and have the kernel send it SIGTERM should the
    /// parent die first (Linux `PR_SET_PDEATHSIG`).
    pub supervised: bool,
}

impl Default for Spawn {
    fn default() -> Spawn {
        Spawn {
            bin_dir: bin_dir(),
            log_level: "debug".into(),
            log_file: None,
            supervised: false,
        }
    }
}

/// A started child with its stdout and stderr as lines (stderr stays empty when it goes to a
/// file).
pub struct Spawned {
    pub child: Child,
    pub stdout: mpsc::Receiver<String>,
    pub stderr: mpsc::Receiver<String>,
}

impl Spawn {
    /// Starts `name` from [`Spawn::bin_dir`] with `args`.
    pub fn start(&self, name: &str, args: &[String]) -> Result<Spawned, String> {
        self.start_with_env(name, args, &[])
    }

    /// [`Spawn::start`] with extra environment variables for the child (e.g. the agent's
    /// `OCF_AGENT_KILL_AT` for the crash tests).
    pub fn start_with_env(
        &self,
        name: &str,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<Spawned, String> {
        let mut cmd = Command::new(try_binary(&self.bin_dir, name)?);
        cmd.args(args)
            .env("OCF_LOG", &self.log_level)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        match &self.log_file {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                cmd.stderr(Stdio::from(file));
            }
            None => {
                cmd.stderr(Stdio::piped());
            }
        }
        if self.supervised {
            use std::os::unix::process::CommandExt;
            // SAFETY: getpid before the fork; prctl, getppid and _exit are async-signal-safe.
            let parent = unsafe { libc::getpid() };
            cmd.process_group(0);
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // The parent died between fork and prctl: nobody would stop this child.
                    if libc::getppid() != parent {
                        libc::_exit(1);
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let (err_tx, stderr) = mpsc::channel();
        if let Some(err) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if err_tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let out = child.stdout.take().expect("stdout is piped");
        let (tx, stdout) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Spawned {
            child,
            stdout,
            stderr,
        })
    }

    /// Why a child did not become ready: its exit status if it exited, and its log.
    pub fn not_ready(
        &self,
        name: &str,
        child: &mut Child,
        stderr: &mpsc::Receiver<String>,
    ) -> String {
        let status = match child.try_wait() {
            Ok(Some(status)) => format!("it exited with {status}"),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                "it was killed".to_string()
            }
        };
        let log = match &self.log_file {
            Some(path) => log_tail(path, 20),
            None => stderr.try_iter().collect::<Vec<_>>().join("\n"),
        };
        format!("{name} did not become ready ({status}):\n{log}")
    }
}

/// The last `n` lines of a log file (empty if unreadable).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A fresh directory under the target directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = bin_dir()
            .join("e2e-tmp")
            .join(format!("{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `ocf-agent`, killed (by PID) when dropped. Its endpoints are what it printed:
/// in the development mode (`--insecure-dev`, [`Agent::start`]) coap, coap+tcp and coaps+tcp;
/// in the secure mode coap (discovery only) and coaps+tcp.
pub struct Agent {
    pub child: Child,
    pub di: String,
    /// The first `coap://` endpoint (UDP); see [`Agent::udp`].
    pub udp: Option<SocketAddr>,
    /// The first `coap+tcp://` endpoint (plain TCP, development mode only); see [`Agent::tcp`].
    pub tcp: Option<SocketAddr>,
    /// The first `coaps+tcp://` endpoint (the secure endpoint); see [`Agent::tls`].
    pub tls: Option<SocketAddr>,
    pub endpoints: Vec<String>,
    /// The setup PIN, when the agent created one and printed it (`ocf-agent: setup PIN N`,
    /// once, on a first start without `--pin-file`).
    pub setup_pin: Option<String>,
    stderr: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Agent {
    /// Starts the agent on loopback with OS-chosen ports and no multicast, in the development
    /// mode (`--insecure-dev`: plain coap+tcp and UDP without access control).
    pub fn start(state_dir: &Path, extra: &[&str]) -> Agent {
        let mut args: Vec<String> = vec![
            "--board".into(),
            "sim".into(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--udp".into(),
            "127.0.0.1:0".into(),
            "--tcp".into(),
            "127.0.0.1:0".into(),
            "--tls".into(),
            "127.0.0.1:0".into(),
            "--dtls".into(),
            "127.0.0.1:0".into(),
            "--multicast".into(),
            "off".into(),
            "--insecure-dev".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Agent::start_with(&args)
    }

    pub fn start_with(args: &[String]) -> Agent {
        Agent::spawn(args, &Spawn::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the agent with `args` as `how` says, in either mode; an error if it does not print
    /// `ocf-agent: ready` within 20 s, or has no endpoint at all.
    pub fn spawn(args: &[String], how: &Spawn) -> Result<Agent, String> {
        let Spawned {
            mut child,
            stdout: rx,
            stderr: err_rx,
        } = how.start("ocf-agent", args)?;
        let mut di = String::new();
        let mut endpoints = Vec::new();
        let mut setup_pin = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(v) = line.strip_prefix("ocf-agent: di ") {
                        di = v.to_string();
                    } else if let Some(v) = line.strip_prefix("ocf-agent: endpoint ") {
                        endpoints.push(v.to_string());
                    } else if let Some(v) = line.strip_prefix("ocf-agent: setup PIN ") {
                        setup_pin = Some(v.trim().to_string());
                    } else if line == "ocf-agent: ready" {
                        break;
                    }
                }
                Err(_) => return Err(how.not_ready("ocf-agent", &mut child, &err_rx)),
            }
        }
        // Keep draining stdout so the agent never blocks on a full pipe.
        std::thread::spawn(move || for _ in rx {});
        let addr_of = |scheme: &str| -> Option<SocketAddr> {
            endpoints
                .iter()
                .find_map(|e| e.strip_prefix(&format!("{scheme}://")))
                .and_then(|a| a.parse().ok())
        };
        let (udp, tcp, tls) = (addr_of("coap"), addr_of("coap+tcp"), addr_of("coaps+tcp"));
        if udp.is_none() && tcp.is_none() && tls.is_none() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "ocf-agent: no coap, coap+tcp or coaps+tcp endpoint in {endpoints:?}"
            ));
        }
        Ok(Agent {
            child,
            di,
            udp,
            tcp,
            tls,
            endpoints,
            setup_pin,
            stderr: err_rx,
            log: Vec::new(),
        })
    }

    /// The UDP endpoint; panics if the agent printed none.
    pub fn udp(&self) -> SocketAddr {
        self.udp.unwrap_or_else(|| {
            panic!(
                "ocf-agent printed no coap:// endpoint: {:?}",
                self.endpoints
            )
        })
    }

    /// The plain coap+tcp endpoint; panics if there is none (it exists only with
    /// `--insecure-dev`, as [`Agent::start`] runs the agent).
    pub fn tcp(&self) -> SocketAddr {
        self.tcp.unwrap_or_else(|| {
            panic!(
                "ocf-agent printed no coap+tcp:// endpoint (only --insecure-dev has one): {:?}",
                self.endpoints
            )
        })
    }

    /// The secure coaps+tcp endpoint; panics if the agent printed none.
    pub fn tls(&self) -> SocketAddr {
        self.tls.unwrap_or_else(|| {
            panic!(
                "ocf-agent printed no coaps+tcp:// endpoint: {:?}",
                self.endpoints
            )
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything the agent wrote to stderr so far.
    pub fn log(&mut self) -> &[String] {
        self.log.extend(self.stderr.try_iter());
        &self.log
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: plain kill(2) on our own child's PID.
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("ocf-agent did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads once from `stream` through `conn`, queueing the messages that arrive in `pending` and
/// writing what the connection answers by itself (Pong, CSM); false when the connection is gone
/// (closed, Release/Abort, error, read timeout).
pub(crate) fn read_messages(
    stream: &mut dyn ReadWrite,
    conn: &mut TcpConnection,
    pending: &mut Vec<Packet>,
) -> bool {
    let mut buf = [0u8; 4096];
    let n = match stream.read(&mut buf) {
        Ok(0) | Err(_) => return false,
        Ok(n) => n,
    };
    for ev in conn.receive(&buf[..n]) {
        match ev {
            ConnEvent::Message(p) => pending.push(p),
            ConnEvent::Transmit(bytes) => {
                let _ = stream.write_all(&bytes);
                let _ = stream.flush();
            }
            ConnEvent::Close { .. } => return false,
            _ => {}
        }
    }
    true
}

/// Receiving on a CoAP-over-TCP client, plain ([`TcpClient`]) or TLS
/// ([`tls_client::TlsClient`]).
pub trait Receive: Sized {
    /// The stream, the connection state and the messages read but not taken yet.
    fn parts(&mut self) -> (&mut dyn ReadWrite, &mut TcpConnection, &mut Vec<Packet>);

    /// Waits for the next application message (request, response or notification).
    fn recv(&mut self) -> Option<Packet> {
        self.recv_matching(|_| true)
    }

    /// Waits for the message with `token`, keeping others for later `recv` calls.
    fn recv_token(&mut self, token: &[u8]) -> Option<Packet> {
        self.recv_matching(|p| p.get_token() == token)
    }

    /// The first message that `pick` takes, reading while there is none; `None` when the
    /// connection is gone.
    fn recv_matching(&mut self, pick: impl Fn(&Packet) -> bool) -> Option<Packet> {
        let (stream, conn, pending) = self.parts();
        loop {
            if let Some(i) = pending.iter().position(&pick) {
                return Some(pending.remove(i));
            }
            if !read_messages(stream, conn, pending) {
                return None;
            }
        }
    }
}

/// A byte stream in both directions.
pub trait ReadWrite: Read + Write {}

impl<T: Read + Write> ReadWrite for T {}

impl Receive for TcpClient {
    fn parts(&mut self) -> (&mut dyn ReadWrite, &mut TcpConnection, &mut Vec<Packet>) {
        (&mut self.stream, &mut self.conn, &mut self.pending)
    }
}

/// A blocking CoAP-over-TCP client built on the project's sans-IO connection.
pub struct TcpClient {
    pub stream: TcpStream,
    pub conn: TcpConnection,
    next_token: u64,
    pending: Vec<Packet>,
}

impl TcpClient {
    pub fn connect(addr: SocketAddr) -> TcpClient {
        TcpClient::try_connect(addr).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Connects and sends our CSM; answers within 10 s are expected.
    pub fn try_connect(addr: SocketAddr) -> Result<TcpClient, String> {
        let stream = TcpStream::connect(addr).map_err(|e| format!("connect to {addr}: {e}"))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("nodelay: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| format!("timeout: {e}"))?;
        let mut conn = TcpConnection::new(1 << 20);
        let mut client = TcpClient {
            stream,
            conn: TcpConnection::new(1 << 20),
            next_token: 1,
            pending: Vec::new(),
        };
        let csm = conn.start();
        client.conn = conn;
        client
            .stream
            .write_all(&csm)
            .map_err(|e| format!("send CSM to {addr}: {e}"))?;
        Ok(client)
    }

    pub fn token(&mut self) -> Vec<u8> {
        self.next_token += 1;
        self.next_token.to_be_bytes().to_vec()
    }

    pub fn send(&mut self, packet: &Packet) {
        let bytes = self.conn.encode(packet).expect("encode");
        self.stream.write_all(&bytes).expect("write");
    }

    /// Sends a request and waits for the response with its token.
    pub fn request(&mut self, req: &Request) -> Response {
        let token = self.token();
        self.request_with_token(req, &token)
    }

    /// [`TcpClient::request`] with errors instead of panics.
    pub fn try_request(&mut self, req: &Request) -> Result<Response, String> {
        let token = self.token();
        let bytes = self
            .conn
            .encode(&req.to_packet(&token))
            .map_err(|e| format!("encode: {e:?}"))?;
        self.stream
            .write_all(&bytes)
            .map_err(|e| format!("send: {e}"))?;
        let p = self
            .recv_token(&token)
            .ok_or("the connection closed (or 10 s passed) before the response")?;
        Response::from_packet(&p).ok_or_else(|| "the answer is not a CoAP response".to_string())
    }

    pub fn request_with_token(&mut self, req: &Request, token: &[u8]) -> Response {
        self.send(&req.to_packet(token));
        let p = self
            .recv_token(token)
            .expect("connection closed before the response");
        Response::from_packet(&p).expect("a response")
    }
}

/// A blocking CoAP-over-UDP client.
pub struct UdpClient {
    pub socket: UdpSocket,
    pub peer: SocketAddr,
    mid: u16,
}

impl UdpClient {
    pub fn new(peer: SocketAddr) -> UdpClient {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        UdpClient {
            socket,
            peer,
            mid: 100,
        }
    }

    pub fn send(&mut self, packet: &mut Packet, confirmable: bool) -> u16 {
        self.mid = self.mid.wrapping_add(1);
        packet.header.message_id = self.mid;
        packet.header.set_type(if confirmable {
            MessageType::Confirmable
        } else {
            MessageType::NonConfirmable
        });
        let bytes = packet.to_bytes().expect("encode");
        self.socket.send_to(&bytes, self.peer).expect("send");
        self.mid
    }

    pub fn recv(&mut self) -> Option<Packet> {
        let mut buf = [0u8; 2048];
        let (n, _) = self.socket.recv_from(&mut buf).ok()?;
        Packet::from_bytes(&buf[..n]).ok()
    }

    /// Sends a CON request and waits for its piggybacked answer. A block-wise answer
    /// (RFC 7959 Block2) is reassembled by asking for the following blocks, as libcoap does.
    pub fn request(&mut self, req: &Request) -> (Packet, Response) {
        let (first, mut resp) = self.request_block(req, None);
        let Some(mut block) = first
            .get_first_option(CoapOption::Block2)
            .and_then(|b| Block::decode(b))
        else {
            return (first, resp);
        };
        while block.more {
            let next = Block {
                num: block.num + 1,
                more: false,
                szx: block.szx,
            };
            let (p, r) = self.request_block(req, Some(next));
            assert_eq!(
                r.etag, resp.etag,
                "representation changed during block-wise transfer"
            );
            resp.payload.extend_from_slice(&r.payload);
            block = p
                .get_first_option(CoapOption::Block2)
                .and_then(|b| Block::decode(b))
                .expect("Block2 on every block");
        }
        (first, resp)
    }

    fn request_block(&mut self, req: &Request, block: Option<Block>) -> (Packet, Response) {
        let mut p = req.to_packet(&[7, 7, 7, 7]);
        if let Some(b) = block {
            p.add_option(CoapOption::Block2, b.encode());
        }
        let mid = self.send(&mut p, true);
        loop {
            let r = self.recv().expect("no UDP response");
            if r.header.message_id == mid && r.get_token() == [7, 7, 7, 7] {
                let resp = Response::from_packet(&r).expect("a response");
                return (r, resp);
            }
        }
    }
}

pub fn get(path: &str) -> Request {
    let mut r = Request::new(Method::Get, path);
    r.accept = Some(ContentFormat::OCF_CBOR_NUMBER);
    r
}

pub fn post_cbor(path: &str, body: &Value) -> Request {
    let mut r = Request::new(Method::Post, path);
    r.content_format = Some(ContentFormat::OCF_CBOR_NUMBER);
    r.payload = ocf::model::encode_payload(ContentFormat::OcfCbor, body).expect("encode");
    r
}

/// Decodes a response body by its Content-Format.
pub fn body(r: &Response) -> Value {
    let cf = r
        .content_format
        .and_then(ContentFormat::from_number)
        .unwrap_or(ContentFormat::OcfCbor);
    decode_payload(cf, &r.payload).unwrap_or_else(|e| panic!("bad body: {e}"))
}

pub fn key<'a>(v: &'a Value, k: &str) -> Option<&'a Value> {
    v.as_map()?
        .iter()
        .find(|(kk, _)| kk.as_text() == Some(k))
        .map(|(_, v)| v)
}

pub fn map(entries: &[(&str, Value)]) -> Value {
    Value::Map(
        entries
            .iter()
            .map(|(k, v)| (Value::Text(k.to_string()), v.clone()))
            .collect(),
    )
}
