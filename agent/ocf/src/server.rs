//! The device's one entry point, sans-IO: every request of every transport comes through
//! [`Server::handle`], and every access rule lives behind it.
//!
//! `handle(peer, request, now)` answers the request and returns the [`Event`]s the daemon has
//! to carry out (files to write, connections to close, tasks to wake). The daemon is never
//! called back: what it must do comes out as an event or a step, and what it learns (a TLS
//! peer's certificate, a chain that verifies against new anchors, a deregistration that
//! completed) goes in as a call.
//!
//! - **Transport policy** ([`Peer`]): UDP (unicast and multicast) and the plain coap+tcp
//!   listener are in the clear: only discovery of `/oic/res` (not its batch form, which
//!   carries representations) is served there, and a multicast request that finds nothing is
//!   not answered (RFC 7252 §8.2.1). In the development mode (`--insecure-dev`) the clear
//!   transports and the cloud link serve everything without access control, as iotivity-lite
//!   built without security does.
//! - **Access control**: on the secure endpoint and from the cloud, the requester comes from
//!   the connection's certificate ([`Server::open`]) and the ACL decides
//!   ([`SecurityState::authorize_request`]); a refusal is 4.01/4.03 with a diagnostic. Batch
//!   representations of `/oic/res` carry only what the requester may read, also in
//!   notifications ([`Server::take_notifications`]).
//! - **Ownership transfer** ([`OTM_HREF`]) only on the local secure endpoint, bound to the
//!   connection's TLS exporter; once the device is owned, the secure connections opened before
//!   are closed, except the new owner's ([`Event::CloseConnections`]).
//! - **DELETE** on `/oic/sec/cred` and `/oic/sec/acl2` ([`handle_delete`]); the router serves
//!   GET and POST.
//! - **Maintenance**: `/oic/mnt` `fr` records the reset in the security state before the 2.04
//!   ([`Event::PersistSecurityState`] comes before the response is sent) and asks for it
//!   ([`Event::FactoryResetRequested`]); pstat `dos.s` = RESET asks for the same reset; `rb`
//!   asks for a reboot. The procedures themselves are [`crate::maintenance::FactoryReset`] and
//!   [`crate::maintenance::Reboot`], which the daemon runs with the calls below.
//! - **The cloud gate**: the cloud session may run only in RFNOP (always in the development
//!   mode): [`Event::CloudMayStart`] / [`Event::CloudMustStop`].

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use coap_lite::{MessageClass, Packet, ResponseType};

use crate::cloud::payload::from_cbor;
use crate::cloud::resource::{self as cloudconf, SharedClock, SharedSession};
use crate::cloud::session::{CloudSession, DeviceInfo as CloudDevice, Timing};
use crate::cloud::RdLink;
use crate::maintenance::{self, Action, MaintenanceError, SharedMaintenance, Ticket};
use crate::resource::{decode_update, error_response};
use crate::resource::{
    Device, Interface, Method, Notification, Origin, Request, ResourceError, Response, RES_HREF,
};
use crate::security::csr::CsrSource;
use crate::security::doc::{SessionAuth, RDP_PIN_LIFETIME};
use crate::security::doxm::{OXM_RANDOM_PIN, OXM_SPAKE2};
use crate::security::dtls_keys::{
    pin_psk, psk_for_identity, uuid_bytes, uuid_text, SessionSecrets, RDP_IDENTITY,
};
use crate::security::{
    handle_delete, resources, Connection, DenyReason, DeviceOtm, DosState, Operation, OtmHandler,
    PeerIdentity, Pin, SecurityEvent, SecurityState, SharedState, Target, CRED_HREF, DEVICE_HREF,
    DOXM_HREF, OTM_HREF, PLATFORM_HREF, PSTAT_HREF,
};

/// Where a request came from, and over what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A UDP unicast datagram (in the clear).
    Udp(SocketAddr),
    /// A UDP datagram to an OCF multicast group (in the clear; discovery only, and no answer
    /// when there is nothing to say).
    Multicast(SocketAddr),
    /// Plain coap+tcp connection `id` (development mode only; in the clear).
    Tcp(u64),
    /// Secure local connection `id` (coaps+tcp), opened with [`ConnKind::Tls`].
    Tls(u64),
    /// DTLS session `id` (coaps), opened with [`ConnKind::Dtls`].
    Dtls(u64),
    /// The cloud link `id`, opened with [`ConnKind::Cloud`].
    Cloud(u64),
}

