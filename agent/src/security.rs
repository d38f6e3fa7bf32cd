//! Device security in the daemon (DESIGN.md §4, issue 4): the I/O around the sans-IO core
//! [`ocf::security`].
//!
//! - **State**: [`SecurityState`] (pstat, doxm, cred, acl2, the owner) in `STATE/security.cbor`,
//!   written atomically with mode 0600 whenever it changes; loaded and repaired at start by
//!   [`crate::boot`] (a file that cannot be used is moved aside and the device starts unowned). The identity key stays in
//!   `STATE/identity.key` ([`crate::tls`]); `/oic/sec/csr` makes a CSR for it.
//! - **Setup PIN** ([`load_or_create_pin`]): `--pin-file` (factory data, its first line) or
//!   `STATE/pin`; a device with neither makes a random one, stores it (0600) and prints it once
//!   on stdout (`ocf-agent: setup PIN NNNNNNNN`), never through the log.
//! - **Requests** ([`Security::serve`]): every request of every transport comes through here.
//!   On the secure endpoint and from the cloud: the requester from the TLS peer, the access
//!   decision of the core (a refusal is answered 4.01/4.03 with a diagnostic), then the
//!   ownership transfer, DELETE on cred/acl2, and the resource tree. In the clear (UDP, and the
//!   plain listener if it exists) only discovery of `/oic/res` is served, unless the agent runs
//!   in the development mode (`--insecure-dev`), where the clear transports and the cloud link
//!   serve everything without access control, as iotivity-lite built without security does.
//!   Batch representations of `/oic/res` carry only what the requester may read
//!   ([`Security::may_batch`]).
//! - **Events** ([`Security::run_events`]): the cloud link runs only in RFNOP; a factory reset
//!   (pstat `dos.s` = 0, or [`Security::factory_reset`] from `/oic/mnt` and the console)
//!   deregisters from the cloud, wipes its state, resets the security state and makes a new
//!   identity key and `di`; once a device is owned, connections opened before are closed
//!   (except the new owner's); new credentials re-verify the open connections' certificates.
//!
//! Never logged: the PIN, keys, `at`, tokens, request bodies.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use coap_lite::{Packet, ResponseType};
use ocf::resource::{Interface, Method, Origin, Request, ResourceError, Response, RES_HREF};
use ocf::security::csr::CsrSource;
use ocf::security::otm::DeviceOtm;
use ocf::security::{
    handle_delete, resources, Connection, DenyReason, DosState, Operation, OtmHandler,
    PeerIdentity, Pin, SecurityEvent, SecurityState, SharedState, Target, OTM_HREF,
};
use rcgen::KeyPair;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, ServerConfig};
use tokio::sync::{watch, Notify};
use tracing::{debug, error, info, warn};

use crate::cloud::{self, Cloud};
use crate::server::Agent;
use crate::state::{atomic_write, report_and_quarantine, Identity};
use crate::tls::{self, CloudCredentials};
use crate::tls_server::{self, ServerIdentity};

/// The persisted [`SecurityState`] (CBOR) in the state directory.
pub const STATE_FILE: &str = "security.cbor";
/// The setup PIN the device made for itself, in the state directory.
pub const PIN_FILE: &str = "pin";

/// Fills `buf` from the operating system's CSPRNG. There is no safe way to go on without
/// randomness (the PIN, the SPAKE2 scalars), so a failure stops the process.
pub fn random_fill(buf: &mut [u8]) {
    if let Err(e) = getrandom::fill(buf) {
        error!("the operating system gives no random numbers: {e}");
        std::process::abort();
    }
}

