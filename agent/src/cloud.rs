//! The cloud link's I/O (OCF-PROTOCOL.md §1, §5-§8): a tokio task that moves bytes for the
//! sans-IO [`CloudLink`] over one coaps+tcp (or, for development clouds, coap+tcp) connection.
//!
//! Every protocol decision is the link's (`ocf::cloud::link`): our CSM first, Pongs, keepalive
//! Pings and their timeout, Abort on a bad frame, Block2 fitting of responses and
//! notifications, Block1 for requests larger than the cloud's Max-Message-Size, when to
//! reconnect. This task only:
//!
//! - resolves, connects (TCP_NODELAY, §7.7) and runs TLS for [`Output::Connect`], and reports
//!   the result ([`CloudLink::connected`], [`CloudLink::connect_failed`]);
//! - feeds what it reads to [`CloudLink::receive`], writes [`Output::Transmit`] within
//!   [`WRITE_TIMEOUT`] and reports a broken stream ([`CloudLink::transport_lost`]);
//! - executes [`Output::Close`] (a Release first when the link gives one);
//! - serves [`Output::Request`]s through the resource tree and hands the answers back
//!   ([`CloudLink::respond`]); the connection is registered with [`Agent::open_stream`] so that
//!   observations the cloud makes (plgd's batch observation of `/oic/res?if=oic.if.b`
//!   included) are notified on it like on any local connection ([`CloudLink::notify`]);
//! - persists the session's state and logs its progress.
//!
//! - **Configuration**: CoAPCloudConf is served by [`ocf::server::Server`] over the session it
//!   shares with the link; a write wakes the task ([`ocf::server::Event::CloudConfChanged`]).
//! - **Persistence**: every [`Output::Session(SessionEvent::Persist)`] is written atomically (0600) to `cloud.cbor` in
//!   the state directory; it is restored at start, so a registered device signs in again after a
//!   restart without a second sign-up (§7.5).
//! - **Onboarding gate**: the link runs only in RFNOP; always in the development mode
//!   (`--insecure-dev`). The server sets the session's gate and wakes the task.
//! - **Transport**: `coaps+tcp://host[:5684]` (TLS 1.3 / 1.2 with the identity certificate of
//!   `/oic/sec/cred` and the identity key, the cloud verified against the trust anchors
//!   provisioned for its `sid` and CN `uuid:<sid>`, [`crate::tls`]) or, in the development
//!   mode only, `coap+tcp://host[:5683]` (plain).
//! - **Authorisation**: requests the cloud forwards are checked against the ACEs for the
//!   cloud's `sid` ([`ocf::server::Server::handle`]); without one they get 4.01.
//! - **Timing**: [`Timing::default`] is the documented behaviour. The hidden flag
//!   `--cloud-timing KEY=VALUE,...` shortens it for tests (see [`parse_timing`]).
//!
//! Never logged: `at`, tokens, keys ([`Output`]'s and the payload types' `Debug` redact them;
//! request bodies are not logged at all).

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coap_lite::Packet;
use ocf::cloud::link::{CloseReason, CloudLink, Output};
use ocf::cloud::resource::{SharedSession, HREF};
use ocf::cloud::uri::CloudUri;
use ocf::cloud::{CloudSession, ConnectError, DeviceInfo, PersistedState, SessionEvent, Timing};
use ocf::security::PeerIdentity;
use ocf::server::{ConnKind, Peer};
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, error, info, warn};

use crate::security::Credentials;
use crate::server::Agent;
use crate::state::{atomic_write, Identity};
use crate::tls;

/// The persisted cloud state ([`PersistedState`], CBOR) in the state directory.
pub const STATE_FILE: &str = crate::state::CLOUD_FILE;

/// Largest message accepted from the cloud (announced in our CSM). plgd's RD responses echo
/// the published links; 64 KiB leaves room for a board with many resources.
const MAX_MESSAGE_SIZE: u32 = 64 * 1024;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 4096;
/// A write that does not complete in this time means the cloud stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a Release may take when we close the connection ourselves.
const RELEASE_TIMEOUT: Duration = Duration::from_millis(200);

/// A byte stream to the cloud: plain TCP or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

/// A connected stream and, over TLS, the cloud's verified identity.
type Connected = (Box<dyn Io>, Option<PeerIdentity>);

type ConnectFuture = Pin<Box<dyn Future<Output = Result<Connected, ConnectFailure>>>>;

/// Why [`connect`] failed: what to log, and what the session is told.
struct ConnectFailure {
    message: String,
    kind: ConnectError,
}

impl From<String> for ConnectFailure {
    fn from(message: String) -> Self {
        ConnectFailure {
            message,
            kind: ConnectError::Network,
        }
    }
}

/// The cloud link's handle for the maintenance procedures: what they ask of the session, and
/// what the link task tells them back. The session itself is the server's
/// ([`ocf::server::Server::cloud`]), borrowed only for the span of one call.
pub struct Cloud {
    session: SharedSession,
    timing: Timing,
    /// A sign-out (before a reboot) finished: [`Output::Session(SessionEvent::SignedOut)`] was seen.
    signed_out: Cell<bool>,
    /// The session was replaced (a factory reset): whatever connection the link task still
    /// holds belongs to the old identity and must be closed, even if the old session's
    /// `Disconnect` had not been executed yet.
    drop_link: Cell<bool>,
    signed_out_notify: Notify,
    /// A deregistration completed ([`Output::Session(SessionEvent::Deregistered)`]).
    deregistered: Notify,
}

impl Cloud {
    fn new(session: SharedSession, timing: Timing) -> Cloud {
        Cloud {
            session,
            timing,
            signed_out: Cell::new(false),
            signed_out_notify: Notify::new(),
            deregistered: Notify::new(),
            drop_link: Cell::new(false),
        }
    }

