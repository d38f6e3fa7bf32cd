//! [`CloudSession`]: the sans-IO Device-to-Cloud state machine of one device.
//!
//! It owns no socket and no clock (the quinn-proto shape, DESIGN.md §6): the driver feeds it
//! events (`configure`, `handle_connected`, `handle_response`, `handle_timeout`, ...) with the
//! current [`Instant`], then drains [`CloudSession::poll_action`] and sleeps until
//! [`CloudSession::poll_timeout`]. In the agent that driver is [`super::link::CloudLink`],
//! which adds the connection's framing; the sketch below shows the session's contract alone.
//!
//! What it does, and where each rule comes from (section numbers of OCF-PROTOCOL.md):
//! - sign-up once per configuration, never again after a success (§5.1, §10, plgd hub#396);
//! - sign-in on every connection before any other request (§1 step 8, §5.2);
//! - refresh before sign-in after a reconnect when the token may be stale (§7.2, §7.7), and
//!   before expiry on the §7.4 schedule (`expiresin <= 0` = never);
//! - publish to `/oic/rd` (ttl 0) what the RD does not hold yet (everything after a sign-up, then
//!   new or changed links) and unpublish removed links by `ins`; what the RD holds is persisted
//!   with the registration, so neither a reconnect, a refresh nor a reboot republishes unchanged
//!   links (§5.5, §5.6, §7.5, iotivity-lite#51/#53/#147);
//! - RFC 8323 Ping when idle, Pong timeout, reconnect after 6 misses (§7.3);
//! - the 4.01 paths (§4, §5.2, §5.3, iotivity-lite#22/#74), `redirecturi` (§5.1), sign-out
//!   (§5.2), deregistration with a 10 s timeout (§4, §5.4);
//! - reconnect with exponential back-off and full jitter ([`super::schedule`]);
//! - `cps`/`clec` per the §4 transition table, `clec` 0 while still retrying (§12,
//!   iotivity-lite#35/#47).
//!
//! # Driving it from tokio
//!
//! ```text
//! let mut session = match store.load_cloud()? {
//!     Some(state) => CloudSession::restore(state, device, Timing::default(), seed)?,
//!     None => CloudSession::new(device, Timing::default(), seed),
//! };
//! session.set_links(resources.publishable_links(), Instant::now());
//! session.set_provisioned(pstat.is_rfnop(), Instant::now());
//! let mut conn: Option<CloudConnection> = None; // framed coap(s)+tcp, Pong answering inside
//! loop {
//!     while let Some(action) = session.poll_action() {
//!         match action {
//!             Action::Connect { uri, sid } => {
//!                 // connect (TLS: verify CN uuid:<sid>) in the background; report the result
//!                 pending_connect = Some(spawn_connect(uri, sid));
//!             }
//!             Action::Disconnect => { conn = None; pending_connect = None; }
//!             Action::Send(packet) => conn.as_mut().map(|c| c.queue(packet)),
//!             Action::SendPing { token } => conn.as_mut().map(|c| c.queue_ping(token)),
//!             Action::Event(SessionEvent::Persist(state)) => store.save_cloud_atomically(&state)?, // 0600, fsync
//!             Action::Event(SessionEvent::StatusChanged { cps, clec }) => cloud_conf_resource.notify(cps, clec),
//!             other => tracing::info!(?other, "cloud"),
//!         }
//!     }
//!     let deadline = session.poll_timeout();
//!     tokio::select! {
//!         _ = sleep_until_opt(deadline) => session.handle_timeout(Instant::now()),
//!         r = wait_connect(&mut pending_connect) => match r {
//!             Ok(c) => { conn = Some(c); session.handle_connected(Instant::now()) }
//!             Err(_) => session.handle_disconnected(Instant::now()),
//!         },
//!         frame = read_frame(&mut conn) => {
//!             let now = Instant::now();
//!             match frame {
//!                 Ok(f) => {
//!                     session.handle_received(now);           // any traffic = liveness
//!                     match f {
//!                         Frame::Pong(token) => { session.handle_pong(&token, now); }
//!                         Frame::Response(p) => { session.handle_response(&p, now); }
//!                         Frame::Request(p) => conn_reply(resources.serve(p)),
//!                         _ => {}
//!                     }
//!                 }
//!                 Err(_) => { conn = None; session.handle_disconnected(now) }
//!             }
//!         }
//!         ev = local_events.recv() => match ev {           // from the local endpoint / security
//!             CloudConfWritten(conf) => { reply(session.configure(conf, Instant::now())) }
//!             LinksChanged(links) => session.set_links(links, Instant::now()),
//!             PstatChanged(rfnop) => session.set_provisioned(rfnop, Instant::now()),
//!             Reboot => session.sign_out(Instant::now()),     // reboot after SessionEvent::SignedOut
//!             FactoryReset => session.deregister(Instant::now()), // reset after Deregistered
//!         },
//!     }
//! }
//! ```
//!
//! Contract for the driver: after it executes [`Action::Disconnect`] it must drop that connection
//! and not report `handle_disconnected` for it; it reports `handle_disconnected` only for a
//! connection that failed or closed on its own (including a failed connect attempt).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use coap_lite::option_value::OptionValueU16;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};
use serde::{Deserialize, Serialize};

use super::payload::{
    from_cbor, to_cbor, Clec, CloudConf, ConfError, Cps, PayloadError, PublishedLink, RdLink,
    RdPublishRequest, RdPublishResponse, Secret, SessionRequest, SignInResponse, SignUpRequest,
    SignUpResponse, TokenRefreshRequest, TokenRefreshResponse, CF_OCF_CBOR, DEVICE_TYPE_DEVICE,
    GRANT_TYPE_REFRESH_TOKEN, REL_HOSTS,
};
use super::schedule::{backoff_delay, refresh_delay, SplitMix64};

/// Sign-up and deregistration (OCF-PROTOCOL.md §5.1, §5.4).
pub const URI_ACCOUNT: &str = "/oic/sec/account";
/// Sign-in and sign-out (§5.2).
pub const URI_SESSION: &str = "/oic/sec/session";
/// Token refresh (§5.3).
pub const URI_TOKEN_REFRESH: &str = "/oic/sec/tokenrefresh";
/// Resource Directory (§5.5, §5.6).
pub const URI_RD: &str = "/oic/rd";

/// OCF-Accept-Content-Format-Version option number (§2.5).
const OPT_OCF_ACCEPT_VERSION: u16 = 2049;
/// OCF-Content-Format-Version option number (§2.5).
const OPT_OCF_CONTENT_VERSION: u16 = 2053;
/// Version value 2048 = "1.0.0" (§2.6).
const OCF_VERSION_1_0_0: u16 = 0x0800;
/// Length of the tokens the session generates (iotivity-lite uses 8 random bytes, §2.4).
const TOKEN_LEN: usize = 8;
/// At most this many `ins` per unpublish request, to keep the header small (§5.6: iotivity-lite
/// splits long lists too).
const MAX_INS_PER_UNPUBLISH: usize = 16;

/// Resource types that are never published: discovery itself, the security resources and the
/// cloud configuration (OCF-PROTOCOL.md §7.6, "Not published").
const UNPUBLISHED_RTS: &[&str] = &[
    "oic.wk.res",
    "oic.wk.introspection",
    "oic.r.coapcloudconf",
    "oic.r.doxm",
    "oic.r.pstat",
    "oic.r.cred",
    "oic.r.acl",
    "oic.r.acl2",
    "oic.r.amacl",
    "oic.r.csr",
    "oic.r.crl",
    "oic.r.roles",
    "oic.r.sp",
    "oic.r.ael",
    "oic.r.sdi",
];

/// Who the session speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Device UUID (`di`).
    pub di: String,
    /// Device name, sent as `n` in the RD publish (iotivity-lite extra, §5.5).
    pub name: String,
}