/// The setup PIN: the first line of `pin_file` if given and present, else `STATE/pin`; if
/// neither exists a random PIN is made and stored in `STATE/pin` (0600). Returns the PIN and
/// whether it was just created (then the caller prints it once). A file whose first line is not
/// 8 digits is an error naming the file (its content is never echoed).
pub fn load_or_create_pin(
    pin_file: Option<&Path>,
    state_dir: &Path,
) -> Result<(Pin, bool), String> {
    fn read_first_line(path: &Path) -> io::Result<String> {
        let text = std::fs::read(path)?;
        let first = text.split(|b| *b == b'\n').next().unwrap_or_default();
        Ok(String::from_utf8_lossy(first).into_owned())
    }
    let parse = |path: &Path, line: &str| {
        Pin::new(line).map_err(|_| {
            format!(
                "{}: the first line is not an 8-digit setup PIN",
                path.display()
            )
        })
    };
    if let Some(path) = pin_file {
        match read_first_line(path) {
            Ok(line) => return Ok((parse(path, &line)?, false)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                warn!(
                    "{} does not exist; using the setup PIN of the state directory",
                    path.display()
                );
            }
            Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
        }
    }
    let path = state_dir.join(PIN_FILE);
    match read_first_line(&path) {
        Ok(line) => match Pin::new(line.trim()) {
            Ok(pin) => Ok((pin, false)),
            Err(_) => {
                // The device's own PIN file is state, not factory data: a damaged one must not
                // stop the device for good. A new PIN is made and shown on the console.
                report_and_quarantine(
                    &path,
                    "the first line is not an 8-digit setup PIN",
                    "a new setup PIN is made and shown on the console",
                );
                create_pin(&path)
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_pin(&path),
        Err(e) => Err(format!("{}: cannot read: {e}", path.display())),
    }
}

fn create_pin(path: &Path) -> Result<(Pin, bool), String> {
    let pin = Pin::generate(&mut random_fill);
    atomic_write(path, format!("{}\n", pin.expose()).as_bytes())
        .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
    Ok((pin, true))
}

#[cfg(test)]
/// Loads `STATE/security.cbor`, or the factory state of device `di` if there is none (then
/// `true`). A file that cannot be read or used, or that belongs to another device, is an error
/// naming it.
pub fn load_state(state_dir: &Path, di: &str) -> Result<(SecurityState, bool), String> {
    let path = state_dir.join(STATE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let state =
                SecurityState::from_cbor(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            if !state.di().eq_ignore_ascii_case(di) {
                return Err(format!(
                    "{}: it belongs to device {}, not to this device ({di})",
                    path.display(),
                    state.di()
                ));
            }
            Ok((state, false))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((SecurityState::new(di), true)),
        Err(e) => Err(format!("{}: cannot read: {e}", path.display())),
    }
}

/// Writes `STATE/security.cbor` atomically (0600).
pub fn save_state(state_dir: &Path, state: &SecurityState) -> io::Result<()> {
    atomic_write(&state_dir.join(STATE_FILE), &state.to_cbor())
}

/// How a request reached the device.
#[derive(Clone, Copy)]
pub enum Via<'a> {
    /// In the clear: UDP, or the plain coap+tcp listener of the development mode.
    Clear,
    /// The secure local endpoint, with this connection's TLS exporter.
    Tls { exporter: &'a [u8] },
    /// Forwarded by the cloud over the cloud link.
    Cloud,
}

/// What is known about the peer of a stream connection.
#[derive(Clone)]
enum Peer {
    Tls {
        /// From the client certificate, if one was presented (and could be read).
        identity: Option<PeerIdentity>,
        /// The presented chain, leaf first (re-verified when the trust anchors change).
        chain: Vec<CertificateDer<'static>>,
        /// Opened while the device had no owner.
        opened_unowned: bool,
    },
    /// The cloud (its certificate was verified against the trust anchors and `uuid:<sid>` when
    /// connecting); `None` over a plain connection (development mode only).
    Cloud { identity: Option<PeerIdentity> },
}

/// The options the daemon starts the security with.
pub struct Options {
    pub state_dir: PathBuf,
    /// The security state [`crate::boot::prepare`] loaded (its `di` is the device's).
    pub state: SecurityState,
    pub pin: Pin,
    pub dev_mode: bool,
    pub identity_key: KeyPair,
    /// The manufacturer certificate and key for the secure endpoint, if any.
    pub manufacturer: Option<ServerIdentity>,
    /// The board's device name, which a factory reset restores.
    pub default_name: String,
}

/// The security of the running device (see the module docs).
pub struct Security {
    pub state: SharedState,
    otm: RefCell<OtmHandler>,
    pin: Pin,
    dev_mode: bool,
    dir: PathBuf,
    /// The device's `di`; a factory reset replaces it.
    di: Rc<RefCell<String>>,
    default_name: String,
    key: Rc<RefCell<KeyPair>>,
    manufacturer: bool,
    server_config: RefCell<Arc<ServerConfig>>,
    peers: RefCell<HashMap<u64, Peer>>,
    pending: RefCell<Vec<SecurityEvent>>,
    wake: Notify,
    cloud: RefCell<Option<Rc<Cloud>>>,
    /// A factory reset is running ([`Security::factory_reset`]).
    resetting: Cell<bool>,
    reset_done: Notify,
}

/// How a factory reset went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetReport {
    /// The device's new `di`.
    pub di: String,
    /// The cloud was told (or there was no registration to tell it about).
    pub cloud_told: bool,
    /// What could not be written (the reset is then finished on the next start).
    pub error: Option<String>,
}

/// The files of a local reset, see [`wipe_and_renew`].
pub struct Renewed {
    pub identity: Option<Identity>,
    pub key: Option<KeyPair>,
    pub error: Option<String>,
}

/// The local part of a factory reset (OCF-PROTOCOL.md §9 step 2), shared by the running agent,
/// the boot-time recovery and the offline console command. The caller has recorded the reset in
/// `security.cbor` first (`dos.s` RESET, `p` set), so a crash anywhere in here is finished on the
/// next start. In order: quarantined copies of state files, the cloud state and the interim
/// cloud credentials are removed, a new
/// identity key and a new `di` (iotivity-lite makes a new device UUID at RESET) are written, and
/// last the security state: RFOTM, unowned, no credentials, no ACEs, which ends the reset.
///
/// On an error the state in memory is reset all the same (the device must not stay owned), but
/// the file keeps the reset pending.
pub fn wipe_and_renew(dir: &Path, state: &mut SecurityState) -> Renewed {
    let mut errors = Vec::new();
    // Copies moved aside at some start may hold an old key, tokens or the owner's credentials.
    if let Err(e) = crate::state::remove_quarantined(dir) {
        errors.push(format!(
            "{}: cannot remove quarantined files: {e}",
            dir.display()
        ));
    }
    for name in [cloud::STATE_FILE, tls::IDENTITY_CERT, tls::CLOUD_CA] {
        let path = dir.join(name);
        if let Err(e) = crate::state::remove(&path) {
            errors.push(format!("{}: cannot remove: {e}", path.display()));
        }
    }
    let key = tls::regenerate_identity_key(dir)
        .map_err(|e| errors.push(e))
        .ok();
    let identity = Identity::renew_di(dir)
        .map_err(|e| errors.push(e.to_string()))
        .ok();
    let di = identity
        .as_ref()
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), |i| i.di.clone());
    state.reset_with_deviceuuid(&di);
    if errors.is_empty() {
        if let Err(e) = save_state(dir, state) {
            errors.push(format!(
                "{}: cannot write: {e}",
                dir.join(STATE_FILE).display()
            ));
        }
    }
    let _ = state.take_dirty();
    Renewed {
        identity,
        key,
        error: (!errors.is_empty()).then(|| errors.join("; ")),
    }
}