impl Peer {
    /// The resource tree's origin (observations are tied to it).
    pub fn origin(self) -> Origin {
        match self {
            Peer::Udp(a) | Peer::Multicast(a) => Origin::Udp(a),
            Peer::Tcp(id) | Peer::Tls(id) | Peer::Dtls(id) | Peer::Cloud(id) => Origin::Stream(id),
        }
    }
}

/// What is known about a stream connection when it opens.
#[derive(Debug, Clone)]
pub enum ConnKind {
    /// Plain coap+tcp.
    Tcp,
    /// coaps+tcp on the local endpoint.
    Tls {
        /// From the client certificate, if one was presented (and could be read); its
        /// `chain_verified` says whether it chains to a trust anchor of `/oic/sec/cred`
        /// (updated with [`Server::set_chain_verified`] when the anchors change).
        identity: Option<PeerIdentity>,
        /// The session's exporter (label [`crate::security::otm::EXPORTER_LABEL`]), which the
        /// ownership transfer is bound to.
        exporter: Vec<u8>,
    },
    /// The cloud link: the cloud's certificate was verified against the trust anchors and
    /// `uuid:<sid>` when connecting; `None` over a plain connection (development mode only).
    Cloud { identity: Option<PeerIdentity> },
    /// A DTLS session on the local coaps endpoint.
    Dtls {
        /// How its handshake authenticated the peer.
        auth: SessionAuth,
        /// Its master secret and randoms, which an owner PSK is derived from
        /// ([`crate::security::doc`]).
        secrets: Option<SessionSecrets>,
    },
}

#[derive(Debug)]
struct Conn {
    kind: ConnKind,
    /// Opened while the device had no owner.
    opened_unowned: bool,
    /// A Device Ownership Connection ([`crate::security::doc`]).
    doc: bool,
}

/// The Random PIN of the ownership transfer under way.
struct RandomPin {
    pin: Pin,
    made: Instant,
    /// A handshake has used it.
    used: bool,
}

/// What the daemon has to do after a call.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Write `security.cbor` (atomically, 0600) with these bytes, before the response is sent.
    PersistSecurityState(Vec<u8>),
    /// The owner renamed the device through `/oic/con`: keep the name.
    NameChanged(String),
    /// Close these connections (their peers must not stay connected).
    CloseConnections(Vec<u64>),
    /// The cloud link may run now (RFNOP, or the development mode): wake it.
    CloudMayStart,
    /// The cloud link must stop (the device left RFNOP): wake it; the session disconnects.
    CloudMustStop,
    /// CoAPCloudConf was written: wake the cloud link, the session has work queued.
    CloudConfChanged,
    /// A factory reset was asked for and recorded: run [`crate::maintenance::FactoryReset`].
    FactoryResetRequested,
    /// A reboot was asked for: run [`crate::maintenance::Reboot`].
    RebootRequested,
    /// `/oic/sec/cred` changed: re-verify the open secure connections' certificate chains
    /// against [`Server::trust_anchors`] and report with [`Server::set_chain_verified`].
    CredentialsChanged,
    /// For the log: ownership taken, onboarding state changed, ACL changed.
    Security(SecurityEvent),
    /// A Mediator selected the Random PIN method: show this fresh PIN to the user (the
    /// console, the control socket; never the log).
    ShowRandomPin(Pin),
    /// The ownership transfer gave the device a new `di` (`doxm.deviceuuid`): keep it in the
    /// identity file, renew the self-signed certificate and the CSR ([`Server::set_csr`]).
    DeviceIdChanged(String),
}

/// What the server starts with besides the tree and the states.
pub struct Options {
    /// `--insecure-dev`.
    pub dev_mode: bool,
    /// The setup PIN of the ownership transfer.
    pub pin: Pin,
    /// The operating system's CSPRNG (the SPAKE2 scalars, the cloud session's seed).
    pub random: fn(&mut [u8]),
    /// The board's device name, which a factory reset restores.
    pub default_name: String,
    /// The cloud session's timing, for the fresh session after a factory reset.
    pub cloud_timing: Timing,
}

/// The device: its resource tree, its security and maintenance states and its cloud session,
/// behind one entry point (see the module docs).
pub struct Server {
    device: Device,
    security: SharedState,
    otm: OtmHandler,
    pin: Pin,
    random: fn(&mut [u8]),
    dev_mode: bool,
    default_name: String,
    conns: HashMap<u64, Conn>,
    maintenance: SharedMaintenance,
    cloud: SharedSession,
    cloud_timing: Timing,
    clock: SharedClock,
    csr: Rc<RefCell<Option<String>>>,
    /// The cloud gate as last set.
    cloud_gate: bool,
    /// Connections to close after the request (ownership taken).
    pending_close: Vec<u64>,
    /// CoAPCloudConf was written by the request.
    cloud_written: bool,
    /// The Random PIN, once a Mediator selected that method.
    random_pin: Option<RandomPin>,
    /// A Random PIN made by the request, to show.
    pin_to_show: Option<Pin>,
    /// The ownership transfer changed `di`.
    di_changed: Option<String>,
}