/// Every timer of the session. [`Timing::default`] is the documented behaviour; tests and the
/// e2e setup may shorten it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Ping after this much silence (§7.3: 20 s).
    pub ping_interval: Duration,
    /// Wait this long for the Pong (§7.3: 4 s).
    pub pong_timeout: Duration,
    /// After a missed Pong, ping again this long after noticing (§7.3: 4 s).
    pub ping_retry: Duration,
    /// Consecutive missed Pongs that declare the connection dead (§7.3: 6).
    pub max_missed_pongs: u32,
    /// A request without a response after this long is a connection error (§7.1). 10 s: plgd's
    /// sign-up exchanges an OAuth code, which can take a few seconds.
    pub request_timeout: Duration,
    /// Deregistration timeout (§4: 10 s).
    pub deregister_timeout: Duration,
    /// The driver's connect (TCP + TLS) attempt counts as failed after this long.
    pub connect_timeout: Duration,
    /// First back-off ceiling (the first retry comes within 1 s).
    pub backoff_base: Duration,
    /// Back-off cap (60 s).
    pub backoff_cap: Duration,
    /// Consecutive failed attempts per server before `cps` becomes `failed` (or the next
    /// `x.org.iotivity.servers` entry is tried while signing up) (§7.1: iotivity-lite's 6).
    pub attempts_before_failure: u32,
    /// On a reconnect, refresh before sign-in when less than this is left of the token: plgd hub
    /// refuses tokens with under 2 min left (§5.2, §10), plus a minute of margin.
    pub stale_token_margin: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(4),
            ping_retry: Duration::from_secs(4),
            max_missed_pongs: 6,
            request_timeout: Duration::from_secs(10),
            deregister_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(20),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(60),
            attempts_before_failure: 6,
            stale_token_margin: Duration::from_secs(180),
        }
    }
}

/// The result of a successful sign-up, kept until deregistration or a wipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// User id from the sign-up (any text).
    pub uid: String,
    /// Current access token; empty after a sign-in 4.01 dropped it.
    pub accesstoken: Secret,
    /// Current refresh token.
    pub refreshtoken: Secret,
    /// The last lifetime the cloud reported, in seconds (`<= 0` = never expires).
    pub expiresin: i64,
}

/// One link the cloud RD holds (OCF-PROTOCOL.md §5.5, §7.5): the link exactly as published, to
/// tell after a reboot whether it changed since, and the `ins` the RD assigned, to unpublish it
/// once it is gone (§5.6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedRecord {
    /// The link as it was published (after the `rel` default).
    pub link: RdLink,
    /// RD-assigned instance id; `None` if the RD gave none (then it cannot be unpublished
    /// individually).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ins: Option<i64>,
}

/// Everything that must survive a restart (OCF-PROTOCOL.md §7.5), as one serde value: the driver
/// writes it atomically with mode 0600 whenever [`SessionEvent::Persist`] says so (only emitted when
/// the content changed).
///
/// CBOR/JSON shape (version 1):
/// `{"version":1, "cps":"registered", "clec":0, "conf":{"cis","sid","apn","at"?,
/// "x.org.iotivity.servers"?}, "registration":{"uid","accesstoken","refreshtoken","expiresin"},
/// "published"?:[{"link":{"href","rt","if","rel"?,"p"?,...},"ins"?}]}`
///
/// - `cps` is the state to resume in, not the live one: `registered` (sign in after boot),
///   `readytoregister` (sign up), `failed` (wait for a new configuration; `clec` says why),
///   `deregistering` (a deregistration was interrupted: [`CloudSession::restore`] wipes, §9),
///   `uninitialized`.
/// - `clec` is kept only with `failed`.
/// - `at` is dropped once the sign-up succeeded (single-use, §10), so the file holds it only
///   while it is still needed.
/// - No absolute expiry is stored: a Raspberry Pi has no RTC, so wall-clock time at boot may be
///   wrong until NTP syncs, and `Instant` does not survive a reboot. `expiresin` only says whether
///   the token expires at all; a restored expiring token is refreshed before the first sign-in
///   (§7.2, §9 "refreshes (if the token expires) then signs in").
/// - `published` is what the cloud RD holds (§5.5), kept only with `registered` and written after
///   every successful publish or unpublish. iotivity-lite persists neither the links nor their
///   `ins` and republishes everything at the first sign-in after each boot (§7.5); here a reboot
///   publishes only new or changed links and unpublishes removed ones by their persisted `ins`
///   (§5.6). An older file without the key loads as "nothing published", so that device
///   publishes everything after its first sign-in.
/// - Trade-off: should the cloud have lost the links while the device was away (it should not:
///   plgd's RD keeps them until they are unpublished or the device is deleted, and a deleted
///   device fails sign-in), only links that change are published again; a new CoAPCloudConf
///   configuration publishes everything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedState {
    /// Format version, [`PersistedState::VERSION`].
    pub version: u32,
    /// State to resume in (see above).
    pub cps: Cps,
    /// Last error, meaningful with `cps` = `failed`.
    #[serde(default)]
    pub clec: Clec,
    /// The CoAPCloudConf configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conf: Option<CloudConf>,
    /// The registration, once signed up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<Registration>,
    /// What the cloud RD holds, ordered by href; only with `registered` (see above). Optional,
    /// so files written before it existed still load as version 1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<PublishedRecord>,
}

impl PersistedState {
    /// The current format version.
    pub const VERSION: u32 = 1;

    /// Encodes as CBOR.
    pub fn to_cbor(&self) -> Result<Vec<u8>, PayloadError> {
        to_cbor(self)
    }

    /// Decodes from CBOR.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, PayloadError> {
        from_cbor(bytes)
    }
}

/// Why [`CloudSession::restore`] refused a persisted state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreError {
    /// Written by a newer (or unknown) format.
    UnsupportedVersion(u32),
}

impl fmt::Display for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedVersion(v) => write!(f, "unsupported cloud state version {v}"),
        }
    }
}

impl std::error::Error for RestoreError {}

/// What the driver must do (or may log). Drain with [`CloudSession::poll_action`] after every
/// call into the session.
pub enum Action {
    /// Open a connection to `uri` (the `cis`, e.g. `coaps+tcp://host:5684`) and accept the cloud
    /// only with certificate CN `uuid:<sid>` (§8.3). Report the result with `handle_connected` or
    /// `handle_disconnected`.
    Connect {
        /// Cloud URI.
        uri: String,
        /// Expected cloud UUID.
        sid: String,
    },
    /// Close the current connection (or abandon the connect attempt).
    Disconnect,
    /// Send this request on the current connection (RFC 8323 framing; type and message id are
    /// irrelevant over TCP).
    Send(Packet),
    /// Send an RFC 8323 Ping (7.02) with this token; report the Pong with `handle_pong`.
    SendPing {
        /// Ping token.
        token: Vec<u8>,
    },
    /// A report for the driver to act on or log.
    Event(SessionEvent),
}

/// What the session reports: state to persist, status changes and milestones (for the log).
pub enum SessionEvent {
    /// Write this state atomically (0600).
    Persist(Box<PersistedState>),
    /// `cps`/`clec` changed: update CoAPCloudConf and notify its observers.
    StatusChanged {
        /// New provisioning status.
        cps: Cps,
        /// New last error code.
        clec: Clec,
    },
    /// The sign-up succeeded.
    Registered {
        /// The user id the cloud assigned.
        uid: String,
    },
    /// The sign-in succeeded: the cloud will now discover and observe the device.
    SignedIn {
        /// Token lifetime the cloud reported (`<= 0` = never expires).
        expiresin: i64,
    },
    /// Links were published to the cloud RD.
    Published {
        /// Hrefs and their RD-assigned `ins`.
        links: Vec<PublishedLink>,
    },
    /// Links were removed from the cloud RD.
    Unpublished {
        /// The removed hrefs.
        hrefs: Vec<String>,
    },
    /// Deregistration finished: the cloud state is wiped and `cps` is `uninitialized`.
    Deregistered,
    /// Sign-out finished (or there was nothing to sign out from): safe to reboot.
    SignedOut,
    /// The first of a run of connection attempts that failed because the cloud's certificate is
    /// not valid yet by the device's clock ([`ConnectError::ClockBehind`]): tell the user the
    /// clock is probably behind. Later failures of the same run are not reported again.
    ClockBehind,
}

/// Why a connection attempt failed, as far as the session cares (the driver classifies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectError {
    /// Unreachable, refused, reset, timed out, a TLS failure: the cloud may be down or wrong.
    /// Retried with back-off; repeated, it makes `cps` `failed` (§7.1).
    Network,
    /// The cloud's certificate is not valid yet (RFC 5280 §4.1.2.5: now < notBefore). Boards
    /// without a real-time clock (Pi 3/4, QEMU) start at the build date or 1970 until time
    /// sync, so this is our clock, not the cloud: retried with the same back-off, but it never
    /// changes `cps`/`clec` and never makes the device give up.
    ClockBehind,
}