impl Security {
    /// The security of a device whose state [`crate::boot::prepare`] loaded (and repaired).
    pub fn new(opts: Options) -> Result<Rc<Security>, String> {
        let Options {
            state_dir,
            state,
            pin,
            dev_mode,
            identity_key,
            manufacturer,
            default_name,
        } = opts;
        let di = state.di().to_string();
        let server = match manufacturer {
            Some(m) => m,
            None => tls_server::self_signed(&identity_key, &di)?,
        };
        let server_config = tls_server::server_config(&server)?;
        let state: SharedState = Rc::new(RefCell::new(state));
        let otm = OtmHandler::new(
            state.clone(),
            DeviceOtm::new(pin.clone(), &di, Box::new(random_fill)),
        );
        Ok(Rc::new(Security {
            state,
            otm: RefCell::new(otm),
            pin,
            dev_mode,
            dir: state_dir,
            di: Rc::new(RefCell::new(di)),
            default_name,
            key: Rc::new(RefCell::new(identity_key)),
            manufacturer: server.manufacturer,
            server_config: RefCell::new(server_config),
            peers: RefCell::new(HashMap::new()),
            pending: RefCell::new(Vec::new()),
            wake: Notify::new(),
            cloud: RefCell::new(None),
            resetting: Cell::new(false),
            reset_done: Notify::new(),
        }))
    }

    /// The device's current `di`.
    pub fn di(&self) -> String {
        self.di.borrow().clone()
    }

    /// The development mode (`--insecure-dev`).
    pub fn dev_mode(&self) -> bool {
        self.dev_mode
    }

    /// The `/oic/sec/*` resources for the resource tree.
    pub fn resources(&self) -> Vec<ocf::resource::Resource> {
        let key = self.key.clone();
        let di = self.di.clone();
        let source = move || -> Result<String, ResourceError> {
            tls::csr_pem(&key.borrow(), &di.borrow()).map_err(ResourceError::Internal)
        };
        let source: Box<dyn CsrSource> = Box::new(source);
        resources(&self.state, source)
    }

    /// Makes the resource tree ask [`Security::may_batch`] for every item of a batch of
    /// `/oic/res`.
    pub fn install_batch_filter(self: &Rc<Self>, agent: &Agent) {
        let security = self.clone();
        agent.device.borrow_mut().set_batch_filter(Some(Box::new(
            move |origin, href, interface| security.may_batch(origin, href, interface),
        )));
    }