impl Server {
    /// A server over `device` (with `/oic/res`, `/oic/d`, `/oic/p`; the daemon adds the board's
    /// resources through [`Server::device_mut`]), adding the security resources, `/oic/mnt` and
    /// CoAPCloudConf. `security` must be the state of the device's `di`.
    pub fn new(
        mut device: Device,
        security: SecurityState,
        mut cloud: CloudSession,
        opts: Options,
        now: Instant,
    ) -> Result<Server, String> {
        let di = security.di().to_string();
        let security: SharedState = Rc::new(RefCell::new(security));
        let csr: Rc<RefCell<Option<String>>> = Rc::new(RefCell::new(None));
        let source = {
            let csr = csr.clone();
            move || -> Result<String, ResourceError> {
                csr.borrow().clone().ok_or_else(|| {
                    ResourceError::Unavailable("the device has no CSR yet; try again".into())
                })
            }
        };
        let source: Box<dyn CsrSource> = Box::new(source);
        for r in resources(&security, source) {
            device.add(r)?;
        }
        let maintenance: SharedMaintenance = Rc::new(RefCell::new(maintenance::Maintenance::new()));
        device.add(maintenance::resource(maintenance.clone()))?;
        let gate = opts.dev_mode || security.borrow().dos() == DosState::Rfnop;
        cloud.set_provisioned(gate, now);
        let cloud: SharedSession = Rc::new(RefCell::new(cloud));
        let clock: SharedClock = Rc::new(Cell::new(now));
        device.add(cloudconf::resource(cloud.clone(), clock.clone()))?;
        let otm = OtmHandler::new(
            security.clone(),
            DeviceOtm::new(opts.pin.clone(), &di, Box::new(opts.random)),
        );
        Ok(Server {
            device,
            security,
            otm,
            pin: opts.pin,
            random: opts.random,
            dev_mode: opts.dev_mode,
            default_name: opts.default_name,
            conns: HashMap::new(),
            maintenance,
            cloud,
            cloud_timing: opts.cloud_timing,
            clock,
            csr,
            cloud_gate: gate,
            pending_close: Vec::new(),
            cloud_written: false,
            random_pin: None,
            pin_to_show: None,
            di_changed: None,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The resource tree, for the board's resources and their readings.
    pub fn device_mut(&mut self) -> &mut Device {
        &mut self.device
    }

    /// The security state (read it; a factory reset's wipe writes it).
    pub fn security(&self) -> &SharedState {
        &self.security
    }

    /// The cloud session, for the cloud link's driver.
    pub fn cloud(&self) -> &SharedSession {
        &self.cloud
    }

    /// The maintenance state behind `/oic/mnt`.
    pub fn maintenance(&self) -> &SharedMaintenance {
        &self.maintenance
    }

    /// The development mode (`--insecure-dev`).
    pub fn dev_mode(&self) -> bool {
        self.dev_mode
    }

    /// Whether the cloud link may run: in RFNOP (always in the development mode).
    pub fn cloud_allowed(&self) -> bool {
        self.cloud_gate
    }

    /// The CSR `/oic/sec/csr` serves (PEM, for the identity key, CN `uuid:<di>`); the daemon
    /// makes it at start and after a factory reset.
    pub fn set_csr(&mut self, pem: String) {
        *self.csr.borrow_mut() = Some(pem);
    }

    /// Every trust anchor of `/oic/sec/cred` (DER), to verify client chains against.
    pub fn trust_anchors(&self) -> Vec<crate::x509::CertificateDer<'static>> {
        self.security
            .borrow()
            .creds()
            .trust_anchors()
            .flat_map(|c| c.certificates_der())
            .collect()
    }

    /// The ownership transfer methods to offer besides SPAKE2 (`doxm.oxms`):
    /// [`crate::security::doxm::OXM_RANDOM_PIN`] where a DTLS endpoint runs,
    /// [`crate::security::doxm::OXM_MFG_CERT`] where a manufacturer certificate is installed.
    pub fn set_offered_oxms(&mut self, oxms: &[u16]) {
        let mut s = self.security.borrow_mut();
        s.set_offered_oxms(oxms);
        // Not persisted: a state change only if the selection had to fall back.
        let _ = s.take_dirty();
    }

    /// A stream connection `id` opened.
    pub fn open(&mut self, id: u64, kind: ConnKind) {
        if matches!(kind, ConnKind::Cloud { .. }) {
            self.device.set_remote(Origin::Stream(id));
        }
        let (opened_unowned, doc) = {
            let s = self.security.borrow();
            let doc = match &kind {
                ConnKind::Tls { identity, .. } => {
                    s.is_doc(&SessionAuth::Certificate(identity.clone()))
                }
                ConnKind::Dtls { auth, .. } => s.is_doc(auth),
                _ => false,
            };
            (s.owner().is_none(), doc)
        };
        self.conns.insert(
            id,
            Conn {
                kind,
                opened_unowned,
                doc,
            },
        );
    }

    /// The key for the PSK `identity` a DTLS client sent, and what it authenticates; `None`
    /// fails the handshake. [`RDP_IDENTITY`] gets the Random PIN's key while that method is
    /// selected, once per PIN and within [`RDP_PIN_LIFETIME`]; a UUID (16 bytes or its text)
    /// gets the key of its credential ([`psk_for_identity`]). The caller wipes the key.
    pub fn dtls_psk(&mut self, identity: &[u8], now: Instant) -> Option<(Vec<u8>, SessionAuth)> {
        let s = self.security.borrow();
        if identity == RDP_IDENTITY {
            if !s.is_doc(&SessionAuth::RandomPin) {
                return None;
            }
            let pin = self
                .random_pin
                .as_mut()
                .filter(|p| !p.used && now.saturating_duration_since(p.made) < RDP_PIN_LIFETIME)?;
            pin.used = true;
            let salt = uuid_bytes(s.di())?;
            let key = pin_psk(pin.pin.expose().as_bytes(), &salt);
            return Some((key.to_vec(), SessionAuth::RandomPin));
        }
        let key = psk_for_identity(identity, s.creds())?.to_vec();
        let subject = match <&[u8; 16]>::try_from(identity) {
            Ok(raw) => uuid_text(raw),
            Err(_) => String::from_utf8_lossy(identity).to_ascii_lowercase(),
        };
        Some((key, SessionAuth::Psk { subject }))
    }

    /// The requester of connection `id` (`None`: a connection the server does not know, or
    /// the development mode's plain ones).
    fn requester_of(&self, peer: Peer, conn: Option<&Conn>) -> crate::security::Requester {
        let s = self.security.borrow();
        let Some(conn) = conn else {
            return s.requester(None, false);
        };
        let mut who = match (&conn.kind, peer) {
            (ConnKind::Cloud { identity }, Peer::Cloud(_)) => {
                s.requester(identity.as_ref(), identity.is_some())
            }
            (ConnKind::Tls { identity, .. }, Peer::Tls(_)) => s.requester(identity.as_ref(), true),
            (ConnKind::Dtls { auth, .. }, Peer::Dtls(_)) => match auth {
                SessionAuth::RandomPin => s.requester(None, true),
                SessionAuth::Psk { subject } => s.requester_psk(subject),
                SessionAuth::Certificate(identity) => s.requester(identity.as_ref(), true),
            },
            _ => s.requester(None, false),
        };
        who.doc = conn.doc;
        who
    }

    /// Whether a request in the clear belongs to the start of a standard ownership transfer:
    /// reading doxm, pstat, /oic/d and /oic/p and selecting the method, while the device is
    /// unowned, a standard method is offered and no Device Ownership Connection is open
    /// (iotivity-lite's `oc_sec_check_acl`).
    fn clear_onboarding(&self, req: &Request) -> bool {
        let s = self.security.borrow();
        if s.dos() != DosState::Rfotm
            || s.owner().is_some()
            || s.offered_oxms() == [OXM_SPAKE2]
            || self.conns.values().any(|c| c.doc)
        {
            return false;
        }
        match req.method {
            Method::Get => {
                [DOXM_HREF, PSTAT_HREF, DEVICE_HREF, PLATFORM_HREF].contains(&req.path.as_str())
            }
            Method::Post => req.path == DOXM_HREF,
            _ => false,
        }
    }

    /// `POST /oic/sec/doxm {"oxmsel"}` in the clear.
    fn select_oxm(&mut self, req: &Request, now: Instant) -> Response {
        let props = match decode_update(req) {
            Ok(p) => p,
            Err(r) => return r,
        };
        let selected = self.security.borrow_mut().select_oxm(&props);
        match selected {
            Ok(OXM_RANDOM_PIN) => {
                let pin = Pin::generate(&mut |b| (self.random)(b));
                self.pin_to_show = Some(pin.clone());
                self.random_pin = Some(RandomPin {
                    pin,
                    made: now,
                    used: false,
                });
                Response::new(ResponseType::Changed)
            }
            Ok(_) => Response::new(ResponseType::Changed),
            Err(e) => error_response(e),
        }
    }

    /// A Device Ownership Connection's POST to doxm or cred; `None` for anything else.
    fn doc_post(&mut self, id: u64, req: &Request) -> Option<Response> {
        if req.method != Method::Post || !matches!(req.path.as_str(), DOXM_HREF | CRED_HREF) {
            return None;
        }
        let conn = self.conns.get(&id)?;
        if !conn.doc || self.security.borrow().dos() != DosState::Rfotm {
            return None;
        }
        let props = match decode_update(req) {
            Ok(p) => p,
            Err(r) => return Some(r),
        };
        let result = if req.path == DOXM_HREF {
            let client = match &conn.kind {
                ConnKind::Tls { identity, .. } => identity.clone(),
                ConnKind::Dtls {
                    auth: SessionAuth::Certificate(identity),
                    ..
                } => identity.clone(),
                _ => None,
            };
            let change = self
                .security
                .borrow_mut()
                .doc_post_doxm(&props, client.as_ref());
            change.map(|c| {
                if c.owned {
                    self.pending_close = self.unowned_connections_except(id);
                    self.random_pin = None;
                }
                if let Some(di) = c.new_di {
                    self.di_changed = Some(di);
                }
            })
        } else {
            let secrets = match &conn.kind {
                ConnKind::Dtls { secrets, .. } => secrets.clone(),
                _ => None,
            };
            self.security
                .borrow_mut()
                .doc_post_cred(&props, secrets.as_ref())
        };
        Some(match result {
            Ok(()) => Response::new(ResponseType::Changed),
            Err(e) => error_response(e),
        })
    }

    /// Whether the certificate of secure connection `id` chains to a trust anchor now.
    pub fn set_chain_verified(&mut self, id: u64, verified: bool) {
        let identity = match self.conns.get_mut(&id).map(|c| &mut c.kind) {
            Some(ConnKind::Tls {
                identity: Some(identity),
                ..
            })
            | Some(ConnKind::Dtls {
                auth: SessionAuth::Certificate(Some(identity)),
                ..
            }) => identity,
            _ => return,
        };
        identity.chain_verified = verified;
    }

    /// Stream connection `id` closed: its observations and ownership-transfer session end.
    pub fn close(&mut self, id: u64) {
        self.conns.remove(&id);
        self.otm.otm().drop_session(id);
        self.device.drop_origin(&Origin::Stream(id));
    }

    /// Whether secure connection `id` is the owner's (its certificate or PSK names the
    /// owner): the connection table never evicts it to admit a stranger.
    pub fn is_owner_connection(&self, id: u64) -> bool {
        let conn = self.conns.get(&id);
        let peer = match conn.map(|c| &c.kind) {
            Some(ConnKind::Tls { .. }) => Peer::Tls(id),
            Some(ConnKind::Dtls { .. }) => Peer::Dtls(id),
            _ => return false,
        };
        self.requester_of(peer, conn).is_owner
    }

    /// The open secure local connections (coaps+tcp and DTLS).
    pub fn tls_connections(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.kind, ConnKind::Tls { .. } | ConnKind::Dtls { .. }))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Serves one request message that arrived from `peer` at `now`. The answer is `None` only
    /// for a multicast request that is not answered. Carry the events out in order, the
    /// persistence ones before sending the answer.
    pub fn handle(
        &mut self,
        peer: Peer,
        packet: &Packet,
        now: Instant,
    ) -> (Option<Packet>, Vec<Event>) {
        self.clock.set(now);
        let token = packet.get_token().to_vec();
        let response = if !matches!(packet.header.code, MessageClass::Request(_)) {
            None
        } else if let Peer::Multicast(_) = peer {
            self.multicast(peer, packet)
        } else {
            Some(match Request::from_packet(packet) {
                Ok(req) => self.route(peer, &req, &token, now),
                Err(e) => e.to_packet(&token),
            })
        };
        let mut events = Vec::new();
        self.collect(now, &mut events);
        (response, events)
    }

    fn multicast(&mut self, peer: Peer, packet: &Packet) -> Option<Packet> {
        let req = Request::from_packet(packet).ok()?;
        // Discovery only, and not the batch form (which carries representations) outside the
        // development mode.
        if !(self.dev_mode || is_plain_discovery(&req)) {
            return None;
        }
        let response = self.device.handle_multicast(&peer.origin(), &req)?;
        Some(response.to_packet(packet.get_token()))
    }

    fn route(&mut self, peer: Peer, req: &Request, token: &[u8], now: Instant) -> Packet {
        let origin = peer.origin();
        let clear = matches!(peer, Peer::Udp(_) | Peer::Multicast(_) | Peer::Tcp(_));
        if clear {
            if self.dev_mode || is_plain_discovery(req) {
                return self.serve_tree(&origin, req, token);
            }
            if matches!(peer, Peer::Udp(_)) && self.clear_onboarding(req) {
                if req.method == Method::Post {
                    return self.select_oxm(req, now).to_packet(token);
                }
                return self.serve_tree(&origin, req, token);
            }
            return DenyReason::InsecureTransport.response().to_packet(token);
        }
        if matches!(peer, Peer::Cloud(_)) && self.dev_mode {
            return self.serve_tree(&origin, req, token);
        }
        let id = match peer {
            Peer::Tls(id) | Peer::Dtls(id) | Peer::Cloud(id) => id,
            _ => 0,
        };
        let conn = self.conns.get(&id);
        let who = self.requester_of(peer, conn);
        let decision = self.security.borrow().authorize_request(&who, req);
        if let Some(denial) = decision.denial() {
            return denial.to_packet(token);
        }
        if req.path == OTM_HREF {
            let (Peer::Tls(id), Some(ConnKind::Tls { exporter, identity })) =
                (peer, conn.map(|c| &c.kind))
            else {
                return Response::error(
                    ResponseType::Forbidden,
                    "the ownership transfer is only served on the local coaps+tcp endpoint",
                )
                .to_packet(token);
            };
            let exporter = exporter.clone();
            let identity = identity.clone();
            let owned_before = self.security.borrow().owner().is_some();
            let c = Connection {
                session_id: id,
                exporter: &exporter,
                peer: identity.as_ref(),
            };
            let reply = self.otm.handle(req, &c, now);
            if !owned_before && self.security.borrow().owner().is_some() {
                self.pending_close = self.unowned_connections_except(id);
            }
            return reply.to_packet(token);
        }
        if let Some(r) = self.doc_post(id, req) {
            return r.to_packet(token);
        }
        if let Some(r) = handle_delete(&self.security, req) {
            return r.to_packet(token);
        }
        self.serve_tree(&origin, req, token)
    }

    fn serve_tree(&mut self, origin: &Origin, req: &Request, token: &[u8]) -> Packet {
        let Server {
            device,
            conns,
            security,
            dev_mode,
            ..
        } = self;
        let filter = |o: &Origin, href: &str, i: Interface| {
            may_batch(conns, security, *dev_mode, o, href, i)
        };
        let response = device.handle_filtered(origin, req, token, Some(&filter));
        if req.path == cloudconf::HREF
            && req.method == Method::Post
            && response.code == ResponseType::Changed
        {
            self.cloud_written = true;
        }
        response.to_packet(token)
    }

    /// Notifications for everything that changed, batch ones filtered for their observers.
    pub fn take_notifications(&mut self) -> Vec<Notification> {
        let Server {
            device,
            conns,
            security,
            dev_mode,
            ..
        } = self;
        let filter = |o: &Origin, href: &str, i: Interface| {
            may_batch(conns, security, *dev_mode, o, href, i)
        };
        device.take_notifications_filtered(Some(&filter))
    }

    /// Secure connections opened while the device had no owner, except `keep`.
    fn unowned_connections_except(&self, keep: u64) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(id, c)| {
                **id != keep
                    && c.opened_unowned
                    && matches!(c.kind, ConnKind::Tls { .. } | ConnKind::Dtls { .. })
            })
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Turns what the last call changed into events.
    fn collect(&mut self, now: Instant, events: &mut Vec<Event>) {
        let mut reset_asked = false;
        if let Some(action) = self.maintenance.borrow_mut().take_fresh() {
            match action {
                // Recorded before the 2.04 goes out: once a client has its answer, a power cut
                // cannot lose the reset.
                Action::FactoryReset => {
                    let mut s = self.security.borrow_mut();
                    if !s.reset_pending() {
                        s.begin_factory_reset();
                    }
                    reset_asked = true;
                }
                Action::Reboot => events.push(Event::RebootRequested),
            }
        }
        let (dirty, security_events) = match self.security.try_borrow_mut() {
            Ok(mut s) => (s.take_dirty(), s.take_events()),
            Err(_) => (false, Vec::new()),
        };
        if dirty {
            events.insert(
                0,
                Event::PersistSecurityState(self.security.borrow().to_cbor()),
            );
        }
        for e in security_events {
            match e {
                SecurityEvent::FactoryResetRequested => {
                    // pstat dos.s = RESET: the same reset as /oic/mnt's (a running one is
                    // joined). During a reboot it stays recorded and is finished at the next
                    // start.
                    if self.security.borrow().reset_pending()
                        && self
                            .maintenance
                            .borrow_mut()
                            .join(Action::FactoryReset)
                            .is_ok()
                    {
                        reset_asked = true;
                    }
                }
                SecurityEvent::CredentialsChanged => events.push(Event::CredentialsChanged),
                SecurityEvent::AclChanged => {
                    // Batch observers of /oic/res see what they may read now.
                    self.device.mark_changed(RES_HREF);
                    events.push(Event::Security(SecurityEvent::AclChanged));
                }
                other => events.push(Event::Security(other)),
            }
        }
        if reset_asked {
            self.device.mark_changed(maintenance::HREF);
            events.push(Event::FactoryResetRequested);
        }
        let close = std::mem::take(&mut self.pending_close);
        if !close.is_empty() {
            events.push(Event::CloseConnections(close));
        }
        if let Some(name) = self.device.take_name_change() {
            events.push(Event::NameChanged(name));
        }
        if std::mem::take(&mut self.cloud_written) {
            events.push(Event::CloudConfChanged);
        }
        if let Some(pin) = self.pin_to_show.take() {
            events.push(Event::ShowRandomPin(pin));
        }
        if let Some(di) = self.di_changed.take() {
            self.take_new_di(now);
            events.push(Event::DeviceIdChanged(di));
        }
        self.update_cloud_gate(now, events);
    }

