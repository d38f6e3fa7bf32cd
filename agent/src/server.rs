//! The agent's shared state on the single-threaded runtime: the sans-IO [`Server`] (resource
//! tree, security, maintenance and cloud states, every access rule), the way back to every
//! peer that may receive a notification, and the execution of the server's [`Event`]s.
//!
//! Every socket task hands its requests to [`Agent::serve`], which asks the server and carries
//! out what it says: files are written before the answer goes out (`security.cbor`,
//! `identity.json`), connections are closed, and the cloud link and the maintenance task are
//! woken. Nothing here decides who may do what.

use std::cell::{RefCell, RefMut};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use coap_lite::Packet;
use ocf::resource::{Device, Origin};
use ocf::security::PeerIdentity;
use ocf::server::{ConnKind, Event, Peer, Server};
use rustls::pki_types::CertificateDer;
use rustls::ServerConfig;
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, error, info, warn};

use crate::state::{atomic_write, Identity, SECURITY_FILE};
use crate::tls;

/// Notifications queued for one stream connection before it counts as stuck and is closed.
pub const STREAM_QUEUE: usize = 64;

pub struct Agent {
    pub server: RefCell<Server>,
    streams: RefCell<HashMap<u64, mpsc::Sender<Packet>>>,
    udp_v4: RefCell<Option<mpsc::Sender<(SocketAddr, Packet)>>>,
    udp_v6: RefCell<Option<mpsc::Sender<(SocketAddr, Packet)>>>,
    next_stream: RefCell<u64>,
    /// The state directory (`security.cbor`, the device name in `identity.json`).
    state_dir: PathBuf,
    /// The secure endpoint's TLS configuration (a factory reset renews its certificate).
    tls_config: RefCell<Arc<ServerConfig>>,
    /// The client certificate chains of the open secure connections, re-verified when the
    /// trust anchors change.
    tls_chains: RefCell<HashMap<u64, Vec<CertificateDer<'static>>>>,
    /// Wakes the cloud link's task (the gate opened or closed, CoAPCloudConf written).
    pub cloud_wake: Notify,
    /// Wakes the maintenance task (a factory reset or a reboot was asked for).
    pub maintenance_wake: Notify,
    /// The `di` an ownership transfer gave the device, for the task that renews the
    /// endpoints' certificates and the CSR ([`Agent::di_changes`]).
    di_changed: watch::Sender<Option<String>>,
}

impl Agent {
    pub fn new(server: Server, state_dir: PathBuf, tls_config: Arc<ServerConfig>) -> Agent {
        Agent {
            server: RefCell::new(server),
            streams: RefCell::new(HashMap::new()),
            udp_v4: RefCell::new(None),
            udp_v6: RefCell::new(None),
            next_stream: RefCell::new(1),
            state_dir,
            tls_config: RefCell::new(tls_config),
            tls_chains: RefCell::new(HashMap::new()),
            cloud_wake: Notify::new(),
            maintenance_wake: Notify::new(),
            di_changed: watch::channel(None).0,
        }
    }

    /// The `di`s ownership transfers give the device, newest last.
    pub fn di_changes(&self) -> watch::Receiver<Option<String>> {
        self.di_changed.subscribe()
    }