impl fmt::Debug for Action {
    /// Redacts secrets: a request is shown by method, path and size only (its body and query may
    /// carry tokens).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect { uri, sid } => f
                .debug_struct("Connect")
                .field("uri", uri)
                .field("sid", sid)
                .finish(),
            Self::Disconnect => f.write_str("Disconnect"),
            Self::Send(p) => f
                .debug_struct("Send")
                .field("code", &p.header.code.to_string())
                .field("path", &uri_path(p))
                .field("token", &p.get_token())
                .field("payload_len", &p.payload.len())
                .finish(),
            Self::SendPing { token } => f.debug_struct("SendPing").field("token", token).finish(),
            Self::Event(e) => e.fmt(f),
        }
    }
}

impl fmt::Debug for SessionEvent {
    /// Secrets never appear: the persisted state redacts its tokens.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Persist(s) => f.debug_tuple("Persist").field(s).finish(),
            Self::StatusChanged { cps, clec } => f
                .debug_struct("StatusChanged")
                .field("cps", cps)
                .field("clec", clec)
                .finish(),
            Self::Registered { uid } => f.debug_struct("Registered").field("uid", uid).finish(),
            Self::SignedIn { expiresin } => f
                .debug_struct("SignedIn")
                .field("expiresin", expiresin)
                .finish(),
            Self::Published { links } => f.debug_struct("Published").field("links", links).finish(),
            Self::Unpublished { hrefs } => {
                f.debug_struct("Unpublished").field("hrefs", hrefs).finish()
            }
            Self::Deregistered => f.write_str("Deregistered"),
            Self::SignedOut => f.write_str("SignedOut"),
            Self::ClockBehind => f.write_str("ClockBehind"),
        }
    }
}

/// `/a/b` from a packet's Uri-Path options.
fn uri_path(p: &Packet) -> String {
    let mut s = String::new();
    for seg in p.get_option(CoapOption::UriPath).into_iter().flatten() {
        s.push('/');
        s.push_str(&String::from_utf8_lossy(seg));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Internal state
// ---------------------------------------------------------------------------------------------

/// What the session is trying to do, independent of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No configuration: stay offline.
    Unconfigured,
    /// Keep a connection: sign up if needed, sign in, publish, keep alive, refresh.
    Active,
    /// Stopped by a failure that needs a new configuration (`cps` failed or uninitialized).
    Halted,
    /// `DELETE /oic/sec/account` in flight; ends in `Unconfigured`.
    Deregistering,
    /// Sign-out requested; ends in `SignedOut`.
    SigningOut,
    /// Signed out: offline until `resume` or a new configuration.
    SignedOut,
}

#[derive(Debug)]
enum LinkState {
    /// No connection, nothing scheduled.
    Down,
    /// Waiting for the back-off delay before connecting again.
    Backoff { until: Instant },
    /// `Action::Connect` issued, waiting for the driver.
    Connecting { deadline: Instant },
    /// Connected.
    Up(Conn),
}

#[derive(Debug)]
struct Conn {
    /// Signed in on this connection.
    signed_in: bool,
    /// The tokens were obtained (sign-up or refresh) on this connection and not yet used for a
    /// sign-in: no refresh before the sign-in, and a 4.01 on that sign-in is final.
    tokens_fresh: bool,
    /// The account/session/refresh request in flight (one at a time).
    op: Option<Pending>,
    /// The RD request in flight (one at a time).
    rd: Option<Pending>,
    keepalive: Keepalive,
}

#[derive(Debug)]
struct Pending {
    token: Vec<u8>,
    kind: OpKind,
    deadline: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum OpKind {
    SignUp,
    SignIn,
    Refresh,
    SignOut,
    Deregister,
    Publish(Vec<RdLink>),
    Unpublish(Vec<String>),
}

/// RFC 8323 keepalive (§7.3).
#[derive(Debug)]
struct Keepalive {
    next_ping: Instant,
    outstanding: Option<(Vec<u8>, Instant)>,
    missed: u32,
}

impl Keepalive {
    fn new(now: Instant, interval: Duration) -> Self {
        Self {
            next_ping: now + interval,
            outstanding: None,
            missed: 0,
        }
    }

    /// Traffic arrived: the peer is alive.
    fn alive(&mut self, now: Instant, interval: Duration) {
        *self = Self::new(now, interval);
    }
}

/// What is known about the access token's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenLife {
    /// Never expires (or no token).
    Permanent,
    /// Expires, but when is unknown (restored after a restart).
    Unknown,
    /// Expires at `expires_at`; refresh at `refresh_at` (§7.4).
    Expires {
        expires_at: Instant,
        refresh_at: Instant,
    },
}

/// The longest token lifetime taken at its word, in seconds. A cloud may answer any `expiresin`
/// up to `i64::MAX`; a longer one is treated as this long (the token is refreshed on this
/// schedule, §7.4), so the expiry stays a representable instant and a faulty answer cannot
/// stop the device.
pub const MAX_TOKEN_LIFETIME_SECS: i64 = 365 * 24 * 3600;

impl TokenLife {
    fn from_expiresin(expiresin: i64, now: Instant) -> Self {
        let expiresin = expiresin.min(MAX_TOKEN_LIFETIME_SECS);
        let Some(delay) = refresh_delay(expiresin) else {
            return Self::Permanent;
        };
        let expires_at = now.checked_add(Duration::from_secs(expiresin.unsigned_abs()));
        match (expires_at, now.checked_add(delay)) {
            (Some(expires_at), Some(refresh_at)) => Self::Expires {
                expires_at,
                refresh_at,
            },
            // Only on a clock near the end of its range: no refresh rather than a crash.
            _ => Self::Permanent,
        }
    }
}

/// How a response ends a request (§7.1: 5.03 and 5.04 count as connection errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    Unauthorized,
    ConnectionError,
    Error,
}