    fn update_cloud_gate(&mut self, now: Instant, events: &mut Vec<Event>) {
        let dos = self.security.borrow().dos();
        if dos == DosState::Reset {
            // The factory reset decides.
            return;
        }
        let allowed = self.dev_mode || dos == DosState::Rfnop;
        if allowed != self.cloud_gate {
            self.cloud_gate = allowed;
            self.cloud.borrow_mut().set_provisioned(allowed, now);
            events.push(if allowed {
                Event::CloudMayStart
            } else {
                Event::CloudMustStop
            });
        }
    }

    /// Events for what changed outside a request (a state the daemon wrote into directly).
    pub fn sync(&mut self, now: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        self.collect(now, &mut events);
        events
    }

    /// A factory reset asked for outside a request (the console): recorded in the security
    /// state, and joined to the reset under way if there is one. The ticket gives its real
    /// outcome ([`maintenance::Maintenance::outcome`]) once it ended; a reboot under way is
    /// 5.03.
    pub fn request_factory_reset(
        &mut self,
        now: Instant,
    ) -> Result<(Ticket, Vec<Event>), ResourceError> {
        let ticket = self.maintenance.borrow_mut().join(Action::FactoryReset)?;
        {
            let mut s = self.security.borrow_mut();
            if !s.reset_pending() {
                s.begin_factory_reset();
            }
        }
        let mut events = Vec::new();
        self.collect(now, &mut events);
        if !events.contains(&Event::FactoryResetRequested) {
            events.push(Event::FactoryResetRequested);
        }
        self.device.mark_changed(maintenance::HREF);
        Ok((ticket, events))
    }