    /// Starts the deregistration of a factory reset ([`CloudSession::deregister`]): the cloud
    /// answers, the session's deregistration timeout passes, or there is no connection; either
    /// way the session ends unconfigured and its state is wiped.
    pub fn start_deregister(&self, agent: &Agent) {
        info!("deregistering from the cloud");
        self.with_session(|s| s.deregister(Instant::now()));
        agent.cloud_wake.notify_one();
    }

    /// Resolves once a deregistration completed, with whether the cloud was told.
    pub async fn deregistered(&self) -> bool {
        loop {
            let notified = self.deregistered.notified();
            if self.is_unconfigured() {
                return self.session.borrow().deregistration_told();
            }
            notified.await;
        }
    }

    /// The bound of a deregistration: the session's own timeout and the link task's turn.
    pub fn deregister_bound(&self) -> Duration {
        self.timing.deregister_timeout + Duration::from_secs(2)
    }

    /// No cloud configuration (`cps` uninitialized): a deregistration has completed.
    pub fn is_unconfigured(&self) -> bool {
        self.session.borrow().cps() == ocf::cloud::Cps::Uninitialized
    }

    /// After a factory reset gave the server a fresh session: the old connection is closed.
    pub fn renewed(&self, agent: &Agent) {
        self.drop_link.set(true);
        agent.cloud_wake.notify_one();
    }

    /// Starts the sign-out before a reboot (`login: false`, OCF-PROTOCOL.md §5.2).
    pub fn start_sign_out(&self, agent: &Agent) {
        self.signed_out.set(false);
        info!("signing out of the cloud");
        self.with_session(|s| s.sign_out(Instant::now()));
        agent.cloud_wake.notify_one();
    }

    /// Resolves once the session reports the sign-out done (answered, failed or timed out; at
    /// once if not signed in).
    pub async fn signed_out(&self) {
        loop {
            let notified = self.signed_out_notify.notified();
            if self.signed_out.get() {
                return;
            }
            notified.await;
        }
    }

    /// Connects again after a sign-out whose reboot did not happen.
    pub fn resume(&self, agent: &Agent) {
        self.with_session(|s| s.resume(Instant::now()));
        agent.cloud_wake.notify_one();
    }

    /// How long a request to the cloud may take (the bound of a sign-out).
    pub fn request_timeout(&self) -> Duration {
        self.timing.request_timeout
    }

    fn with_session<R>(&self, f: impl FnOnce(&mut CloudSession) -> R) -> R {
        f(&mut self.session.borrow_mut())
    }

    /// Hands the device's current discoverable links to the session (which filters out the
    /// unpublished kinds and does nothing if the set is unchanged).
    fn sync_links(&self, agent: &Agent) {
        let links = agent.server.borrow_mut().publishable_links();
        match links {
            Ok(links) => self.with_session(|s| s.set_links(links, Instant::now())),
            Err(e) => warn!("{e}"),
        }
    }
}

/// The cloud timing: `--cloud-timing` (tests) or the documented default.
pub fn timing(spec: Option<&str>) -> Result<Timing, String> {
    match spec {
        Some(spec) => parse_timing(spec),
        None => Ok(Timing::default()),
    }
}

/// Starts the link task over the server's session (restored from `cloud.cbor` with
/// [`load_session`]), which connects only while the server's gate allows it (RFNOP, or the
/// development mode). Call it once the resources are populated.
pub fn start(
    state_dir: &Path,
    agent: &Rc<Agent>,
    credentials: &Rc<Credentials>,
    timing: Timing,
    shutdown: watch::Receiver<bool>,
) -> Rc<Cloud> {
    let session = agent.server.borrow().cloud().clone();
    let cloud = Rc::new(Cloud::new(session, timing));
    cloud.sync_links(agent);
    tokio::task::spawn_local(run(
        cloud.clone(),
        agent.clone(),
        credentials.clone(),
        state_dir.to_path_buf(),
        shutdown,
    ));
    cloud
}

/// `ocf-agent csr`: prints a PKCS#10 CSR (PEM) with CN `uuid:<di>` for the identity key,
/// creating the identity and the key if needed.
pub fn print_csr(state_dir: &Path) -> Result<(), String> {
    let (identity, _) = Identity::load_or_create(state_dir).map_err(|e| e.to_string())?;
    let (key, _) = tls::ensure_identity_key(state_dir)?;
    print!("{}", tls::csr_pem(&key, &identity.di)?);
    Ok(())
}

fn seed() -> u64 {
    let (a, b) = uuid::Uuid::new_v4().as_u64_pair();
    a ^ b.rotate_left(17)
}

/// Restores `cloud.cbor`. A file that cannot be used is moved aside (named in the error log)
/// and the device starts without cloud configuration: safe, and repaired by onboarding again.
pub fn load_session(dir: &Path, device: DeviceInfo, timing: Timing) -> CloudSession {
    let path = dir.join(STATE_FILE);
    let unusable = |why: String| {
        crate::state::report_and_quarantine(
            &path,
            &why,
            "the device starts without cloud configuration (cps uninitialized); onboard it again",
        );
        CloudSession::new(device.clone(), timing, seed())
    };
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return CloudSession::new(device, timing, seed())
        }
        Err(e) => {
            warn!(
                "{}: cannot read ({e}); starting without cloud configuration",
                path.display()
            );
            return CloudSession::new(device, timing, seed());
        }
    };
    let state = match PersistedState::from_cbor(&bytes) {
        Ok(state) => state,
        Err(e) => return unusable(format!("unusable cloud state ({e})")),
    };
    match CloudSession::restore(state, device.clone(), timing, seed()) {
        Ok(s) => {
            info!(cps = %s.cps(), "restored the cloud state");
            s
        }
        Err(e) => unusable(format!("unusable cloud state ({e})")),
    }
}