impl Outcome {
    /// `None` if the code is not a response code.
    fn of(code: MessageClass) -> Option<Self> {
        let raw: u8 = code.into();
        match (raw >> 5, raw) {
            (2, _) => Some(Self::Success),
            (_, 0x81) => Some(Self::Unauthorized),
            (_, 0xA3 | 0xA4) => Some(Self::ConnectionError),
            (4 | 5, _) => Some(Self::Error),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CloudSession
// ---------------------------------------------------------------------------------------------

/// The Device-to-Cloud state machine for one device. See the module documentation.
pub struct CloudSession {
    device: DeviceInfo,
    timing: Timing,
    rng: SplitMix64,
    provisioned: bool,
    mode: Mode,
    conf: Option<CloudConf>,
    reg: Option<Registration>,
    cps: Cps,
    clec: Clec,
    link: LinkState,
    /// Consecutive failed attempts since the last successful sign-in (drives the back-off).
    failures: u32,
    /// Consecutive failed attempts on the current server.
    server_failures: u32,
    /// Index into [`CloudSession::servers`] (only moves while signing up, §7.1).
    server: usize,
    token_life: TokenLife,
    /// The discoverable links the device wants published, by href.
    desired: BTreeMap<String, RdLink>,
    /// What the cloud RD holds, by href; persisted with the registration (§7.5), so it outlives
    /// a reboot.
    published: BTreeMap<String, PublishedRecord>,
    /// The RD refused the last request: wait for a link change or the next sign-in.
    rd_blocked: bool,
    actions: VecDeque<Action>,
    last_persisted: Option<PersistedState>,
    /// The last deregistration reached the cloud (it answered), or there was no registration to
    /// tell it about; `false` if it was wiped without an answer (offline, timeout).
    deregistration_told: bool,
    /// [`SessionEvent::ClockBehind`] was emitted since the last established connection.
    clock_behind_told: bool,
}

impl fmt::Debug for CloudSession {
    /// Shows the state, never a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudSession")
            .field("di", &self.device.di)
            .field("mode", &self.mode)
            .field("cps", &self.cps)
            .field("clec", &self.clec)
            .field("provisioned", &self.provisioned)
            .field("cis", &self.conf.as_ref().map(|c| c.cis.as_str()))
            .field("uid", &self.reg.as_ref().map(|r| r.uid.as_str()))
            .field("link", &self.link)
            .field("failures", &self.failures)
            .field("token_life", &self.token_life)
            .field("desired_links", &self.desired.len())
            .field("published_links", &self.published.len())
            .field("queued_actions", &self.actions.len())
            .finish()
    }
}

impl CloudSession {
    /// A session for a device without cloud configuration (`cps` uninitialized) that is not yet
    /// provisioned. `seed` feeds tokens and jitter: take it from the OS in the daemon.
    pub fn new(device: DeviceInfo, timing: Timing, seed: u64) -> Self {
        Self {
            device,
            timing,
            rng: SplitMix64::new(seed),
            provisioned: false,
            mode: Mode::Unconfigured,
            conf: None,
            reg: None,
            cps: Cps::Uninitialized,
            clec: Clec::Ok,
            link: LinkState::Down,
            failures: 0,
            server_failures: 0,
            server: 0,
            token_life: TokenLife::Permanent,
            desired: BTreeMap::new(),
            published: BTreeMap::new(),
            rd_blocked: false,
            actions: VecDeque::new(),
            last_persisted: None,
            deregistration_told: false,
            clock_behind_told: false,
        }
    }

    /// A session resumed from what an earlier run persisted. A registered device signs in again
    /// (refreshing first if its token expires) and never signs up again (§7.5, plgd hub#396). A
    /// state saved in the middle of a deregistration is wiped (boot-time recovery, §9): that
    /// queues [`SessionEvent::Persist`] and [`SessionEvent::Deregistered`].
    ///
    /// The caller must wipe the state itself instead if pstat is RFOTM or RESET (§9).
    pub fn restore(
        persisted: PersistedState,
        device: DeviceInfo,
        timing: Timing,
        seed: u64,
    ) -> Result<Self, RestoreError> {
        if persisted.version != PersistedState::VERSION {
            return Err(RestoreError::UnsupportedVersion(persisted.version));
        }
        let mut s = Self::new(device, timing, seed);
        s.last_persisted = Some(persisted.clone());
        let PersistedState {
            cps,
            clec,
            conf,
            registration,
            published,
            ..
        } = persisted;
        match (cps, conf, registration) {
            (Cps::Deregistering, _, _) => s.finish_deregistration(),
            (Cps::Failed, Some(conf), reg) => {
                s.conf = Some(conf);
                s.reg = reg;
                s.mode = Mode::Halted;
                s.cps = Cps::Failed;
                s.clec = clec;
            }
            (Cps::Uninitialized, _, _) | (_, None, _) => {}
            (_, Some(conf), Some(reg)) => {
                s.token_life = if reg.expiresin > 0 {
                    TokenLife::Unknown
                } else {
                    TokenLife::Permanent
                };
                s.conf = Some(conf);
                s.reg = Some(reg);
                s.mode = Mode::Active;
                s.cps = Cps::Registered;
                // What the RD held at shutdown: only changes since are published after the
                // sign-in (§7.5). Keyed by href like `set_links`; a duplicate in a damaged file
                // just collapses.
                s.published = published
                    .into_iter()
                    .map(|r| (r.link.href.clone(), r))
                    .collect();
            }
            (_, Some(conf), None) => {
                s.conf = Some(conf);
                s.mode = Mode::Active;
                s.cps = Cps::ReadyToRegister;
            }
        }
        s.persist();
        Ok(s)
    }

    // -----------------------------------------------------------------------------------------
    // Inputs
    // -----------------------------------------------------------------------------------------

    /// CoAPCloudConf was written (OCF-PROTOCOL.md §4). Applies the state-dependent update rule 1
    /// and the body rule 3 (the resource still rejects a body containing `cps`, rule 2, and
    /// answers 4.00 with the returned error).
    ///
    /// `{"cis":""}` deregisters ([`Self::deregister`]). Any other accepted configuration replaces
    /// the old one: the registration is dropped, `cps` = `readytoregister`, `clec` = 0, and the
    /// session (re)connects once provisioned.
    pub fn configure(&mut self, conf: CloudConf, now: Instant) -> Result<(), ConfError> {
        conf.validate()?;
        if conf.is_deregistration() {
            self.deregister(now);
            return Ok(());
        }
        if matches!(self.cps, Cps::Registering | Cps::Registered) {
            return Err(ConfError::Busy(self.cps));
        }
        if self.mode == Mode::Deregistering {
            self.finish_deregistration();
        }
        self.close();
        self.conf = Some(conf);
        self.reset_registration();
        self.mode = Mode::Active;
        self.set_status(Cps::ReadyToRegister, Clec::Ok);
        self.persist();
        self.drive(now);
        Ok(())
    }

    /// Deregisters (the `{"cis":""}` trigger or a factory reset, §4, §9): with a live connection
    /// and a registration, `DELETE /oic/sec/account?di=..&uid=..` with the deregistration timeout;
    /// any response, a connection error or the timeout completes it. Without a connection it
    /// completes at once. Completion wipes the cloud state (`cps` uninitialized) and queues
    /// [`SessionEvent::Deregistered`].
    pub fn deregister(&mut self, now: Instant) {
        if self.mode == Mode::Deregistering {
            return;
        }
        let can_send = self.reg.is_some() && matches!(self.link, LinkState::Up(_));
        self.deregistration_told = self.reg.is_none();
        if !can_send {
            self.finish_deregistration();
            return;
        }
        if let LinkState::Up(conn) = &mut self.link {
            // Abandon whatever was in flight: its response will be ignored.
            conn.op = None;
            conn.rd = None;
        }
        self.mode = Mode::Deregistering;
        self.set_status(Cps::Deregistering, self.clec);
        // A crash from here on is finished on the next boot (§9 boot-time recovery).
        self.persist();
        self.drive(now);
    }

    /// Signs out (`login: false`, §5.2) before a reboot. A request in flight (a refresh, say) is
    /// completed first so that no rotated token is lost (iotivity-lite#285). Completion (response,
    /// error or timeout) closes the connection and queues [`SessionEvent::SignedOut`]; the session then
    /// stays offline until [`Self::resume`] or a new configuration. `cps` is unchanged: after the
    /// reboot the device signs in again.
    pub fn sign_out(&mut self, now: Instant) {
        match self.mode {
            Mode::Active => {
                self.mode = Mode::SigningOut;
                self.drive(now);
            }
            Mode::SigningOut | Mode::SignedOut => {}
            _ => self
                .actions
                .push_back(Action::Event(SessionEvent::SignedOut)),
        }
    }

    /// Leaves the signed-out state and connects again.
    pub fn resume(&mut self, now: Instant) {
        if self.mode == Mode::SignedOut {
            self.mode = if self.conf.is_some() {
                Mode::Active
            } else {
                Mode::Unconfigured
            };
            self.drive(now);
        }
    }

    /// The device's current discoverable links. Security, discovery and cloud-configuration
    /// resources are filtered out; `rel` defaults to `hosts`. New or changed links are published
    /// and removed ones unpublished by `ins` once signed in; an unchanged set does nothing
    /// (§7.5, plgd hub#766).
    pub fn set_links(&mut self, links: Vec<RdLink>, now: Instant) {
        let desired: BTreeMap<String, RdLink> = links
            .into_iter()
            .filter(is_publishable)
            .map(|mut l| {
                if l.rel.is_empty() {
                    l.rel.push(REL_HOSTS.to_owned());
                }
                (l.href.clone(), l)
            })
            .collect();
        if desired != self.desired {
            self.desired = desired;
            self.rd_blocked = false;
            self.drive(now);
        }
    }

    /// pstat gate: cloud traffic only in RFNOP (§1 step 6, §5). Leaving RFNOP closes the
    /// connection without changing `cps`.
    pub fn set_provisioned(&mut self, provisioned: bool, now: Instant) {
        if provisioned != self.provisioned {
            self.provisioned = provisioned;
            self.drive(now);
        }
    }

    /// The connection asked for by [`Action::Connect`] is up (TLS verified).
    pub fn handle_connected(&mut self, now: Instant) {
        match self.link {
            LinkState::Connecting { .. } => {
                self.clock_behind_told = false;
                self.link = LinkState::Up(Conn {
                    signed_in: false,
                    tokens_fresh: false,
                    op: None,
                    rd: None,
                    keepalive: Keepalive::new(now, self.timing.ping_interval),
                });
                self.drive(now);
            }
            LinkState::Up(_) => {}
            // Not asked for: have it closed.
            LinkState::Down | LinkState::Backoff { .. } => {
                self.actions.push_back(Action::Disconnect)
            }
        }
    }

    /// The connection (or the connect attempt) failed or was closed by the peer.
    pub fn handle_disconnected(&mut self, now: Instant) {
        let kind = match std::mem::replace(&mut self.link, LinkState::Down) {
            LinkState::Up(mut conn) => conn.op.take().map(|p| p.kind),
            LinkState::Connecting { .. } => None,
            other => {
                self.link = other;
                return;
            }
        };
        self.purge_connection_actions();
        self.connection_lost(now, kind);
    }

    /// The connection attempt asked for by [`Action::Connect`] failed, for `error`'s reason.
    /// [`ConnectError::Network`] is the same as [`Self::handle_disconnected`].
    pub fn handle_connect_failed(&mut self, error: ConnectError, now: Instant) {
        if error == ConnectError::Network || !matches!(self.link, LinkState::Connecting { .. }) {
            self.handle_disconnected(now);
            return;
        }
        self.link = LinkState::Down;
        self.purge_connection_actions();
        match self.mode {
            Mode::Active => {
                if !self.clock_behind_told {
                    self.clock_behind_told = true;
                    self.actions
                        .push_back(Action::Event(SessionEvent::ClockBehind));
                }
                // The usual back-off (it grows with `failures`), but not a failure on this
                // server: no `failed`, no switch to an alternative server.
                self.back_off(now);
            }
            // A sign-out or deregistration cannot reach the cloud either way.
            _ => self.connection_lost(now, None),
        }
    }

    /// A response arrived on the cloud connection. Returns `true` if it answered one of the
    /// session's requests (otherwise the driver may treat it as unsolicited). Any response counts
    /// as liveness.
    pub fn handle_response(&mut self, response: &Packet, now: Instant) -> bool {
        let Some(outcome) = Outcome::of(response.header.code) else {
            return false;
        };
        let interval = self.timing.ping_interval;
        let LinkState::Up(conn) = &mut self.link else {
            return false;
        };
        conn.keepalive.alive(now, interval);
        let token = response.get_token();
        let pending = if conn.op.as_ref().is_some_and(|p| p.token == token) {
            conn.op.take()
        } else if conn.rd.as_ref().is_some_and(|p| p.token == token) {
            conn.rd.take()
        } else {
            None
        };
        let Some(pending) = pending else {
            return false;
        };
        match pending.kind {
            OpKind::SignUp => self.on_sign_up(outcome, response, now),
            OpKind::SignIn => self.on_sign_in(outcome, response, now),
            OpKind::Refresh => self.on_refresh(outcome, response, now),
            OpKind::SignOut => self.finish_sign_out(),
            OpKind::Deregister => {
                self.deregistration_told = true;
                self.finish_deregistration()
            }
            OpKind::Publish(links) => self.on_publish(links, outcome, response),
            OpKind::Unpublish(hrefs) => self.on_unpublish(hrefs),
        }
        self.drive(now);
        true
    }

    /// A Pong (7.03) arrived. Returns `true` if it answered the outstanding Ping. Any Pong counts
    /// as liveness.
    pub fn handle_pong(&mut self, token: &[u8], now: Instant) -> bool {
        let interval = self.timing.ping_interval;
        let LinkState::Up(conn) = &mut self.link else {
            return false;
        };
        let matched = conn
            .keepalive
            .outstanding
            .as_ref()
            .is_some_and(|(t, _)| t == token);
        conn.keepalive.alive(now, interval);
        matched
    }

    /// Any frame arrived on the cloud connection (request, response, signal): the peer is alive,
    /// so the idle timer restarts (§7.3: Ping only when idle).
    pub fn handle_received(&mut self, now: Instant) {
        let interval = self.timing.ping_interval;
        if let LinkState::Up(conn) = &mut self.link {
            conn.keepalive.alive(now, interval);
        }
    }

    /// Timers: back-off, connect timeout, request timeouts, keepalive, token refresh. Call it at
    /// (or after) [`Self::poll_timeout`]; an early call does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.link {
            LinkState::Backoff { until } if now >= *until => {
                self.link = LinkState::Down;
            }
            LinkState::Connecting { deadline } if now >= *deadline => {
                self.connection_lost(now, None);
                return;
            }
            LinkState::Up(conn) => {
                // A request not answered in time is a connection error (§7.1).
                let expired = if conn.op.as_ref().is_some_and(|p| now >= p.deadline) {
                    conn.op.take()
                } else if conn.rd.as_ref().is_some_and(|p| now >= p.deadline) {
                    conn.rd.take()
                } else {
                    None
                };
                if let Some(p) = expired {
                    self.connection_lost(now, Some(p.kind));
                    return;
                }
                if self.keepalive_tick(now) {
                    return;
                }
            }
            _ => {}
        }
        self.drive(now);
    }