    /// [`crate::maintenance::ResetStep::RecordReset`]: the reset is in the security state
    /// (persist it with the events).
    pub fn record_factory_reset(&mut self, now: Instant) -> Vec<Event> {
        {
            let mut s = self.security.borrow_mut();
            if !s.reset_pending() {
                s.begin_factory_reset();
            }
        }
        let mut events = Vec::new();
        self.collect(now, &mut events);
        events.retain(|e| !matches!(e, Event::FactoryResetRequested));
        events
    }

    /// The action `/oic/mnt` or the console asked for, if any: it is under way from now on.
    pub fn take_maintenance_request(&mut self) -> Option<Action> {
        let action = self.maintenance.borrow_mut().take_request();
        if action.is_some() {
            self.device.mark_changed(maintenance::HREF);
        }
        action
    }

    /// The maintenance action under way ended (`err` shows `error`).
    pub fn maintenance_finished(&mut self, error: Option<MaintenanceError>) {
        self.maintenance.borrow_mut().finished(error);
        self.device.mark_changed(maintenance::HREF);
    }

    /// [`crate::maintenance::ResetStep::NewIdentity`]: after the wipe (the security state was
    /// reset with the new `di`), the running device takes it: resource tree (name back to the
    /// board's), ownership transfer, a fresh unconfigured cloud session (offline until the
    /// device is onboarded again); CoAPCloudConf observers see `cps` uninitialized. The CSR
    /// is gone until [`Server::set_csr`].
    pub fn renew_identity(&mut self, now: Instant) -> Vec<Event> {
        self.take_new_di(now);
        let mut events = Vec::new();
        self.collect(now, &mut events);
        // The state's own reset request was carried out by this very reset.
        events.retain(|e| !matches!(e, Event::FactoryResetRequested));
        events
    }