    /// The resource tree (borrowed from the server for the span of the use).
    pub fn device(&self) -> RefMut<'_, Device> {
        RefMut::map(self.server.borrow_mut(), Server::device_mut)
    }

    /// The state directory.
    pub fn state_dir(&self) -> &std::path::Path {
        &self.state_dir
    }

    /// The current TLS configuration of the secure endpoint.
    pub fn tls_config(&self) -> Arc<ServerConfig> {
        self.tls_config.borrow().clone()
    }

    pub fn set_tls_config(&self, config: Arc<ServerConfig>) {
        *self.tls_config.borrow_mut() = config;
    }

    /// Serves one request from `peer` through the server and carries out its events (the
    /// answer is `None` only for a multicast request that gets none).
    pub fn serve(&self, peer: Peer, packet: &Packet) -> Option<Packet> {
        let (response, events) = self
            .server
            .borrow_mut()
            .handle(peer, packet, Instant::now());
        self.execute(events);
        self.flush_notifications();
        response
    }

    /// Carries out the server's events, in order.
    pub fn execute(&self, events: Vec<Event>) {
        for event in events {
            match event {
                Event::PersistSecurityState(bytes) => {
                    let path = self.state_dir.join(SECURITY_FILE);
                    match atomic_write(&path, &bytes) {
                        Ok(()) => debug!("security state saved"),
                        Err(e) => {
                            error!("{}: cannot save the security state: {e}", path.display())
                        }
                    }
                }
                Event::NameChanged(name) => match Identity::save_name(&self.state_dir, &name) {
                    Ok(()) => info!(name = %name, "device name changed"),
                    Err(e) => warn!("cannot keep the new device name: {e}"),
                },
                Event::CloseConnections(ids) => {
                    for id in ids {
                        debug!(
                            connection = id,
                            "closing a connection opened before the device was owned"
                        );
                        self.disconnect(id);
                    }
                }
                Event::CloudMayStart | Event::CloudMustStop | Event::CloudConfChanged => {
                    self.cloud_wake.notify_one()
                }
                Event::FactoryResetRequested | Event::RebootRequested => {
                    self.maintenance_wake.notify_one()
                }
                Event::CredentialsChanged => {
                    info!("credentials changed");
                    self.reverify_chains();
                }
                Event::ShowRandomPin(pin) => crate::console::show_pin("random PIN", &pin),
                Event::DeviceIdChanged(di) => {
                    match Identity::save_di(&self.state_dir, &di) {
                        Ok(()) => {
                            info!(di = %di, "the ownership transfer gave the device a new di")
                        }
                        Err(e) => error!("cannot keep the new di: {e}"),
                    }
                    self.di_changed.send_replace(Some(di));
                }
                Event::Security(e) => match e {
                    ocf::security::SecurityEvent::OwnershipTransferred { owner_uuid } => {
                        info!(owner = %owner_uuid, "the device is owned now")
                    }
                    ocf::security::SecurityEvent::StateChanged { from, to } => {
                        info!(
                            from = from.name(),
                            to = to.name(),
                            "onboarding state changed"
                        )
                    }
                    ocf::security::SecurityEvent::AclChanged => {
                        info!("access control list changed")
                    }
                    other => debug!(event = ?other, "security event"),
                },
            }
        }
    }

    /// A secure connection `id` opened with the client's certificate chain (leaf first; empty
    /// without a client certificate).
    pub fn open_tls(&self, id: u64, chain: &[CertificateDer<'static>], exporter: Vec<u8>) {
        let anchors = self.server.borrow().trust_anchors();
        let identity = chain.first().and_then(|leaf| {
            PeerIdentity::from_certificate_der(leaf, tls::chain_verifies(chain, &anchors)).ok()
        });
        match &identity {
            Some(p) => {
                debug!(connection = id, peer = ?p.uuid, verified = p.chain_verified, "client certificate")
            }
            None => debug!(connection = id, "no client certificate"),
        }
        self.tls_chains.borrow_mut().insert(id, chain.to_vec());
        self.server
            .borrow_mut()
            .open(id, ConnKind::Tls { identity, exporter });
    }

    /// A DTLS session `id` opened: how its handshake authenticated the peer, its secrets, and
    /// the client's certificate chain (leaf first; empty without one).
    #[cfg(feature = "dtls")]
    pub fn open_dtls(
        &self,
        id: u64,
        auth: ocf::security::doc::SessionAuth,
        secrets: Option<ocf::security::dtls_keys::SessionSecrets>,
        chain: Vec<CertificateDer<'static>>,
    ) {
        use ocf::security::doc::SessionAuth;
        let auth = match auth {
            SessionAuth::Certificate(_) => {
                let anchors = self.server.borrow().trust_anchors();
                let identity = chain.first().and_then(|leaf| {
                    PeerIdentity::from_certificate_der(leaf, tls::chain_verifies(&chain, &anchors))
                        .ok()
                });
                self.tls_chains.borrow_mut().insert(id, chain);
                SessionAuth::Certificate(identity)
            }
            other => other,
        };
        debug!(connection = id, auth = ?auth, "DTLS peer");
        self.server
            .borrow_mut()
            .open(id, ConnKind::Dtls { auth, secrets });
    }

    /// Whether secure connection `id` is the owner's.
    pub fn is_owner(&self, id: u64) -> bool {
        self.server.borrow().is_owner_connection(id)
    }

    /// Recomputes whether each secure connection's certificate chains to a trust anchor.
    fn reverify_chains(&self) {
        let anchors = self.server.borrow().trust_anchors();
        let verdicts: Vec<(u64, bool)> = self
            .tls_chains
            .borrow()
            .iter()
            .map(|(id, chain)| (*id, tls::chain_verifies(chain, &anchors)))
            .collect();
        let mut server = self.server.borrow_mut();
        for (id, verified) in verdicts {
            server.set_chain_verified(id, verified);
        }
    }

    /// Registers a new stream connection; returns its id and the queue of packets to write.
    pub fn open_stream(&self) -> (u64, mpsc::Receiver<Packet>) {
        let mut next = self.next_stream.borrow_mut();
        let id = *next;
        *next += 1;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        self.streams.borrow_mut().insert(id, tx);
        (id, rx)
    }

    /// Forgets a closed stream connection and ends its observations.
    pub fn close_stream(&self, id: u64) {
        self.streams.borrow_mut().remove(&id);
        self.tls_chains.borrow_mut().remove(&id);
        let mut server = self.server.borrow_mut();
        let before = server.device().observer_count();
        server.close(id);
        let ended = before - server.device().observer_count();
        if ended > 0 {
            debug!(
                connection = id,
                "connection closed; {ended} observations ended"
            );
        }
    }

    /// Closes a stream connection: its task sees its queue end and closes the connection (then
    /// [`Agent::close_stream`] ends its observations).
    pub fn disconnect(&self, id: u64) {
        self.streams.borrow_mut().remove(&id);
    }

    /// Sets the queue of the UDP socket that writes to peers of one address family.
    pub fn set_udp(&self, v6: bool, tx: mpsc::Sender<(SocketAddr, Packet)>) {
        if v6 {
            *self.udp_v6.borrow_mut() = Some(tx);
        } else {
            *self.udp_v4.borrow_mut() = Some(tx);
        }
    }

    /// Sends every pending notification to its observer.
    pub fn flush_notifications(&self) {
        let notifications = self.server.borrow_mut().take_notifications();
        for n in notifications {
            match &n.origin {
                Origin::Stream(id) => {
                    let mut streams = self.streams.borrow_mut();
                    let Some(tx) = streams.get(id) else { continue };
                    if let Err(e) = tx.try_send(n.packet) {
                        // A peer that does not read its notifications is closed rather than
                        // buffered for without bound: dropping the sender ends its writer.
                        if matches!(e, mpsc::error::TrySendError::Full(_)) {
                            warn!(
                                connection = id,
                                "observer does not keep up; closing its connection"
                            );
                        }
                        streams.remove(id);
                        drop(streams);
                        self.device().drop_origin(&n.origin);
                    }
                }
                Origin::Udp(peer) => {
                    let slot = if peer.is_ipv6() {
                        &self.udp_v6
                    } else {
                        &self.udp_v4
                    };
                    if let Some(tx) = slot.borrow().as_ref() {
                        // UDP notifications may be lost anyway (RFC 7641 §4.5); a full queue
                        // drops this one, the next change is notified again.
                        let _ = tx.try_send((*peer, n.packet));
                    }
                }
            }
        }
    }
}