/// `--cloud-timing`: comma-separated `KEY=VALUE` overriding [`Timing::default`], for tests.
/// Durations take `ms` or `s` (`250ms`, `2s`); counts are plain integers. Keys: `ping`,
/// `pong-timeout`, `ping-retry`, `missed-pongs`, `request-timeout`, `deregister-timeout`,
/// `connect-timeout`, `backoff-base`, `backoff-cap`, `attempts`, `stale-margin`.
pub fn parse_timing(spec: &str) -> Result<Timing, String> {
    fn duration(key: &str, v: &str) -> Result<Duration, String> {
        let bad = || format!("--cloud-timing: {key}={v:?} is not a duration like 250ms or 2s");
        if let Some(ms) = v.strip_suffix("ms") {
            ms.parse().map(Duration::from_millis).map_err(|_| bad())
        } else if let Some(s) = v.strip_suffix('s') {
            s.parse().map(Duration::from_secs).map_err(|_| bad())
        } else {
            Err(bad())
        }
    }
    fn count(key: &str, v: &str) -> Result<u32, String> {
        v.parse()
            .map_err(|_| format!("--cloud-timing: {key}={v:?} is not a count"))
    }
    let mut t = Timing::default();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("--cloud-timing: {item:?} is not KEY=VALUE"))?;
        let (k, v) = (k.trim(), v.trim());
        match k {
            "ping" => t.ping_interval = duration(k, v)?,
            "pong-timeout" => t.pong_timeout = duration(k, v)?,
            "ping-retry" => t.ping_retry = duration(k, v)?,
            "missed-pongs" => t.max_missed_pongs = count(k, v)?,
            "request-timeout" => t.request_timeout = duration(k, v)?,
            "deregister-timeout" => t.deregister_timeout = duration(k, v)?,
            "connect-timeout" => t.connect_timeout = duration(k, v)?,
            "backoff-base" => t.backoff_base = duration(k, v)?,
            "backoff-cap" => t.backoff_cap = duration(k, v)?,
            "attempts" => t.attempts_before_failure = count(k, v)?,
            "stale-margin" => t.stale_token_margin = duration(k, v)?,
            other => return Err(format!("--cloud-timing: unknown key {other:?}")),
        }
    }
    Ok(t)
}

/// What [`connect`] needs, decided when the session asks to connect: the cloud's address and,
/// for `coaps+tcp`, the TLS configuration with the device's credentials. A plain `coap+tcp`
/// cloud is only allowed in the development mode (its requests could not be authenticated).
fn prepare_connect(
    agent: &Agent,
    credentials: &Credentials,
    uri: &str,
    sid: &str,
) -> Result<(CloudUri, Option<Arc<ClientConfig>>), String> {
    let target = CloudUri::parse(uri)?;
    if target.secure {
        let security = agent.server.borrow().security().clone();
        let config = credentials.cloud_client_config(&security.borrow(), sid)?;
        Ok((target, Some(config)))
    } else if credentials.dev_mode() {
        Ok((target, None))
    } else {
        Err(format!(
            "{uri}: a plain coap+tcp cloud is only allowed with --insecure-dev; use coaps+tcp"
        ))
    }
}

/// Opens the connection for [`Output::Connect`]: TCP (TCP_NODELAY), then TLS for `coaps+tcp`.
/// Returns the stream and, over TLS, the cloud's identity (its certificate was verified against
/// the trust anchors, CN `uuid:<sid>` included).
async fn connect(
    uri: String,
    prepared: Result<(CloudUri, Option<Arc<ClientConfig>>), String>,
) -> Result<Connected, ConnectFailure> {
    // A device without credentials cannot get anywhere.
    let (target, tls) = prepared?;
    let addrs: Vec<_> = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("{}: {e}", target.host))?
        .collect();
    let mut last = format!("{}: no address", target.host);
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    let stream = stream.ok_or(last)?;
    // OCF-PROTOCOL.md §7.7: Nagle would hold the last responses of a burst back.
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let Some(config) = tls else {
        return Ok((Box::new(stream), None));
    };
    let name = tls::server_name(&target.host)?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| match tls::not_valid_yet(&e) {
            // Our clock, most likely (no RTC, no time sync yet): transient, see ConnectError.
            Some(when) => ConnectFailure {
                message: format!("TLS with {uri}: {}", when.clock_message("the cloud's")),
                kind: ConnectError::ClockBehind,
            },
            None => format!("TLS with {uri}: {e}").into(),
        })?;
    let (_, conn) = stream.get_ref();
    debug!(
        version = ?conn.protocol_version(),
        suite = ?conn.negotiated_cipher_suite().map(|s| s.suite()),
        "TLS established"
    );
    let identity = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|leaf| PeerIdentity::from_certificate_der(leaf, true).ok());
    Ok((Box::new(stream), identity))
}

/// The live connection: the byte stream and the agent's view of it.
struct Transport {
    io: Box<dyn Io>,
    /// Its id in [`Agent`]'s stream table (observations are tied to it).
    id: u64,
    /// Notifications for the cloud's observations.
    outbox: mpsc::Receiver<Packet>,
}

impl Transport {
    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let io = &mut self.io;
        match tokio::time::timeout(WRITE_TIMEOUT, async {
            io.write_all(bytes).await?;
            io.flush().await
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the cloud does not read",
            )),
        }
    }

    /// Closes the connection, writing `release` first if given, then forgets its
    /// observations.
    async fn close(mut self, agent: &Agent, release: Option<Vec<u8>>) {
        if let Some(bytes) = release {
            let _ = tokio::time::timeout(RELEASE_TIMEOUT, async {
                let _ = self.io.write_all(&bytes).await;
                let _ = self.io.shutdown().await;
            })
            .await;
        }
        agent.close_stream(self.id);
    }
}