    /// When [`Self::handle_timeout`] must be called next, if at all.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.link {
            LinkState::Down => None,
            LinkState::Backoff { until } => Some(*until),
            LinkState::Connecting { deadline } => Some(*deadline),
            LinkState::Up(conn) => {
                let mut next = [conn.op.as_ref(), conn.rd.as_ref()]
                    .into_iter()
                    .flatten()
                    .map(|p| p.deadline)
                    .min();
                let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
                if self.keepalive_active(conn) {
                    match &conn.keepalive.outstanding {
                        Some((_, deadline)) => consider(*deadline),
                        None => consider(conn.keepalive.next_ping),
                    }
                }
                if self.mode == Mode::Active && conn.signed_in && conn.op.is_none() {
                    if let Some(at) = self.refresh_at() {
                        consider(at);
                    }
                }
                next
            }
        }
    }

    /// The next thing for the driver to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    // -----------------------------------------------------------------------------------------
    // Queries
    // -----------------------------------------------------------------------------------------

    /// Current provisioning status (`cps`).
    pub fn cps(&self) -> Cps {
        self.cps
    }

    /// Current last error code (`clec`).
    pub fn clec(&self) -> Clec {
        self.clec
    }

    /// The configuration (for rendering CoAPCloudConf; never render `at`).
    pub fn conf(&self) -> Option<&CloudConf> {
        self.conf.as_ref()
    }

    /// The user id, once registered.
    pub fn uid(&self) -> Option<&str> {
        self.reg.as_ref().map(|r| r.uid.as_str())
    }

    /// Whether the last deregistration reached the cloud (it answered `DELETE
    /// /oic/sec/account`), or there was no registration to tell it about. `false` when it was
    /// completed without the cloud (no connection, no answer within the timeout): the cloud may
    /// still list the device (the factory reset reports it in `/oic/mnt` `err`).
    pub fn deregistration_told(&self) -> bool {
        self.deregistration_told
    }

    /// `true` while signed in on a live connection.
    pub fn is_signed_in(&self) -> bool {
        matches!(&self.link, LinkState::Up(c) if c.signed_in)
    }

    /// The links the cloud RD holds, with their `ins`.
    pub fn published_links(&self) -> Vec<PublishedLink> {
        self.published
            .iter()
            .map(|(href, e)| PublishedLink {
                href: href.clone(),
                ins: e.ins,
            })
            .collect()
    }

    /// The state that would be persisted now.
    pub fn persisted_state(&self) -> PersistedState {
        let cps = match self.mode {
            Mode::Unconfigured => Cps::Uninitialized,
            Mode::Deregistering => Cps::Deregistering,
            Mode::Halted => self.cps,
            Mode::Active | Mode::SigningOut | Mode::SignedOut => {
                if self.reg.is_some() {
                    Cps::Registered
                } else if self.conf.is_some() {
                    Cps::ReadyToRegister
                } else {
                    Cps::Uninitialized
                }
            }
        };
        // The RD's links matter only while registered: every other state publishes everything
        // (or nothing) once it is registered again (§7.5).
        let published = if cps == Cps::Registered {
            self.published.values().cloned().collect()
        } else {
            Vec::new()
        };
        PersistedState {
            version: PersistedState::VERSION,
            cps,
            clec: if self.mode == Mode::Halted {
                self.clec
            } else {
                Clec::Ok
            },
            conf: self.conf.clone(),
            registration: self.reg.clone(),
            published,
        }
    }

    // -----------------------------------------------------------------------------------------
    // The engine
    // -----------------------------------------------------------------------------------------

    /// Decides the next step from the current state; called after every change.
    fn drive(&mut self, now: Instant) {
        match self.mode {
            Mode::Active if self.provisioned && self.conf.is_some() => match self.link {
                LinkState::Down => self.start_connect(now),
                LinkState::Up(_) => self.drive_conn(now),
                LinkState::Backoff { .. } | LinkState::Connecting { .. } => {}
            },
            Mode::Deregistering => match self.link {
                LinkState::Up(_) => self.drive_conn(now),
                _ => self.finish_deregistration(),
            },
            Mode::SigningOut => match self.link {
                LinkState::Up(_) => self.drive_conn(now),
                _ => self.finish_sign_out(),
            },
            _ => self.close(),
        }
    }

    /// Next step on a live connection.
    fn drive_conn(&mut self, now: Instant) {
        let LinkState::Up(conn) = &mut self.link else {
            return;
        };
        if conn.op.is_some() {
            return;
        }
        let (signed_in, tokens_fresh) = (conn.signed_in, conn.tokens_fresh);
        match self.mode {
            Mode::Active if !signed_in => {
                // Sign-in before anything else on every connection (§1 step 8); refresh first
                // if the token may be stale (§7.2, §7.7).
                let kind = if self.reg.is_none() {
                    OpKind::SignUp
                } else if self.needs_refresh_first(now, tokens_fresh) {
                    OpKind::Refresh
                } else {
                    OpKind::SignIn
                };
                self.send_op(kind, now);
            }
            Mode::Active => {
                if self.refresh_at().is_some_and(|at| now >= at) {
                    // iotivity-lite signs in again after every refresh (§7.6 row 9); keepalive
                    // and RD traffic pause meanwhile (§7.3).
                    if let LinkState::Up(conn) = &mut self.link {
                        conn.signed_in = false;
                    }
                    self.send_op(OpKind::Refresh, now);
                } else {
                    self.rd_sync(now);
                }
            }
            Mode::SigningOut if signed_in => {
                if let LinkState::Up(conn) = &mut self.link {
                    conn.signed_in = false;
                }
                self.send_op(OpKind::SignOut, now);
            }
            Mode::SigningOut => self.finish_sign_out(),
            Mode::Deregistering => self.send_op(OpKind::Deregister, now),
            _ => {}
        }
    }

    /// Whether to refresh before the first sign-in on this connection.
    fn needs_refresh_first(&self, now: Instant, tokens_fresh: bool) -> bool {
        let Some(reg) = &self.reg else {
            return false;
        };
        if reg.refreshtoken.is_empty() || tokens_fresh {
            return false;
        }
        if reg.accesstoken.is_empty() {
            return true;
        }
        match self.token_life {
            TokenLife::Permanent => false,
            TokenLife::Unknown => true,
            TokenLife::Expires {
                expires_at,
                refresh_at,
            } => {
                now >= refresh_at
                    || expires_at.saturating_duration_since(now) < self.timing.stale_token_margin
            }
        }
    }

    /// When the scheduled refresh is due, if one is possible.
    fn refresh_at(&self) -> Option<Instant> {
        match (&self.reg, self.token_life) {
            (Some(reg), TokenLife::Expires { refresh_at, .. }) if !reg.refreshtoken.is_empty() => {
                Some(refresh_at)
            }
            _ => None,
        }
    }

    fn start_connect(&mut self, now: Instant) {
        let Some((uri, sid)) = self.current_server() else {
            return;
        };
        if self.reg.is_none() && self.cps == Cps::ReadyToRegister {
            // §4: readytoregister → registering when the sign-up is under way.
            self.set_status(Cps::Registering, Clec::Ok);
        }
        self.link = LinkState::Connecting {
            deadline: now + self.timing.connect_timeout,
        };
        self.actions.push_back(Action::Connect { uri, sid });
    }

    /// `cis` first, then the `x.org.iotivity.servers` entries not equal to it (§4, §7.1).
    fn servers(&self) -> Vec<(String, String)> {
        let Some(conf) = &self.conf else {
            return Vec::new();
        };
        let mut v = vec![(conf.cis.clone(), conf.sid.clone())];
        for s in &conf.servers {
            if !s.uri.is_empty() && !v.iter().any(|(u, _)| *u == s.uri) {
                v.push((s.uri.clone(), s.id.clone()));
            }
        }
        v
    }

    fn current_server(&self) -> Option<(String, String)> {
        let servers = self.servers();
        let n = servers.len();
        servers.into_iter().nth(self.server % n.max(1))
    }

    /// Closes the connection, if any, and cancels a pending back-off.
    fn close(&mut self) {
        match std::mem::replace(&mut self.link, LinkState::Down) {
            LinkState::Up(_) | LinkState::Connecting { .. } => {
                self.purge_connection_actions();
                self.actions.push_back(Action::Disconnect);
            }
            LinkState::Down | LinkState::Backoff { .. } => {}
        }
    }

    /// Requests queued for a connection that is gone must not go out on the next one.
    fn purge_connection_actions(&mut self) {
        self.actions
            .retain(|a| !matches!(a, Action::Send(_) | Action::SendPing { .. }));
    }

    /// The connection failed, closed, or a request on it timed out (`during` = the request).
    fn connection_lost(&mut self, now: Instant, during: Option<OpKind>) {
        match self.mode {
            Mode::Deregistering => self.finish_deregistration(),
            Mode::SigningOut => self.finish_sign_out(),
            Mode::Active => {
                let clec = if during == Some(OpKind::Refresh) {
                    Clec::RefreshFailed
                } else {
                    Clec::ConnectFailed
                };
                self.retry_later(now, Some(clec));
            }
            _ => self.close(),
        }
    }

    /// Closes and schedules the next attempt after a full-jitter back-off. After
    /// `attempts_before_failure` failures on a server: while signing up, the next alternative
    /// server is tried; once all are exhausted (or when registered) `cps` becomes `failed` with
    /// `on_exhausted`. Retrying never stops: a device whose cloud was down for an hour comes back
    /// by itself, and `failed` turns into `registered` at the next successful sign-in.
    fn retry_later(&mut self, now: Instant, on_exhausted: Option<Clec>) {
        self.close();
        self.failures = self.failures.saturating_add(1);
        self.server_failures = self.server_failures.saturating_add(1);
        if self.server_failures >= self.timing.attempts_before_failure.max(1) {
            self.server_failures = 0;
            let n = self.servers().len();
            let exhausted = if self.reg.is_none() && n > 1 {
                self.server = (self.server + 1) % n;
                self.server == 0
            } else {
                true
            };
            if let (true, Some(clec)) = (exhausted, on_exhausted) {
                self.set_status(Cps::Failed, clec);
            }
        }
        self.back_off_delay(now);
    }

    /// Closes and waits a full-jitter back-off before the next attempt, counting a failure for
    /// the back-off's growth only.
    fn back_off(&mut self, now: Instant) {
        self.close();
        self.failures = self.failures.saturating_add(1);
        self.back_off_delay(now);
    }

    fn back_off_delay(&mut self, now: Instant) {
        let delay = backoff_delay(
            self.failures,
            self.timing.backoff_base,
            self.timing.backoff_cap,
            &mut self.rng,
        );
        self.link = LinkState::Backoff { until: now + delay };
    }

    /// Stops until a new configuration arrives.
    fn halt(&mut self, cps: Cps, clec: Clec) {
        let was_signing_out = self.mode == Mode::SigningOut;
        self.mode = Mode::Halted;
        self.close();
        self.set_status(cps, clec);
        self.persist();
        if was_signing_out {
            self.actions
                .push_back(Action::Event(SessionEvent::SignedOut));
        }
    }

    /// Forgets the registration (tokens, uid) and what was published.
    fn reset_registration(&mut self) {
        self.reg = None;
        self.token_life = TokenLife::Permanent;
        self.published.clear();
        self.rd_blocked = false;
        self.failures = 0;
        self.server_failures = 0;
        self.server = 0;
    }

    fn finish_deregistration(&mut self) {
        self.close();
        self.conf = None;
        self.reset_registration();
        self.mode = Mode::Unconfigured;
        self.set_status(Cps::Uninitialized, Clec::Ok);
        self.persist();
        self.actions
            .push_back(Action::Event(SessionEvent::Deregistered));
    }

    fn finish_sign_out(&mut self) {
        self.close();
        self.mode = Mode::SignedOut;
        self.actions
            .push_back(Action::Event(SessionEvent::SignedOut));
    }

    fn set_status(&mut self, cps: Cps, clec: Clec) {
        if (cps, clec) != (self.cps, self.clec) {
            self.cps = cps;
            self.clec = clec;
            self.actions
                .push_back(Action::Event(SessionEvent::StatusChanged { cps, clec }));
        }
    }

    /// Queues [`SessionEvent::Persist`] if the persisted state changed.
    fn persist(&mut self) {
        let state = self.persisted_state();
        if self.last_persisted.as_ref() != Some(&state) {
            self.last_persisted = Some(state.clone());
            self.actions
                .push_back(Action::Event(SessionEvent::Persist(Box::new(state))));
        }
    }

    fn keepalive_active(&self, conn: &Conn) -> bool {
        self.mode == Mode::Active && conn.signed_in && conn.op.is_none()
    }

    /// RFC 8323 keepalive (§7.3): Ping after `ping_interval` of silence, Pong within
    /// `pong_timeout`, after a miss Ping again in `ping_retry`, after `max_missed_pongs`
    /// consecutive misses `clec` 2 (cps unchanged) and reconnect. Returns `true` if the
    /// connection was declared dead.
    fn keepalive_tick(&mut self, now: Instant) -> bool {
        let t = self.timing;
        let active = match &self.link {
            LinkState::Up(conn) => self.keepalive_active(conn),
            _ => false,
        };
        let LinkState::Up(conn) = &mut self.link else {
            return false;
        };
        if !active {
            return false;
        }
        let ka = &mut conn.keepalive;
        if let Some((_, deadline)) = ka.outstanding {
            if now >= deadline {
                ka.outstanding = None;
                ka.missed += 1;
                if ka.missed >= t.max_missed_pongs.max(1) {
                    self.set_status(self.cps, Clec::ConnectFailed);
                    self.retry_later(now, Some(Clec::ConnectFailed));
                    return true;
                }
                ka.next_ping = now + t.ping_retry;
            }
        }
        if ka.outstanding.is_none() && now >= ka.next_ping {
            let token = new_token(&mut self.rng, conn);
            conn.keepalive.outstanding = Some((token.clone(), now + t.pong_timeout));
            self.actions.push_back(Action::SendPing { token });
        }
        false
    }

    // -----------------------------------------------------------------------------------------
    // Requests
    // -----------------------------------------------------------------------------------------

    fn send_op(&mut self, kind: OpKind, now: Instant) {
        let timeout = if kind == OpKind::Deregister {
            self.timing.deregister_timeout
        } else {
            self.timing.request_timeout
        };
        let is_rd = matches!(kind, OpKind::Publish(_) | OpKind::Unpublish(_));
        let Some((method, path, queries, body)) = self.build_request(&kind) else {
            // Nothing to send with (e.g. a restored configuration without `at`): the cloud
            // would only refuse it, so fail as a refused sign-up would (§4).
            self.halt(Cps::Failed, Clec::CloudError);
            return;
        };
        let LinkState::Up(conn) = &mut self.link else {
            return;
        };
        let token = new_token(&mut self.rng, conn);
        let packet = request(method, path, &queries, body, &token);
        let pending = Some(Pending {
            token,
            kind,
            deadline: now + timeout,
        });
        if is_rd {
            conn.rd = pending;
        } else {
            conn.op = pending;
        }
        self.actions.push_back(Action::Send(packet));
    }

    /// Method, path, queries and CBOR body of a request; `None` if the state lacks what it
    /// needs.
    #[allow(clippy::type_complexity)]
    fn build_request(
        &self,
        kind: &OpKind,
    ) -> Option<(
        RequestType,
        &'static str,
        Vec<(&'static str, String)>,
        Option<Vec<u8>>,
    )> {
        let di = self.device.di.clone();
        let apn = self
            .conf
            .as_ref()
            .map(|c| c.apn.clone())
            .filter(|a| !a.is_empty());
        Some(match kind {
            OpKind::SignUp => {
                let conf = self.conf.as_ref().filter(|c| !c.at.is_empty())?;
                let body = SignUpRequest {
                    di,
                    accesstoken: conf.at.clone(),
                    authprovider: apn,
                    uid: None,
                    devicetype: Some(DEVICE_TYPE_DEVICE.to_owned()),
                };
                (RequestType::Post, URI_ACCOUNT, vec![], cbor_body(&body))
            }
            OpKind::SignIn | OpKind::SignOut => {
                let reg = self.reg.as_ref()?;
                let body = SessionRequest {
                    uid: reg.uid.clone(),
                    di,
                    accesstoken: reg.accesstoken.clone(),
                    login: *kind == OpKind::SignIn,
                };
                (RequestType::Post, URI_SESSION, vec![], cbor_body(&body))
            }
            OpKind::Refresh => {
                let reg = self.reg.as_ref()?;
                let body = TokenRefreshRequest {
                    uid: reg.uid.clone(),
                    di,
                    refreshtoken: reg.refreshtoken.clone(),
                    authprovider: apn,
                    granttype: Some(GRANT_TYPE_REFRESH_TOKEN.to_owned()),
                };
                (
                    RequestType::Post,
                    URI_TOKEN_REFRESH,
                    vec![],
                    cbor_body(&body),
                )
            }
            OpKind::Deregister => {
                let reg = self.reg.as_ref()?;
                let mut q = vec![("di", di), ("uid", reg.uid.clone())];
                // Without a session the cloud cannot fill in the token (§5.4, iotivity-lite).
                if !self.is_signed_in() && !reg.accesstoken.is_empty() {
                    q.push(("accesstoken", reg.accesstoken.expose().to_owned()));
                }
                (RequestType::Delete, URI_ACCOUNT, q, None)
            }
            OpKind::Publish(links) => {
                let body = RdPublishRequest {
                    di,
                    n: Some(self.device.name.clone()).filter(|n| !n.is_empty()),
                    ttl: 0,
                    links: links.clone(),
                };
                let q = vec![("rt", "oic.wk.rdpub".to_owned())];
                (RequestType::Post, URI_RD, q, cbor_body(&body))
            }
            OpKind::Unpublish(hrefs) => {
                let mut q = vec![("di", di)];
                q.extend(
                    hrefs
                        .iter()
                        .filter_map(|h| self.published.get(h)?.ins)
                        .map(|ins| ("ins", ins.to_string())),
                );
                (RequestType::Delete, URI_RD, q, None)
            }
        })
    }

    // -----------------------------------------------------------------------------------------
    // Responses
    // -----------------------------------------------------------------------------------------

    /// Sign-up response (§4 table rows "registering", §5.1).
    fn on_sign_up(&mut self, outcome: Outcome, response: &Packet, now: Instant) {
        match outcome {
            Outcome::Success => match SignUpResponse::decode(response) {
                Ok(r) => self.signed_up(r, now),
                // A malformed body counts like an error response: failed, clec 1, no retry.
                Err(_) => self.halt(Cps::Failed, Clec::CloudError),
            },
            Outcome::Unauthorized | Outcome::Error => self.halt(Cps::Failed, Clec::CloudError),
            Outcome::ConnectionError => self.retry_later(now, Some(Clec::ConnectFailed)),
        }
    }

    fn signed_up(&mut self, r: SignUpResponse, now: Instant) {
        let current = self.current_server();
        let Some(conf) = self.conf.as_mut() else {
            return;
        };
        if self.server != 0 {
            // Registered at an alternative server: it becomes the configured one (§7.1).
            if let Some((uri, sid)) = current {
                conf.cis = uri;
                conf.sid = sid;
            }
            self.server = 0;
        }
        // `at` is single-use (plgd: an authorisation code): not kept at rest (§10).
        conf.at = Secret::default();
        // §5.1: honour a redirect longer than 1 character that differs from the current server;
        // same `sid`, the old server is dropped.
        let redirect = r
            .redirecturi
            .filter(|u| u.chars().count() > 1 && *u != conf.cis);
        if let Some(uri) = &redirect {
            conf.cis = uri.clone();
        }
        self.token_life = TokenLife::from_expiresin(r.expiresin, now);
        let uid = r.uid.clone();
        self.reg = Some(Registration {
            uid: r.uid,
            accesstoken: r.accesstoken,
            refreshtoken: r.refreshtoken,
            expiresin: r.expiresin,
        });
        if let LinkState::Up(conn) = &mut self.link {
            conn.tokens_fresh = true;
        }
        self.set_status(Cps::Registered, Clec::Ok);
        self.persist();
        self.actions
            .push_back(Action::Event(SessionEvent::Registered { uid }));
        if redirect.is_some() {
            // Close here; `drive` connects to the new URI at once and signs in there.
            self.close();
        }
    }

    /// Sign-in response (§4 table rows "registered | sign-in", §5.2).
    fn on_sign_in(&mut self, outcome: Outcome, response: &Packet, now: Instant) {
        match (outcome, SignInResponse::decode(response)) {
            (Outcome::Success, Ok(r)) => {
                let interval = self.timing.ping_interval;
                if let LinkState::Up(conn) = &mut self.link {
                    conn.signed_in = true;
                    conn.tokens_fresh = false;
                    conn.keepalive.alive(now, interval);
                }
                self.failures = 0;
                self.server_failures = 0;
                self.rd_blocked = false;
                self.token_life = TokenLife::from_expiresin(r.expiresin, now);
                if let Some(reg) = self.reg.as_mut() {
                    reg.expiresin = r.expiresin;
                }
                self.set_status(Cps::Registered, Clec::Ok);
                self.persist();
                self.actions
                    .push_back(Action::Event(SessionEvent::SignedIn {
                        expiresin: r.expiresin,
                    }));
            }
            (Outcome::Unauthorized, _) => self.sign_in_unauthorized(),
            // Other errors, or a 2.xx without `expiresin`: failed, clec 1, then restart
            // (sign-in is retried forever, with back-off).
            (Outcome::Success, Err(_)) | (Outcome::Error, _) => {
                self.set_status(Cps::Failed, Clec::CloudError);
                self.retry_later(now, None);
            }
            (Outcome::ConnectionError, _) => self.retry_later(now, Some(Clec::ConnectFailed)),
        }
    }

    /// Sign-in 4.01 (§4, §5.2, iotivity-lite#22/#74): drop the access token and refresh if a
    /// refresh token exists; otherwise, or if the token was just refreshed (so refreshing again
    /// would loop), wipe the registration: `cps` uninitialized, `clec` 4.
    fn sign_in_unauthorized(&mut self) {
        let tokens_fresh = match &mut self.link {
            LinkState::Up(conn) => {
                conn.signed_in = false;
                conn.tokens_fresh
            }
            _ => false,
        };
        let can_refresh = self
            .reg
            .as_ref()
            .is_some_and(|r| !r.refreshtoken.is_empty());
        if can_refresh && !tokens_fresh {
            if let Some(reg) = self.reg.as_mut() {
                reg.accesstoken = Secret::default();
            }
            self.set_status(Cps::Failed, Clec::Unauthorized);
            self.persist();
            // `drive` sends the refresh (on this connection if the cloud keeps it open,
            // otherwise first thing after the reconnect).
        } else {
            self.conf = None;
            self.reset_registration();
            self.halt(Cps::Uninitialized, Clec::Unauthorized);
        }
    }

    /// Token refresh response (§4 table rows "registered | refresh", §5.3).
    fn on_refresh(&mut self, outcome: Outcome, response: &Packet, now: Instant) {
        match outcome {
            Outcome::Success => match TokenRefreshResponse::decode(response) {
                Ok(r) => {
                    self.token_life = TokenLife::from_expiresin(r.expiresin, now);
                    if let Some(reg) = self.reg.as_mut() {
                        reg.accesstoken = r.accesstoken;
                        reg.refreshtoken = r.refreshtoken;
                        reg.expiresin = r.expiresin;
                    }
                    if let LinkState::Up(conn) = &mut self.link {
                        conn.tokens_fresh = true;
                    }
                    self.persist();
                    // `drive` signs in with the new token.
                }
                Err(_) => self.refresh_refused(Clec::RefreshFailed),
            },
            Outcome::Unauthorized => self.refresh_refused(Clec::Unauthorized),
            Outcome::Error => self.refresh_refused(Clec::RefreshFailed),
            Outcome::ConnectionError => self.retry_later(now, Some(Clec::RefreshFailed)),
        }
    }

    /// Refresh refused: the registration is gone, no automatic recovery (iotivity-lite#74: stop
    /// instead of reconnecting forever). `cis`, `sid` and `apn` stay so the owner can see where
    /// the device was registered; a new configuration (with a new `at`) is needed.
    fn refresh_refused(&mut self, clec: Clec) {
        self.reset_registration();
        self.halt(Cps::Failed, clec);
    }

    fn on_publish(&mut self, links: Vec<RdLink>, outcome: Outcome, response: &Packet) {
        if outcome != Outcome::Success {
            // Do not hammer the RD: wait for a link change or the next sign-in.
            self.rd_blocked = true;
            return;
        }
        // A 2.04 whose body cannot be read still means "published", just without `ins`.
        let assigned: BTreeMap<String, Option<i64>> = RdPublishResponse::decode(response)
            .map(|r| r.links.into_iter().map(|l| (l.href, l.ins)).collect())
            .unwrap_or_default();
        let mut done = Vec::with_capacity(links.len());
        for link in links {
            let ins = assigned.get(&link.href).copied().flatten();
            done.push(PublishedLink {
                href: link.href.clone(),
                ins,
            });
            self.published
                .insert(link.href.clone(), PublishedRecord { link, ins });
        }
        self.actions
            .push_back(Action::Event(SessionEvent::Published { links: done }));
        // The RD's content changed: persist it, so a reboot does not publish these again (§7.5).
        self.persist();
    }

    /// Any answer ends an unpublish: 2.02, or 4.00 when the RD no longer knows the `ins` (§5.6).
    fn on_unpublish(&mut self, hrefs: Vec<String>) {
        for h in &hrefs {
            self.published.remove(h);
        }
        self.actions
            .push_back(Action::Event(SessionEvent::Unpublished { hrefs }));
        // Persisted like a publish, so a reboot does not unpublish them again (§7.5).
        self.persist();
    }

    /// Brings the cloud RD in line with the desired links: unpublish removed ones (by `ins`),
    /// then publish new or changed ones. Only when signed in (iotivity-lite#68) and one RD
    /// request at a time.
    fn rd_sync(&mut self, now: Instant) {
        let LinkState::Up(conn) = &self.link else {
            return;
        };
        if self.rd_blocked || conn.rd.is_some() || !conn.signed_in || conn.op.is_some() {
            return;
        }
        let removed: Vec<String> = self
            .published
            .keys()
            .filter(|h| !self.desired.contains_key(*h))
            .cloned()
            .collect();
        let mut with_ins = Vec::new();
        let mut dropped = false;
        for href in removed {
            if self.published.get(&href).is_some_and(|e| e.ins.is_some()) {
                with_ins.push(href);
            } else {
                // The RD gave no `ins`: it cannot be unpublished individually.
                self.published.remove(&href);
                dropped = true;
            }
        }
        if dropped {
            self.persist();
        }
        if !with_ins.is_empty() {
            with_ins.truncate(MAX_INS_PER_UNPUBLISH);
            self.send_op(OpKind::Unpublish(with_ins), now);
            return;
        }
        let changed: Vec<RdLink> = self
            .desired
            .values()
            .filter(|l| self.published.get(&l.href).is_none_or(|e| e.link != **l))
            .cloned()
            .collect();
        if !changed.is_empty() {
            self.send_op(OpKind::Publish(changed), now);
        }
    }
}