    /// The running device takes the security state's `di`: see [`Server::renew_identity`].
    fn take_new_di(&mut self, now: Instant) {
        let di = self.security.borrow().di().to_string();
        self.device.set_identity(&di, &self.default_name);
        self.otm = OtmHandler::new(
            self.security.clone(),
            DeviceOtm::new(self.pin.clone(), &di, Box::new(self.random)),
        );
        let mut seed = [0u8; 8];
        (self.random)(&mut seed);
        let device = CloudDevice {
            di: di.clone(),
            name: self.default_name.clone(),
        };
        let mut fresh = CloudSession::new(device, self.cloud_timing, u64::from_be_bytes(seed));
        let gate = self.dev_mode;
        fresh.set_provisioned(gate, now);
        // The old session's queued actions go with it (a late Persist must not write the file
        // the reset has just wiped).
        *self.cloud.borrow_mut() = fresh;
        self.cloud_gate = gate;
        *self.csr.borrow_mut() = None;
        self.device.mark_changed(cloudconf::HREF);
    }

    /// The device's discoverable links as the cloud's RD wants them: no `anchor`, no `eps`
    /// (the local endpoints mean nothing to the cloud; iotivity-lite sends neither).
    pub fn publishable_links(&mut self) -> Result<Vec<RdLink>, String> {
        let mut req = Request::new(Method::Get, RES_HREF);
        req.query.push(("if".into(), "oic.if.ll".into()));
        // Origin 0 is never a connection's id; a plain GET registers nothing anyway.
        let response = self.device.handle(&Origin::Stream(0), &req, &[]);
        if response.code != ResponseType::Content {
            return Err(format!(
                "cannot list the device's links: {}",
                response.diagnostic()
            ));
        }
        let mut links: Vec<RdLink> = from_cbor(&response.payload)
            .map_err(|e| format!("cannot read the device's links: {e}"))?;
        for l in &mut links {
            l.anchor = None;
            l.eps = None;
        }
        Ok(links)
    }
}