enum Event {
    Timer,
    Wake,
    Connected(Result<Connected, ConnectFailure>),
    Read(io::Result<usize>),
    Outbound(Option<Packet>),
    Shutdown,
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

async fn connect_opt(pending: &mut Option<ConnectFuture>) -> Result<Connected, ConnectFailure> {
    match pending {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn read_opt(io: Option<&mut Box<dyn Io>>, buf: &mut [u8]) -> io::Result<usize> {
    match io {
        Some(io) => io.read(buf).await,
        None => std::future::pending().await,
    }
}

async fn recv_opt(outbox: Option<&mut mpsc::Receiver<Packet>>) -> Option<Packet> {
    match outbox {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The link task: executes the link's outputs and feeds it what happens on the socket.
async fn run(
    cloud: Rc<Cloud>,
    agent: Rc<Agent>,
    credentials: Rc<Credentials>,
    dir: PathBuf,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut link = CloudLink::new(cloud.session.clone(), MAX_MESSAGE_SIZE);
    let mut transport: Option<Transport> = None;
    let mut connecting: Option<ConnectFuture> = None;
    let mut buf = vec![0u8; READ_CHUNK];
    // The last clock failure's description, for the session's one ClockBehind report.
    let mut clock_behind: Option<String> = None;
    let mut stopping = false;
    loop {
        if cloud.drop_link.take() {
            link.session_replaced();
        }
        // 1. Do what the link asks.
        while let Some(output) = link.poll_output() {
            match output {
                Output::Connect { uri, sid } => {
                    if let Some(old) = transport.take() {
                        old.close(&agent, None).await;
                    }
                    info!(%uri, %sid, "connecting to the cloud");
                    let prepared = prepare_connect(&agent, &credentials, &uri, &sid);
                    connecting = Some(Box::pin(connect(uri, prepared)));
                }
                Output::Transmit(bytes) => {
                    let Some(t) = transport.as_mut() else {
                        continue;
                    };
                    if let Err(e) = t.write(&bytes).await {
                        warn!("cloud connection lost: {e}");
                        if let Some(old) = transport.take() {
                            old.close(&agent, None).await;
                        }
                        link.transport_lost(Instant::now());
                    }
                }
                Output::Close { release, reason } => {
                    connecting = None;
                    match &reason {
                        CloseReason::Requested => debug!("closing the cloud connection"),
                        CloseReason::SessionReplaced => debug!(
                            "closing the cloud connection of the identity a factory reset replaced"
                        ),
                        CloseReason::ObserverTooSlow => {
                            warn!("the cloud does not keep up with notifications; reconnecting")
                        }
                        CloseReason::Peer(_) => warn!("cloud connection lost: {reason}"),
                        CloseReason::Reconnecting | CloseReason::ShuttingDown => {}
                    }
                    if let Some(old) = transport.take() {
                        old.close(&agent, release).await;
                    }
                }
                Output::Request(request) => {
                    let Some(t) = transport.as_ref() else {
                        continue;
                    };
                    // Authorised against the ACEs for the cloud's sid (crate::security).
                    let Some(response) = agent.serve(Peer::Cloud(t.id), &request) else {
                        continue;
                    };
                    debug!(
                        method = %request.header.code,
                        path = %uri_path(&request),
                        code = %response.header.code,
                        "request from the cloud"
                    );
                    link.respond(&request, response);
                }
                Output::Undeliverable { what, error } => {
                    warn!("cannot send {what} to the cloud: {error}")
                }
                Output::Session(SessionEvent::Persist(state)) => persist(&dir, &state),
                Output::Session(SessionEvent::StatusChanged { cps, clec }) => {
                    info!(%cps, clec = clec.as_u8(), "cloud status");
                    agent.device().mark_changed(HREF);
                    agent.flush_notifications();
                }
                Output::Session(SessionEvent::Registered { uid }) => {
                    info!(%uid, "signed up with the cloud")
                }
                Output::Session(SessionEvent::SignedIn { expiresin }) => {
                    info!(expiresin, "signed in to the cloud")
                }
                Output::Session(SessionEvent::Published { links }) => {
                    let hrefs: Vec<&str> = links.iter().map(|l| l.href.as_str()).collect();
                    info!(?hrefs, "published to the cloud");
                }
                Output::Session(SessionEvent::Unpublished { hrefs }) => {
                    info!(?hrefs, "unpublished from the cloud")
                }
                Output::Session(SessionEvent::Deregistered) => {
                    info!("deregistered from the cloud");
                    cloud.deregistered.notify_waiters();
                }
                Output::Session(SessionEvent::ClockBehind) => {
                    let message = clock_behind.take().unwrap_or_else(|| {
                        "the cloud's certificate is not valid yet; the system clock is probably \
                         behind: no time sync yet? retrying"
                            .to_owned()
                    });
                    warn!("cannot connect to the cloud: {message}");
                }
                Output::Session(SessionEvent::SignedOut) => {
                    info!("signed out of the cloud");
                    cloud.signed_out.set(true);
                    cloud.signed_out_notify.notify_waiters();
                }
            }
        }
        if stopping {
            if let Some(old) = transport.take() {
                old.close(&agent, None).await;
            }
            return;
        }
        // Notifications the requests above caused.
        agent.flush_notifications();

        // 2. Wait for the next thing to happen.
        let deadline = link.poll_timeout();
        let (io, outbox) = match transport.as_mut() {
            Some(t) => (Some(&mut t.io), Some(&mut t.outbox)),
            None => (None, None),
        };
        let event = tokio::select! {
            _ = sleep_until_opt(deadline) => Event::Timer,
            _ = agent.cloud_wake.notified() => Event::Wake,
            r = connect_opt(&mut connecting) => Event::Connected(r),
            r = read_opt(io, &mut buf) => Event::Read(r),
            p = recv_opt(outbox) => Event::Outbound(p),
            _ = shutdown.changed() => Event::Shutdown,
        };

        // 3. Tell the link.
        let now = Instant::now();
        match event {
            Event::Timer => link.handle_timeout(now),
            Event::Wake => cloud.sync_links(&agent),
            Event::Connected(Ok((io, identity))) => {
                connecting = None;
                let (id, outbox) = agent.open_stream();
                agent
                    .server
                    .borrow_mut()
                    .open(id, ConnKind::Cloud { identity });
                transport = Some(Transport { io, id, outbox });
                info!("connected to the cloud");
                link.connected(now);
            }
            Event::Connected(Err(e)) => {
                connecting = None;
                match e.kind {
                    // Logged once per run, when the session says so (Output::Session(SessionEvent::ClockBehind)).
                    ConnectError::ClockBehind => {
                        debug!("cannot connect to the cloud: {}", e.message);
                        clock_behind = Some(e.message);
                    }
                    ConnectError::Network => warn!("cannot connect to the cloud: {}", e.message),
                }
                link.connect_failed(e.kind, now);
            }
            Event::Read(Ok(n)) if n > 0 => link.receive(&buf[..n], now),
            Event::Read(result) => {
                if let Some(old) = transport.take() {
                    match result {
                        Ok(_) => info!("the cloud closed the connection"),
                        Err(e) => warn!("cloud connection lost: {e}"),
                    }
                    old.close(&agent, None).await;
                    link.transport_lost(now);
                }
            }
            Event::Outbound(Some(packet)) => link.notify(packet),
            // The agent gave up on this connection's notifications.
            Event::Outbound(None) => link.notifications_overflowed(now),
            Event::Shutdown => {
                link.shut_down();
                stopping = true;
            }
        }
    }
}

fn uri_path(p: &Packet) -> String {
    let mut s = String::new();
    for seg in p
        .get_option(coap_lite::CoapOption::UriPath)
        .into_iter()
        .flatten()
    {
        s.push('/');
        s.push_str(&String::from_utf8_lossy(seg));
    }
    s
}

fn persist(dir: &Path, state: &PersistedState) {
    let path = dir.join(STATE_FILE);
    let bytes = match state.to_cbor() {
        Ok(b) => b,
        Err(e) => {
            error!("cannot encode the cloud state: {e}");
            return;
        }
    };
    match atomic_write(&path, &bytes) {
        Ok(()) => debug!(cps = %state.cps, "cloud state saved"),
        Err(e) => error!("{}: cannot save the cloud state: {e}", path.display()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;

    use ciborium::Value;
    use coap_lite::{CoapOption, MessageClass, ResponseType};
    use ocf::coap::tcp_conn::{ConnEvent, TcpConnection};
    use ocf::resource::{
        Backend, Device, DeviceInfo as OcfDeviceInfo, Interface, Method, PlatformInfo, Policy,
        Props, Request, Resource, ResourceError, Response, RES_HREF,
    };
    use rustls::pki_types::PrivateKeyDer;
    use tokio::io::AsyncRead;

    /// A switch for the test device.
    struct Switch(bool);

    impl Backend for Switch {
        fn retrieve(&mut self) -> Result<Props, ResourceError> {
            Ok([("value".to_string(), Value::Bool(self.0))]
                .into_iter()
                .collect())
        }
        fn update(&mut self, props: &Props) -> Result<(), ResourceError> {
            match props.get("value") {
                Some(Value::Bool(b)) => {
                    self.0 = *b;
                    Ok(())
                }
                _ => Err(ResourceError::BadRequest("value".into())),
            }
        }
    }

    /// The test device (a switch) behind a server with the security state of `dir`
    /// (development mode: the interim files and no access control on the cloud link; else the
    /// credentials of /oic/sec/cred and the ACEs), and its credentials.
    pub(crate) fn agent(dir: &Path, dev_mode: bool) -> (Rc<Agent>, Rc<Credentials>) {
        let di = crate::tls::tests::DI;
        let mut device = Device::new(
            OcfDeviceInfo {
                di: di.into(),
                piid: "c0ffee00-0000-4000-8000-000000000002".into(),
                name: "test".into(),
                device_type: "oic.d.switch".into(),
                spec_version: "ocf.2.5.0".into(),
                data_model_version: "ocf.res.1.3.0".into(),
                software_version: "0".into(),
            },
            PlatformInfo::default(),
        );
        device
            .add(Resource::new(
                "/switch",
                &["oic.r.switch.binary"],
                &[Interface::Actuator, Interface::Baseline],
                Policy::discoverable_observable(),
                Box::new(Switch(false)),
            ))
            .unwrap();
        let (key, _) = tls::ensure_identity_key(dir).unwrap();
        let credentials =
            Rc::new(Credentials::new(dir.to_path_buf(), dev_mode, key, None).unwrap());
        let timing = parse_timing("backoff-base=50ms").unwrap();
        let session = load_session(
            dir,
            DeviceInfo {
                di: di.into(),
                name: "test".into(),
            },
            timing,
        );
        let server = ocf::server::Server::new(
            device,
            crate::security::load_state(dir, di).unwrap().0,
            session,
            ocf::server::Options {
                dev_mode,
                pin: ocf::security::Pin::new("12345678").unwrap(),
                random: crate::security::random_fill,
                default_name: "test".into(),
                cloud_timing: timing,
            },
            Instant::now(),
        )
        .unwrap();
        let config = credentials.server_config(di).unwrap();
        let agent = Rc::new(Agent::new(server, dir.to_path_buf(), config));
        (agent, credentials)
    }

    /// Writes CoAPCloudConf as a POST would, and wakes the link.
    fn configure(agent: &Agent, props: &Props) {
        let session = agent.server.borrow().cloud().clone();
        ocf::cloud::resource::apply_update(&mut session.borrow_mut(), props, Instant::now())
            .unwrap();
        agent.cloud_wake.notify_one();
    }

    fn cps(agent: &Agent) -> Option<Value> {
        let session = agent.server.borrow().cloud().clone();
        let p = ocf::cloud::resource::representation(&session.borrow());
        p.get("cps").cloned()
    }

    /// The cloud side of one connection, scripted by the test.
    struct FakeCloud<S> {
        io: S,
        conn: TcpConnection,
        pending: Vec<Packet>,
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> FakeCloud<S> {
        async fn new(mut io: S) -> Self {
            let mut conn = TcpConnection::new(1 << 20);
            io.write_all(&conn.start()).await.unwrap();
            FakeCloud {
                io,
                conn,
                pending: Vec::new(),
            }
        }

        async fn next(&mut self) -> Packet {
            let mut buf = [0u8; 4096];
            loop {
                if !self.pending.is_empty() {
                    return self.pending.remove(0);
                }
                let n = tokio::time::timeout(Duration::from_secs(10), self.io.read(&mut buf))
                    .await
                    .expect("the device went quiet")
                    .unwrap();
                assert!(n > 0, "the device closed the connection");
                for ev in self.conn.receive(&buf[..n]) {
                    match ev {
                        ConnEvent::Message(p) => self.pending.push(p),
                        ConnEvent::Transmit(b) => self.io.write_all(&b).await.unwrap(),
                        ConnEvent::Close { reason } => panic!("closed: {reason}"),
                        ConnEvent::Pong { .. } => {}
                    }
                }
            }
        }

        async fn send(&mut self, p: &Packet) {
            let b = self.conn.encode(p).unwrap();
            self.io.write_all(&b).await.unwrap();
            self.io.flush().await.unwrap();
        }

        /// Expects a request to `path` and answers it with `code` and a CBOR body.
        async fn answer(&mut self, path: &str, code: ResponseType, body: Value) -> Packet {
            let req = self.next().await;
            assert_eq!(uri_path(&req), path, "{req:?}");
            let mut r = Response::new(code);
            r.content_format = Some(10000);
            ciborium::into_writer(&body, &mut r.payload).unwrap();
            self.send(&r.to_packet(req.get_token())).await;
            req
        }

        async fn request(&mut self, req: &Request, token: &[u8]) -> Packet {
            self.send(&req.to_packet(token)).await;
            loop {
                let p = self.next().await;
                if p.get_token() == token {
                    return p;
                }
            }
        }
    }

    fn map(entries: &[(&str, Value)]) -> Value {
        Value::Map(
            entries
                .iter()
                .map(|(k, v)| (Value::Text(k.to_string()), v.clone()))
                .collect(),
        )
    }

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    fn conf(cis: &str, sid: &str) -> Props {
        [
            ("cis", cis),
            ("sid", sid),
            ("apn", "plgd"),
            ("at", "CODE-SECRET"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), text(v)))
        .collect()
    }

    /// Registers through a fake cloud on `accept`ed connections, then serves a forwarded GET
    /// and the batch observation of /oic/res over the cloud connection.
    async fn scenario<S, F, Fut>(cis: String, sid: &str, dir: &Path, accept: F)
    where
        S: AsyncRead + AsyncWrite + Unpin,
        F: Fn() -> Fut,
        Fut: Future<Output = S>,
    {
        let (agent, credentials) = agent(dir, true);
        let (stop_tx, stop_rx) = watch::channel(false);
        let timing = parse_timing("backoff-base=50ms").unwrap();
        let _cloud = start(dir, &agent, &credentials, timing, stop_rx);
        configure(&agent, &conf(&cis, sid));
        let mut c = FakeCloud::new(accept().await).await;

        let req = c
            .answer(
                "/oic/sec/account",
                ResponseType::Changed,
                map(&[
                    ("accesstoken", text("AT-SECRET")),
                    ("refreshtoken", text("RT-SECRET")),
                    ("uid", text("user-1")),
                    ("expiresin", Value::Integer((-1).into())),
                ]),
            )
            .await;
        let body: Value = ciborium::from_reader(&req.payload[..]).unwrap();
        assert_eq!(ocf_text(&body, "accesstoken"), "CODE-SECRET");
        c.answer(
            "/oic/sec/session",
            ResponseType::Changed,
            map(&[("expiresin", Value::Integer((-1).into()))]),
        )
        .await;
        let publish = c
            .answer(
                "/oic/rd",
                ResponseType::Changed,
                map(&[("links", Value::Array(vec![]))]),
            )
            .await;
        let body: Value = ciborium::from_reader(&publish.payload[..]).unwrap();
        let hrefs: Vec<String> = match body
            .as_map()
            .and_then(|m| m.iter().find(|(k, _)| k.as_text() == Some("links")))
        {
            Some((_, Value::Array(links))) => links
                .iter()
                .filter_map(|l| {
                    l.as_map()?
                        .iter()
                        .find(|(k, _)| k.as_text() == Some("href"))?
                        .1
                        .as_text()
                        .map(str::to_string)
                })
                .collect(),
            _ => panic!("no links: {body:?}"),
        };
        assert!(hrefs.contains(&"/switch".to_string()), "{hrefs:?}");
        assert!(
            !hrefs.iter().any(|h| h == HREF || h == RES_HREF),
            "{hrefs:?}"
        );

        // A forwarded read.
        let mut get = Request::new(Method::Get, "/switch");
        get.query.push(("if".into(), "oic.if.baseline".into()));
        let r = c.request(&get, &[1, 2, 3, 4]).await;
        assert_eq!(r.header.code, MessageClass::Response(ResponseType::Content));
        // plgd's batch observation; a change is notified on the cloud connection.
        let mut obs = Request::new(Method::Get, RES_HREF);
        obs.query.push(("if".into(), "oic.if.b".into()));
        obs.observe = Some(0);
        let r = c.request(&obs, &[9, 9, 9, 9]).await;
        assert!(
            r.get_option(CoapOption::Observe).is_some(),
            "batch observation registered"
        );
        let mut post = Request::new(Method::Post, "/switch");
        post.content_format = Some(10000);
        ciborium::into_writer(&map(&[("value", Value::Bool(true))]), &mut post.payload).unwrap();
        let r = c.request(&post, &[5, 5, 5, 5]).await;
        assert_eq!(r.header.code, MessageClass::Response(ResponseType::Changed));
        let note = loop {
            let p = c.next().await;
            if p.get_token() == [9, 9, 9, 9] {
                break p;
            }
        };
        assert!(note.get_option(CoapOption::Observe).is_some());

        assert_eq!(cps(&agent), Some(text("registered")));
        let state =
            PersistedState::from_cbor(&std::fs::read(dir.join(STATE_FILE)).unwrap()).unwrap();
        assert_eq!(state.cps, ocf::cloud::Cps::Registered);
        assert!(
            state.conf.unwrap().at.is_empty(),
            "the single-use at is dropped once used"
        );
        let _ = stop_tx.send(true);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    fn ocf_text(v: &Value, k: &str) -> String {
        v.as_map()
            .and_then(|m| m.iter().find(|(kk, _)| kk.as_text() == Some(k)))
            .and_then(|(_, v)| v.as_text())
            .unwrap_or_default()
            .to_string()
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ocf-cloud-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        crate::state::ensure_dir(&d).unwrap();
        d
    }

    fn local(f: impl Future<Output = ()>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, f);
    }

    #[test]
    fn link_over_plain_tcp() {
        let dir = temp_dir("plain");
        local(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let cis = format!("coap+tcp://{}", listener.local_addr().unwrap());
            let listener = Rc::new(listener);
            scenario(cis, crate::tls::tests::SID, &dir, || {
                let l = listener.clone();
                async move { l.accept().await.unwrap().0 }
            })
            .await;
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn link_over_mutual_tls() {
        use crate::tls::tests::{leaf, pki, DI, SID};
        let dir = temp_dir("tls");
        let server = pki(&format!("uuid:{SID}"));
        let (key, _) = tls::ensure_identity_key(&dir).unwrap();
        std::fs::write(
            dir.join(tls::IDENTITY_CERT),
            leaf(&format!("uuid:{DI}"), &server.ca, &key).pem(),
        )
        .unwrap();
        std::fs::write(dir.join(tls::CLOUD_CA), &server.ca_pem).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(server.ca.der().clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            tls::provider(),
        )
        .build()
        .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                server.server_chain.clone(),
                PrivateKeyDer::clone_key(&server.server_key),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        local(async {
            let listener = Rc::new(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
            let cis = format!("coaps+tcp://{}", listener.local_addr().unwrap());
            scenario(cis, SID, &dir, || {
                let (l, a) = (listener.clone(), acceptor.clone());
                async move {
                    let tcp = l.accept().await.unwrap().0;
                    a.accept(tcp).await.unwrap()
                }
            })
            .await;
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A TLS acceptor for a fake cloud `uuid:<SID>` that requires a device certificate from
    /// `server.ca`.
    fn cloud_acceptor(server: &crate::tls::tests::Pki) -> tokio_rustls::TlsAcceptor {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(server.ca.der().clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            tls::provider(),
        )
        .build()
        .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                server.server_chain.clone(),
                PrivateKeyDer::clone_key(&server.server_key),
            )
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    #[test]
    fn secure_mode_uses_cred_and_authorises_forwarded_requests_against_the_sid_ace() {
        use crate::tls::tests::{leaf, pki, DI, SID};
        use ocf::security::cred::{CredUsage, NewCred};
        use ocf::security::{AclBackend, DosState, Trigger};
        let _ = DosState::Rfotm;
        let dir = temp_dir("secure");
        let server = pki(&format!("uuid:{SID}"));
        let (agent, credentials) = agent(&dir, false);
        let security = agent.server.borrow().security().clone();
        // Onboarded as a Mediator would: identity certificate and trust anchor in
        // /oic/sec/cred (no interim files), owned, RFNOP.
        {
            let (key, _) = tls::ensure_identity_key(&dir).unwrap();
            let cert = leaf(&format!("uuid:{DI}"), &server.ca, &key).pem();
            let mut s = security.borrow_mut();
            s.add_local_credential(NewCred::new(None, DI, CredUsage::Cert, &cert, DI).unwrap())
                .unwrap();
            s.add_local_credential(
                NewCred::new(None, SID, CredUsage::TrustCa, &server.ca_pem, DI).unwrap(),
            )
            .unwrap();
            let owner = PeerIdentity {
                uuid: Some("00000000-0000-4000-8000-0000000000aa".into()),
                spki_sha256: [7; 32],
                chain_verified: false,
            };
            s.take_ownership(&owner).unwrap();
            s.set_dos(DosState::Rfnop, Trigger::Request).unwrap();
        }
        let events = agent.server.borrow_mut().sync(Instant::now());
        agent.execute(events);
        assert!(!dir.join(tls::IDENTITY_CERT).exists());
        assert!(agent.server.borrow().cloud_allowed());
        assert!(
            prepare_connect(&agent, &credentials, "coap+tcp://127.0.0.1:5683", SID).is_err(),
            "no plain cloud outside the development mode"
        );
        let acceptor = cloud_acceptor(&server);
        local(async {
            let (stop_tx, stop_rx) = watch::channel(false);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let cis = format!("coaps+tcp://{}", listener.local_addr().unwrap());
            let timing = parse_timing("backoff-base=50ms").unwrap();
            let cloud = start(&dir, &agent, &credentials, timing, stop_rx.clone());
            configure(&agent, &conf(&cis, SID));
            let tcp = listener.accept().await.unwrap().0;
            let mut c = FakeCloud::new(acceptor.accept(tcp).await.unwrap()).await;
            let token = |t: &str| {
                map(&[
                    ("accesstoken", text(t)),
                    ("refreshtoken", text("RT")),
                    ("uid", text("u")),
                    ("expiresin", Value::Integer((-1).into())),
                ])
            };
            c.answer("/oic/sec/account", ResponseType::Changed, token("AT"))
                .await;
            c.answer(
                "/oic/sec/session",
                ResponseType::Changed,
                map(&[("expiresin", Value::Integer((-1).into()))]),
            )
            .await;
            c.answer(
                "/oic/rd",
                ResponseType::Changed,
                map(&[("links", Value::Array(vec![]))]),
            )
            .await;

            let code = |p: &Packet| match p.header.code {
                MessageClass::Response(r) => r,
                other => panic!("not a response: {other:?}"),
            };
            let batch_hrefs = |p: &Packet| -> Vec<String> {
                let v: Value = ciborium::from_reader(&p.payload[..]).unwrap();
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|i| ocf_text(i, "href"))
                    .collect()
            };
            let mut batch = Request::new(Method::Get, RES_HREF);
            batch.query.push(("if".into(), "oic.if.b".into()));
            // Without an ACE for the sid: nothing.
            let r = c.request(&Request::new(Method::Get, "/switch"), &[1]).await;
            assert_eq!(code(&r), ResponseType::Unauthorized);
            let r = c.request(&batch, &[2]).await;
            assert_eq!(code(&r), ResponseType::Content);
            // /oic/d and /oic/p are readable by any peer on a secure connection (the default
            // policy); nothing else without an ACE.
            let sw = format!("ocf://{DI}/switch");
            let conf_href = format!("ocf://{DI}{HREF}");
            let hrefs = batch_hrefs(&r);
            assert!(
                !hrefs.contains(&sw) && !hrefs.contains(&conf_href),
                "{hrefs:?}"
            );

            // The ACE the Mediator provisions: wildcard, all permissions.
            let ace: Props = [(
                "aclist2".to_string(),
                Value::Array(vec![map(&[
                    ("subject", map(&[("uuid", text(SID))])),
                    ("resources", Value::Array(vec![map(&[("wc", text("*"))])])),
                    ("permission", Value::Integer(31.into())),
                ])]),
            )]
            .into_iter()
            .collect();
            AclBackend::new(security.clone()).update(&ace).unwrap();
            let events = agent.server.borrow_mut().sync(Instant::now());
            agent.execute(events);
            let r = c.request(&Request::new(Method::Get, "/switch"), &[3]).await;
            assert_eq!(code(&r), ResponseType::Content);
            let r = c.request(&batch, &[4]).await;
            let hrefs = batch_hrefs(&r);
            assert!(
                hrefs.contains(&sw) && !hrefs.contains(&conf_href),
                "{hrefs:?}"
            );
            // Configuration resources need an explicit href: the wildcard does not cover them.
            let mut post = Request::new(Method::Post, HREF);
            post.content_format = Some(10000);
            ciborium::into_writer(&map(&[("cis", text(""))]), &mut post.payload).unwrap();
            let r = c.request(&post, &[5]).await;
            assert_eq!(code(&r), ResponseType::Unauthorized);
            let r = c
                .request(&Request::new(Method::Get, "/oic/sec/cred"), &[6])
                .await;
            assert_eq!(code(&r), ResponseType::Unauthorized);

            // Factory reset: the deregistration goes out on the live connection first.
            security.borrow_mut().begin_factory_reset();
            let events = agent.server.borrow_mut().sync(Instant::now());
            assert!(events.contains(&ocf::server::Event::FactoryResetRequested));
            agent.execute(events);
            cloud.start_deregister(&agent);
            let del = c.next().await;
            assert_eq!(
                del.header.code,
                MessageClass::Request(coap_lite::RequestType::Delete)
            );
            assert_eq!(uri_path(&del), "/oic/sec/account");
            c.send(&Response::new(ResponseType::Deleted).to_packet(del.get_token()))
                .await;
            let told = tokio::time::timeout(Duration::from_secs(5), cloud.deregistered())
                .await
                .expect("the deregistration did not finish");
            assert!(told, "the cloud was told");
            assert!(cloud.is_unconfigured());
            let _ = stop_tx.send(true);
            tokio::time::sleep(Duration::from_millis(20)).await;
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn timing_overrides() {
        let t = parse_timing(
            "ping=2s, pong-timeout=500ms,attempts=3,backoff-base=100ms,backoff-cap=1s",
        )
        .unwrap();
        assert_eq!(t.ping_interval, Duration::from_secs(2));
        assert_eq!(t.pong_timeout, Duration::from_millis(500));
        assert_eq!(t.attempts_before_failure, 3);
        assert_eq!(t.backoff_base, Duration::from_millis(100));
        assert_eq!(t.backoff_cap, Duration::from_secs(1));
        assert_eq!(t.request_timeout, Timing::default().request_timeout);
        assert_eq!(parse_timing("").unwrap(), Timing::default());
        assert!(parse_timing("ping=2").is_err());
        assert!(parse_timing("ping").is_err());
        assert!(parse_timing("nope=1s").is_err());
        assert!(parse_timing("attempts=x").is_err());
    }
}