    /// The current server configuration of the secure endpoint.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server_config.borrow().clone()
    }

    /// The cloud controller, for the onboarding gate and the factory reset.
    pub fn set_cloud(&self, cloud: Rc<Cloud>) {
        *self.cloud.borrow_mut() = Some(cloud);
    }

    /// Whether the cloud link may run: in RFNOP (always in the development mode).
    pub fn cloud_allowed(&self) -> bool {
        self.dev_mode || self.state.borrow().dos() == DosState::Rfnop
    }

    /// A TLS connection `id` was opened with the client's certificate chain (leaf first; empty
    /// without a client certificate).
    pub fn tls_opened(&self, id: u64, chain: &[CertificateDer<'static>]) {
        let identity = self.identify(chain);
        let opened_unowned = self.state.borrow().owner().is_none();
        match &identity {
            Some(p) => {
                debug!(connection = id, peer = ?p.uuid, verified = p.chain_verified, "client certificate")
            }
            None => debug!(connection = id, "no client certificate"),
        }
        self.peers.borrow_mut().insert(
            id,
            Peer::Tls {
                identity,
                chain: chain.to_vec(),
                opened_unowned,
            },
        );
    }

    /// The cloud link `id` was opened; `identity` is the cloud's verified certificate (`None`
    /// over plain TCP).
    pub fn cloud_opened(&self, id: u64, identity: Option<PeerIdentity>) {
        self.peers.borrow_mut().insert(id, Peer::Cloud { identity });
    }

    /// Whether secure connection `id` presented the owner's certificate key.
    pub fn is_owner(&self, id: u64) -> bool {
        match self.peers.borrow().get(&id) {
            Some(Peer::Tls { identity, .. }) => {
                self.state
                    .borrow()
                    .requester(identity.as_ref(), true)
                    .is_owner
            }
            _ => false,
        }
    }

    /// Connection `id` closed.
    pub fn closed(&self, id: u64) {
        self.peers.borrow_mut().remove(&id);
        self.otm.borrow_mut().otm().drop_session(id);
    }

    fn identify(&self, chain: &[CertificateDer<'static>]) -> Option<PeerIdentity> {
        let leaf = chain.first()?;
        let anchors = self.anchors();
        let verified = tls_server::chain_verifies(chain, &anchors);
        PeerIdentity::from_certificate_der(leaf, verified).ok()
    }

    /// Every trust anchor of `/oic/sec/cred` (DER).
    fn anchors(&self) -> Vec<Vec<u8>> {
        self.state
            .borrow()
            .creds()
            .trust_anchors()
            .flat_map(|c| c.certificates_der())
            .collect()
    }

    fn peer(&self, origin: &Origin) -> Option<Peer> {
        match origin {
            Origin::Stream(id) => self.peers.borrow().get(id).cloned(),
            Origin::Udp(_) => None,
        }
    }

    /// Serves one request that arrived over `via` from `origin` (see the module docs), then
    /// persists and dispatches whatever it changed.
    pub fn serve(&self, agent: &Agent, origin: &Origin, packet: &Packet, via: Via<'_>) -> Packet {
        let token = packet.get_token();
        let response = match Request::from_packet(packet) {
            Ok(req) => self.route(agent, origin, &req, token, via),
            Err(e) => e.to_packet(token),
        };
        self.after_request();
        response
    }

    fn route(
        &self,
        agent: &Agent,
        origin: &Origin,
        req: &Request,
        token: &[u8],
        via: Via<'_>,
    ) -> Packet {
        let device = |req: &Request| {
            agent
                .device
                .borrow_mut()
                .handle(origin, req, token)
                .to_packet(token)
        };
        let identity = match (via, self.peer(origin)) {
            (Via::Clear, _) if self.dev_mode => return device(req),
            (Via::Clear, _) => {
                if is_plain_discovery(req) {
                    return device(req);
                }
                debug!(path = %req.path, "refused in the clear");
                return DenyReason::InsecureTransport.response().to_packet(token);
            }
            (Via::Cloud, _) if self.dev_mode => return device(req),
            (Via::Cloud, Some(Peer::Cloud { identity })) => identity,
            (Via::Tls { .. }, Some(Peer::Tls { identity, .. })) => identity,
            // A connection the security does not know: nothing but discovery.
            _ => None,
        };
        let secure = match via {
            Via::Tls { .. } => true,
            Via::Cloud => identity.is_some(),
            Via::Clear => false,
        };
        let decision = {
            let s = self.state.borrow();
            let who = s.requester(identity.as_ref(), secure);
            s.authorize_request(&who, req)
        };
        if let Some(denial) = decision.denial() {
            debug!(path = %req.path, method = ?req.method, code = ?denial.code, "refused: {}", denial.diagnostic());
            return denial.to_packet(token);
        }
        if req.path == OTM_HREF {
            let (Via::Tls { exporter }, Origin::Stream(id)) = (via, origin) else {
                return Response::error(
                    ResponseType::Forbidden,
                    "the ownership transfer is only served on the local secure endpoint",
                )
                .to_packet(token);
            };
            let owned_before = self.state.borrow().owner().is_some();
            let conn = Connection {
                session_id: *id,
                exporter,
                peer: identity.as_ref(),
            };
            let reply = self.otm.borrow_mut().handle(req, &conn, Instant::now());
            info!(connection = id, code = ?reply.response.code, "ownership transfer request");
            if !owned_before && self.state.borrow().owner().is_some() {
                self.close_unowned_connections(agent, *id);
            }
            return reply.to_packet(token);
        }
        if let Some(r) = handle_delete(&self.state, req) {
            return r.to_packet(token);
        }
        device(req)
    }

    /// Whether a multicast request may be answered: discovery only, and not the batch form
    /// (which carries representations) outside the development mode.
    pub fn multicast_allowed(&self, req: &Request) -> bool {
        self.dev_mode || is_plain_discovery(req)
    }

    /// The batch filter of the resource tree: whether the representation of `href` may go to
    /// the requester of `origin` in a batch of `/oic/res`.
    pub fn may_batch(&self, origin: &Origin, href: &str, interface: Interface) -> bool {
        let (identity, secure) = match self.peer(origin) {
            None => return self.dev_mode,
            Some(Peer::Cloud { .. }) if self.dev_mode => return true,
            Some(Peer::Cloud { identity }) => {
                let secure = identity.is_some();
                (identity, secure)
            }
            Some(Peer::Tls { identity, .. }) => (identity, true),
        };
        let Ok(s) = self.state.try_borrow() else {
            return false;
        };
        let who = s.requester(identity.as_ref(), secure);
        s.authorize(
            &who,
            &Target::new(href).with_interface(interface.as_str()),
            Operation::Retrieve,
        )
        .is_allowed()
    }

    /// The TLS client configuration for the cloud `sid`: the identity certificate of
    /// `/oic/sec/cred` with the identity key, and the trust anchors provisioned for `sid` (else
    /// every trust anchor). In the development mode the interim files stand in for what
    /// `/oic/sec/cred` lacks.
    pub fn cloud_client_config(&self, sid: &str) -> Result<Arc<ClientConfig>, String> {
        let der = |v: Vec<Vec<u8>>| v.into_iter().map(CertificateDer::from).collect::<Vec<_>>();
        let (chain, mut anchors) = {
            let s = self.state.borrow();
            let creds = s.creds();
            let chain = creds
                .identity_chain(&self.di.borrow())
                .map(|c| der(c.certificates_der()));
            let mut anchors: Vec<Vec<u8>> = creds
                .trust_anchors_for(sid)
                .flat_map(|c| c.certificates_der())
                .collect();
            if anchors.is_empty() {
                anchors = creds
                    .trust_anchors()
                    .flat_map(|c| c.certificates_der())
                    .collect();
            }
            (chain, der(anchors))
        };
        let chain = match chain {
            Some(chain) => chain,
            None if self.dev_mode => tls::file_credentials(&self.dir)?.chain,
            None => {
                return Err(format!(
                    "no identity certificate for uuid:{} in /oic/sec/cred",
                    self.di.borrow()
                ))
            }
        };
        if anchors.is_empty() {
            if !self.dev_mode {
                return Err("no trust anchor for the cloud in /oic/sec/cred".into());
            }
            anchors = tls::file_anchors(&self.dir)?;
        }
        let key = tls::private_key_der(&self.key.borrow());
        tls::client_config_from(
            CloudCredentials {
                chain,
                key,
                anchors,
            },
            sid,
        )
    }

    /// Persists the state if it changed, and hands its events to [`Security::run_events`].
    pub fn after_request(&self) {
        let (dirty, events) = match self.state.try_borrow_mut() {
            Ok(mut s) => (s.take_dirty(), s.take_events()),
            Err(_) => return,
        };
        if dirty {
            self.persist();
        }
        if !events.is_empty() {
            self.pending.borrow_mut().extend(events);
            self.wake.notify_one();
        }
    }

    fn persist(&self) {
        let bytes = self.state.borrow().to_cbor();
        let path = self.dir.join(STATE_FILE);
        match atomic_write(&path, &bytes) {
            Ok(()) => debug!("security state saved"),
            Err(e) => error!("{}: cannot save the security state: {e}", path.display()),
        }
    }

    /// Closes every secure connection opened while the device had no owner, except `keep` (the
    /// new owner's).
    fn close_unowned_connections(&self, agent: &Agent, keep: u64) {
        let ids: Vec<u64> = self
            .peers
            .borrow()
            .iter()
            .filter(|(id, p)| {
                **id != keep
                    && matches!(
                        p,
                        Peer::Tls {
                            opened_unowned: true,
                            ..
                        }
                    )
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            debug!(
                connection = id,
                "closing a connection opened before the device was owned"
            );
            agent.disconnect(id);
        }
    }

    /// Recomputes whether each secure connection's certificate chains to a trust anchor.
    fn reverify_peers(&self) {
        let anchors = self.anchors();
        for peer in self.peers.borrow_mut().values_mut() {
            if let Peer::Tls {
                identity: Some(identity),
                chain,
                ..
            } = peer
            {
                identity.chain_verified = tls_server::chain_verifies(chain, &anchors);
            }
        }
    }

    /// Opens or closes the cloud link's gate after an onboarding state change.
    fn update_cloud_gate(&self) {
        let dos = self.state.borrow().dos();
        if dos == DosState::Reset {
            // The factory reset decides.
            return;
        }
        if let Some(cloud) = self.cloud.borrow().as_ref() {
            cloud.set_provisioned(self.dev_mode || dos == DosState::Rfnop);
        }
    }

    /// Acts on the security events until shutdown.
    pub async fn run_events(self: Rc<Self>, agent: Rc<Agent>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
            let events = std::mem::take(&mut *self.pending.borrow_mut());
            let mut reset = false;
            for event in events {
                match event {
                    SecurityEvent::OwnershipTransferred { owner_uuid } => {
                        info!(owner = %owner_uuid, "the device is owned now");
                    }
                    SecurityEvent::StateChanged { from, to } => {
                        info!(
                            from = from.name(),
                            to = to.name(),
                            "onboarding state changed"
                        );
                    }
                    // Only if still pending: a reset already carried out (from /oic/mnt or the
                    // console, which record it the same way) must not run twice.
                    SecurityEvent::FactoryResetRequested => {
                        reset = self.state.borrow().reset_pending()
                    }
                    SecurityEvent::CredentialsChanged => {
                        info!("credentials changed");
                        self.reverify_peers();
                    }
                    SecurityEvent::AclChanged => {
                        info!("access control list changed");
                        // Batch observers of /oic/res see what they may read now.
                        agent.device.borrow_mut().mark_changed(RES_HREF);
                        agent.flush_notifications();
                    }
                }
            }
            if reset {
                self.factory_reset(&agent).await;
            }
            self.update_cloud_gate();
        }
    }

    /// Records a factory reset that [`Security::factory_reset`] will carry out (`/oic/mnt`
    /// `fr`): `security.cbor` says RESET before the request is answered, so a crash from then on
    /// is finished on the next start. The event it raises is not queued: the maintenance task,
    /// not [`Security::run_events`], carries this reset out.
    pub fn record_factory_reset(&self) {
        let Ok(mut state) = self.state.try_borrow_mut() else {
            return;
        };
        if state.reset_pending() {
            return;
        }
        state.begin_factory_reset();
        let events: Vec<SecurityEvent> = state
            .take_events()
            .into_iter()
            .filter(|e| !matches!(e, SecurityEvent::FactoryResetRequested))
            .collect();
        let dirty = state.take_dirty();
        drop(state);
        if dirty {
            self.persist();
        }
        if !events.is_empty() {
            self.pending.borrow_mut().extend(events);
            self.wake.notify_one();
        }
    }

    /// The factory reset (OCF-PROTOCOL.md §9; from pstat `dos.s` = 0, `/oic/mnt` `fr` or the
    /// console). In order:
    /// 1. record it: `security.cbor` with `dos.s` RESET, `p` set (a crash from here on is
    ///    finished on the next start, [`crate::boot`]);
    /// 2. if registered and connected, deregister (DELETE `/oic/sec/account`), bounded by the
    ///    deregistration timeout; the cloud state is wiped whether or not the cloud answered;
    /// 3. [`wipe_and_renew`]: cloud files, new identity key, new `di`, RFOTM;
    /// 4. the running device takes the new identity: resource tree, CSR, server certificate,
    ///    ownership transfer, cloud session; CoAPCloudConf observers see `cps` uninitialized;
    /// 5. every secure connection is closed once its queued notifications are out: whatever a
    ///    peer was allowed before the reset, it is a stranger now.
    ///
    /// A second call while one runs waits for it and reports the same.
    pub async fn factory_reset(&self, agent: &Agent) -> ResetReport {
        if self.resetting.get() {
            while self.resetting.get() {
                self.reset_done.notified().await;
            }
            return ResetReport {
                di: self.di(),
                cloud_told: true,
                error: None,
            };
        }
        self.resetting.set(true);
        info!("factory reset");
        {
            let mut state = self.state.borrow_mut();
            if !state.reset_pending() {
                state.begin_factory_reset();
            }
        }
        // Persisted now, before anything is wiped; the events it raised are acted on (and
        // found finished) by run_events.
        self.after_request();

        let mut cloud_told = true;
        let cloud = self.cloud.borrow().clone();
        if let Some(cloud) = &cloud {
            cloud_told = cloud.deregister().await;
            if !cloud_told {
                warn!("the cloud was not told of the factory reset (unreachable or no answer); wiping the cloud state anyway");
            }
        }

        let renewed = {
            let mut state = self.state.borrow_mut();
            wipe_and_renew(&self.dir, &mut state)
        };
        if let Some(e) = &renewed.error {
            error!(
                "the factory reset is not fully written ({e}); it is finished on the next start"
            );
        }
        let new_di = self.state.borrow().di().to_string();
        if let Some(key) = renewed.key {
            if !self.manufacturer {
                match tls_server::self_signed(&key, &new_di)
                    .and_then(|id| tls_server::server_config(&id))
                {
                    Ok(c) => *self.server_config.borrow_mut() = c,
                    Err(e) => error!("cannot renew the server certificate: {e}"),
                }
            }
            *self.key.borrow_mut() = key;
        }
        *self.di.borrow_mut() = new_di.clone();
        *self.otm.borrow_mut() = OtmHandler::new(
            self.state.clone(),
            DeviceOtm::new(self.pin.clone(), &new_di, Box::new(random_fill)),
        );
        agent
            .device
            .borrow_mut()
            .set_identity(&new_di, &self.default_name);
        if let Some(cloud) = &cloud {
            cloud.renew(&new_di, &self.default_name);
        }
        agent.device.borrow_mut().mark_changed(cloud::CONF_HREF);
        // The state events of the reset (RFOTM, credentials, ACL) for run_events.
        self.after_request();
        agent.flush_notifications();
        let secure: Vec<u64> = self
            .peers
            .borrow()
            .iter()
            .filter(|(_, p)| matches!(p, Peer::Tls { .. }))
            .map(|(id, _)| *id)
            .collect();
        for id in secure {
            agent.disconnect(id);
        }
        // The new di on the console, like the one printed at start.
        println!("ocf-agent: di {new_di}");
        info!(di = %new_di, "factory reset done: the device is unowned (RFOTM) with a new identity");
        self.resetting.set(false);
        self.reset_done.notify_waiters();
        ResetReport {
            di: new_di,
            cloud_told,
            error: renewed.error,
        }
    }
}

/// `GET /oic/res` in a form without representations (not `oic.if.b`).
fn is_plain_discovery(req: &Request) -> bool {
    req.method == Method::Get && req.path == RES_HREF && req.query_value("if") != Some("oic.if.b")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    const DI: &str = "c0ffee00-0000-4000-8000-000000000001";

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ocf-security-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        crate::state::ensure_dir(&d).unwrap();
        d
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn pin_is_created_once_with_mode_0600_then_kept() {
        let dir = temp_dir("pin-created");
        let (a, created) = load_or_create_pin(None, &dir).unwrap();
        assert!(created);
        assert_eq!(a.expose().len(), 8);
        assert!(a.expose().bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(mode(&dir.join(PIN_FILE)), 0o600);
        assert_eq!(
            std::fs::read_to_string(dir.join(PIN_FILE)).unwrap(),
            format!("{}\n", a.expose())
        );
        let (b, created) = load_or_create_pin(None, &dir).unwrap();
        assert!(!created, "printed once: not created again");
        assert_eq!(a.expose(), b.expose());
        // A missing --pin-file falls back to the state directory's PIN.
        let (c, created) = load_or_create_pin(Some(&dir.join("absent")), &dir).unwrap();
        assert!(!created);
        assert_eq!(c.expose(), a.expose());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pin_comes_from_the_factory_file_first_line() {
        let dir = temp_dir("pin-file");
        let file = dir.join("factory-pin");
        std::fs::write(&file, "12345678\nserial 42\n").unwrap();
        let (pin, created) = load_or_create_pin(Some(&file), &dir).unwrap();
        assert!(!created);
        assert_eq!(pin.expose(), "12345678");
        assert!(!dir.join(PIN_FILE).exists(), "no PIN of its own is made");
        std::fs::write(&file, "  87654321  \r\n").unwrap();
        assert_eq!(
            load_or_create_pin(Some(&file), &dir).unwrap().0.expose(),
            "87654321"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_pin_files_are_errors_naming_the_file_without_the_content() {
        let dir = temp_dir("pin-bad");
        let file = dir.join("factory-pin");
        for bad in [
            "1234567",
            "123456789",
            "1234abcd",
            "",
            "\n12345678",
            "12 345678",
        ] {
            std::fs::write(&file, bad).unwrap();
            let e = load_or_create_pin(Some(&file), &dir).unwrap_err();
            assert!(
                e.contains("factory-pin") && e.contains("8-digit"),
                "{bad:?}: {e}"
            );
            if !bad.trim().is_empty() {
                assert!(
                    !e.contains(bad.trim()),
                    "the content must not be echoed: {e}"
                );
            }
        }
        // The device's own PIN file is state: a damaged one is moved aside and a new PIN made
        // (and shown), instead of stopping the device for good.
        std::fs::write(dir.join(PIN_FILE), "1234567x\n").unwrap();
        let (pin, created) = load_or_create_pin(None, &dir).unwrap();
        assert!(created, "a new PIN, to be shown on the console");
        assert_eq!(
            std::fs::read_to_string(dir.join(PIN_FILE)).unwrap(),
            format!("{}\n", pin.expose())
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("pin.corrupt")).unwrap(),
            "1234567x\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn security_state_round_trip_with_mode_0600() {
        let dir = temp_dir("state");
        let (mut state, created) = load_state(&dir, DI).unwrap();
        assert!(created);
        assert_eq!(state.dos(), DosState::Rfotm);
        // Something to keep: an ACE-free change of dos is refused while unowned, so go to RESET
        // and back through a reset, which is a real change of the persisted form.
        state.begin_factory_reset();
        assert!(state.reset_pending());
        save_state(&dir, &state).unwrap();
        assert_eq!(mode(&dir.join(STATE_FILE)), 0o600);
        let (loaded, created) = load_state(&dir, DI).unwrap();
        assert!(!created);
        assert!(loaded.reset_pending());
        assert_eq!(loaded.to_cbor(), state.to_cbor());
        // Another device's state is refused, naming the file.
        let e = load_state(&dir, "c0ffee00-0000-4000-8000-000000000002").unwrap_err();
        assert!(e.contains(STATE_FILE) && e.contains("belongs"), "{e}");
        // A corrupt file is an error naming it.
        std::fs::write(dir.join(STATE_FILE), b"\xa1garbage").unwrap();
        let e = load_state(&dir, DI).unwrap_err();
        assert!(
            e.contains(&dir.join(STATE_FILE).display().to_string()),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn security(dir: &Path, dev_mode: bool) -> Rc<Security> {
        let (key, _) = tls::ensure_identity_key(dir).unwrap();
        Security::new(Options {
            state_dir: dir.to_path_buf(),
            state: crate::security::load_state(dir, DI).unwrap().0,
            default_name: "test".into(),
            pin: Pin::new("12345678").unwrap(),
            dev_mode,
            identity_key: key,
            manufacturer: None,
        })
        .unwrap()
    }

    #[test]
    fn csr_is_for_the_identity_key_with_the_device_cn() {
        let dir = temp_dir("csr");
        let s = security(&dir, false);
        let mut csr = s
            .resources()
            .into_iter()
            .find(|r| r.href == "/oic/sec/csr")
            .unwrap();
        let props = csr.backend.retrieve().unwrap();
        let pem = props["csr"].as_text().unwrap().to_string();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert!(!pem.contains("PRIVATE KEY"));
        let der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .unwrap();
        let needle = format!("uuid:{DI}");
        assert!(der
            .as_ref()
            .windows(needle.len())
            .any(|w| w == needle.as_bytes()));
        let key = tls::ensure_identity_key(&dir).unwrap().0;
        let raw = key.public_key_raw();
        assert!(
            der.as_ref().windows(raw.len()).any(|w| w == raw),
            "the CSR carries the identity key"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn clear_transports_serve_only_discovery_unless_in_development_mode() {
        use ocf::resource::{Device, DeviceInfo, PlatformInfo};
        let dir = temp_dir("clear");
        let device = Device::new(
            DeviceInfo {
                di: DI.into(),
                piid: "c0ffee00-0000-4000-8000-000000000002".into(),
                name: "t".into(),
                device_type: "oic.d.sensor".into(),
                spec_version: "ocf.2.5.0".into(),
                data_model_version: "ocf.res.1.3.0".into(),
                software_version: "0".into(),
            },
            PlatformInfo::default(),
        );
        let agent = Agent::new(device);
        let udp = Origin::Udp("127.0.0.1:9".parse().unwrap());
        let code = |s: &Security, path: &str, query: Option<&str>| {
            let mut req = Request::new(Method::Get, path);
            if let Some(q) = query {
                req.query.push(("if".into(), q.into()));
            }
            let p = s.serve(&agent, &udp, &req.to_packet(&[1]), Via::Clear);
            Response::from_packet(&p).unwrap().code
        };
        let secure = security(&dir, false);
        assert_eq!(code(&secure, "/oic/res", None), ResponseType::Content);
        assert_eq!(code(&secure, "/oic/d", None), ResponseType::Unauthorized);
        assert_eq!(
            code(&secure, "/oic/sec/doxm", None),
            ResponseType::Unauthorized
        );
        assert_eq!(
            code(&secure, "/oic/res", Some("oic.if.b")),
            ResponseType::Unauthorized
        );
        assert!(!secure.may_batch(&udp, "/oic/d", Interface::ReadOnly));
        let dev = security(&dir, true);
        assert_eq!(code(&dev, "/oic/d", None), ResponseType::Content);
        assert!(dev.may_batch(&udp, "/oic/d", Interface::ReadOnly));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn test_agent(security: &Rc<Security>) -> Rc<Agent> {
        use ocf::resource::{Device, DeviceInfo, PlatformInfo};
        let device = Device::new(
            DeviceInfo {
                di: DI.into(),
                piid: "c0ffee00-0000-4000-8000-000000000002".into(),
                name: "t".into(),
                device_type: "oic.d.sensor".into(),
                spec_version: "ocf.2.5.0".into(),
                data_model_version: "ocf.res.1.3.0".into(),
                software_version: "0".into(),
            },
            PlatformInfo::default(),
        );
        let agent = Rc::new(Agent::new(device));
        for r in security.resources() {
            agent.device.borrow_mut().add(r).unwrap();
        }
        security.install_batch_filter(&agent);
        agent
    }

    fn cbor_post(path: &str, body: &ciborium::Value) -> Request {
        let mut r = Request::new(Method::Post, path);
        r.content_format = Some(10000);
        ciborium::into_writer(body, &mut r.payload).unwrap();
        r
    }

    /// Takes ownership over `serve` on connection `id` (the Mediator's side of the OTM).
    fn take_ownership(s: &Security, agent: &Agent, id: u64, exporter: &[u8; 32]) -> Response {
        use ocf::security::{otm, MediatorOtm};
        let origin = Origin::Stream(id);
        let via = Via::Tls { exporter };
        let pin = Pin::new("12345678").unwrap();
        let (m, msg_a) = MediatorOtm::start(&pin, DI, &mut random_fill);
        let p = s.serve(
            agent,
            &origin,
            &otm::step1_request(&msg_a).to_packet(&[1]),
            via,
        );
        let step1 = otm::parse_step1_response(&Response::from_packet(&p).unwrap()).unwrap();
        let confirm = m
            .finish(&step1.pake_msg_b, &step1.confirm_b, exporter)
            .unwrap();
        let p = s.serve(
            agent,
            &origin,
            &otm::step2_request(&confirm).to_packet(&[2]),
            via,
        );
        Response::from_packet(&p).unwrap()
    }

    #[test]
    fn ownership_closes_the_connections_opened_before_and_the_owner_gets_in() {
        let dir = temp_dir("owner");
        let s = security(&dir, false);
        let agent = test_agent(&s);
        let mediator_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mediator =
            tls_server::self_signed(&mediator_key, "00000000-0000-4000-8000-0000000000aa").unwrap();
        let (owner_id, mut owner_rx) = agent.open_stream();
        s.tls_opened(owner_id, &mediator.chain);
        let (other_id, mut other_rx) = agent.open_stream();
        s.tls_opened(other_id, &[]);
        let code = |id: u64, req: &Request| {
            let p = s.serve(
                &agent,
                &Origin::Stream(id),
                &req.to_packet(&[9]),
                Via::Tls { exporter: &[0; 32] },
            );
            Response::from_packet(&p).unwrap().code
        };
        assert_eq!(
            code(owner_id, &Request::new(Method::Get, "/oic/sec/cred")),
            ResponseType::Forbidden
        );

        let r = take_ownership(&s, &agent, owner_id, &[5; 32]);
        assert_eq!(r.code, ResponseType::Changed, "{}", r.diagnostic());
        assert_eq!(s.state.borrow().dos(), DosState::Rfpro);
        assert!(matches!(
            other_rx.try_recv(),
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected)
        ));
        assert!(matches!(
            owner_rx.try_recv(),
            Err(tokio::sync::mpsc::error::TryRecvError::Empty)
        ));
        let (persisted, _) = load_state(&dir, DI).unwrap();
        assert!(persisted.doxm().owned, "ownership is persisted at once");
        assert_eq!(
            s.pending.borrow().len(),
            2,
            "OwnershipTransferred and StateChanged queued"
        );

        // The owner, now and on a later connection with the same key; nobody else.
        assert_eq!(
            code(owner_id, &Request::new(Method::Get, "/oic/sec/cred")),
            ResponseType::Content
        );
        let (later, _rx) = agent.open_stream();
        s.tls_opened(later, &mediator.chain);
        assert_eq!(
            code(later, &Request::new(Method::Get, "/oic/sec/acl2")),
            ResponseType::Content
        );
        let (anon, _rx2) = agent.open_stream();
        s.tls_opened(anon, &[]);
        assert_eq!(
            code(anon, &Request::new(Method::Get, "/oic/sec/cred")),
            ResponseType::Unauthorized
        );
        // A second ownership transfer is refused.
        assert_eq!(
            take_ownership_refused(&s, &agent, anon),
            ResponseType::Forbidden
        );
        s.closed(owner_id);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn take_ownership_refused(s: &Security, agent: &Agent, id: u64) -> ResponseType {
        use ocf::security::{otm, MediatorOtm};
        let (_, msg_a) = MediatorOtm::start(&Pin::new("12345678").unwrap(), DI, &mut random_fill);
        let p = s.serve(
            agent,
            &Origin::Stream(id),
            &otm::step1_request(&msg_a).to_packet(&[1]),
            Via::Tls { exporter: &[0; 32] },
        );
        Response::from_packet(&p).unwrap().code
    }

    #[test]
    fn factory_reset_through_pstat_comes_back_unowned_with_a_new_key() {
        let dir = temp_dir("reset");
        let s = security(&dir, false);
        let agent = test_agent(&s);
        let mediator_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mediator =
            tls_server::self_signed(&mediator_key, "00000000-0000-4000-8000-0000000000aa").unwrap();
        let (id, _rx) = agent.open_stream();
        s.tls_opened(id, &mediator.chain);
        assert_eq!(
            take_ownership(&s, &agent, id, &[5; 32]).code,
            ResponseType::Changed
        );
        let old_key = s.key.borrow().public_key_raw().to_vec();
        let old_server = s.server_config();
        std::fs::write(dir.join(tls::IDENTITY_CERT), b"x").unwrap();
        // A name the owner gave the device (/oic/con), kept in identity.json.
        crate::state::Identity::save_name(&dir, "Kitchen").unwrap();
        agent.device.borrow_mut().set_identity(DI, "Kitchen");
        let reset = cbor_post(
            "/oic/sec/pstat",
            &ciborium::Value::Map(vec![(
                "dos".into(),
                ciborium::Value::Map(vec![("s".into(), ciborium::Value::Integer(0.into()))]),
            )]),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, async {
            let (_stop_tx, stop_rx) = watch::channel(false);
            tokio::task::spawn_local(s.clone().run_events(agent.clone(), stop_rx));
            let p = s.serve(
                &agent,
                &Origin::Stream(id),
                &reset.to_packet(&[3]),
                Via::Tls { exporter: &[0; 32] },
            );
            assert_eq!(
                Response::from_packet(&p).unwrap().code,
                ResponseType::Changed
            );
            assert!(
                load_state(&dir, DI).unwrap().0.reset_pending(),
                "RESET is persisted before the work"
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while s.state.borrow().dos() != DosState::Rfotm {
                assert!(Instant::now() < deadline, "the reset did not finish");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let st = s.state.borrow();
        assert!(!st.doxm().owned && st.owner().is_none() && !st.reset_pending());
        let new_di = st.di().to_string();
        drop(st);
        assert_ne!(
            new_di, DI,
            "a new di (iotivity-lite: a new device UUID at RESET)"
        );
        assert_eq!(s.di(), new_di);
        assert_eq!(agent.device.borrow().info().di, new_di, "the tree has it");
        let identity = crate::state::Identity::load_or_create(&dir).unwrap().0;
        assert_eq!(identity.di, new_di, "identity.json has it");
        assert_eq!(identity.name, None, "the owner's name is wiped");
        assert_eq!(
            agent.device.borrow().name(),
            "test",
            "the board's name is back"
        );
        let (persisted, _) = load_state(&dir, &new_di).unwrap();
        assert_eq!(persisted.dos(), DosState::Rfotm);
        assert!(!persisted.doxm().owned);
        assert_ne!(
            s.key.borrow().public_key_raw(),
            old_key.as_slice(),
            "a new identity key"
        );
        let on_disk = tls::ensure_identity_key(&dir).unwrap().0;
        assert_eq!(on_disk.public_key_raw(), s.key.borrow().public_key_raw());
        assert!(
            !Arc::ptr_eq(&old_server, &s.server_config()),
            "a new server certificate"
        );
        assert!(!dir.join(tls::IDENTITY_CERT).exists());
        // The former owner is a stranger now.
        let p = s.serve(
            &agent,
            &Origin::Stream(id),
            &Request::new(Method::Get, "/oic/sec/cred").to_packet(&[4]),
            Via::Tls { exporter: &[0; 32] },
        );
        assert_eq!(
            Response::from_packet(&p).unwrap().code,
            ResponseType::Forbidden
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