/// Whether the representation of `href` may go to the requester of `origin` in a batch of
/// `/oic/res`.
fn may_batch(
    conns: &HashMap<u64, Conn>,
    security: &SharedState,
    dev_mode: bool,
    origin: &Origin,
    href: &str,
    interface: Interface,
) -> bool {
    let conn = match origin {
        Origin::Stream(id) => conns.get(id),
        Origin::Udp(_) => None,
    };
    let Ok(s) = security.try_borrow() else {
        return false;
    };
    let who = match conn.map(|c| &c.kind) {
        None | Some(ConnKind::Tcp) => return dev_mode,
        Some(ConnKind::Cloud { .. }) if dev_mode => return true,
        Some(ConnKind::Cloud { identity }) => s.requester(identity.as_ref(), identity.is_some()),
        Some(ConnKind::Tls { identity, .. }) => s.requester(identity.as_ref(), true),
        Some(ConnKind::Dtls { auth, .. }) => match auth {
            SessionAuth::Psk { subject } => s.requester_psk(subject),
            SessionAuth::Certificate(identity) => s.requester(identity.as_ref(), true),
            SessionAuth::RandomPin => s.requester(None, true),
        },
    };
    s.authorize(
        &who,
        &Target::new(href).with_interface(interface.as_str()),
        Operation::Retrieve,
    )
    .is_allowed()
}

/// `GET /oic/res` in a form without representations (not `oic.if.b`).
fn is_plain_discovery(req: &Request) -> bool {
    req.method == Method::Get && req.path == RES_HREF && req.query_value("if") != Some("oic.if.b")
}

#[cfg(test)]
mod tests;