/// A token not used by any request or ping in flight on `conn`.
fn new_token(rng: &mut SplitMix64, conn: &Conn) -> Vec<u8> {
    loop {
        let token = rng.next_u64().to_be_bytes()[..TOKEN_LEN].to_vec();
        let in_use = [conn.op.as_ref(), conn.rd.as_ref()]
            .into_iter()
            .flatten()
            .any(|p| p.token == token)
            || conn
                .keepalive
                .outstanding
                .as_ref()
                .is_some_and(|(t, _)| *t == token);
        if !in_use {
            return token;
        }
    }
}

/// A request as iotivity-lite sends it (§5, §2.6): Uri-Path per segment, Uri-Query per
/// `key=value`, Accept 10000 with OCF-Accept-Content-Format-Version, and with a body
/// Content-Format 10000 with OCF-Content-Format-Version.
fn request(
    method: RequestType,
    path: &str,
    queries: &[(&str, String)],
    body: Option<Vec<u8>>,
    token: &[u8],
) -> Packet {
    let mut p = Packet::new();
    p.header.set_type(MessageType::NonConfirmable);
    p.header.code = MessageClass::Request(method);
    p.set_token(token.to_vec());
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    for (k, v) in queries {
        p.add_option(CoapOption::UriQuery, format!("{k}={v}").into_bytes());
    }
    p.add_option_as(CoapOption::Accept, OptionValueU16(CF_OCF_CBOR));
    p.add_option_as(
        CoapOption::Unknown(OPT_OCF_ACCEPT_VERSION),
        OptionValueU16(OCF_VERSION_1_0_0),
    );
    if let Some(body) = body {
        p.add_option_as(CoapOption::ContentFormat, OptionValueU16(CF_OCF_CBOR));
        p.add_option_as(
            CoapOption::Unknown(OPT_OCF_CONTENT_VERSION),
            OptionValueU16(OCF_VERSION_1_0_0),
        );
        p.payload = body;
    }
    p
}

/// Not published: discovery, security and cloud-configuration resources.
fn is_publishable(link: &RdLink) -> bool {
    !link.href.is_empty()
        && link.href != "/oic/res"
        && !link.href.starts_with("/oic/sec/")
        && !link
            .rt
            .iter()
            .any(|rt| UNPUBLISHED_RTS.contains(&rt.as_str()))
}

/// A CBOR request body. Encoding these plain structs into a `Vec` cannot fail; should it ever,
/// an empty body only earns a 4.00 from the cloud, never a panic.
fn cbor_body<T: Serialize>(value: &T) -> Option<Vec<u8>> {
    Some(to_cbor(value).unwrap_or_default())
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
