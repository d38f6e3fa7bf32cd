//! The DTLS endpoint: CoAP over DTLS 1.2 (`coaps://`, RFC 7252 §9), which OCF's standard
//! ownership transfer methods and the sessions of an owner with a PSK need.
//!
//! - **Stack**: OpenSSL through the `openssl` crate, over our own datagram queues (the socket
//!   stays tokio's). rustls keeps coaps+tcp and the cloud: it has no DTLS, no external PSK and
//!   none of these suites.
//! - **Suites** ([`crate::dtls_context::CIPHERS`]): `TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA256` (Random PIN and owner
//!   PSK sessions), and ECDHE-ECDSA with AES-128/256-CCM and CCM_8 (Manufacturer Certificate,
//!   certificate sessions), as iotivity-lite offers them. DTLS 1.2 only, no resumption.
//! - **PSK identities** go to [`ocf::server::Server::dtls_psk`]: `oic.sec.doxm.rdp` while the
//!   Random PIN method is selected, else a credential's subject UUID (16 bytes or text).
//! - **Certificates**: the device shows the manufacturer certificate if there is one, else its
//!   self-signed one (as on coaps+tcp); a client certificate is asked for and optional, and
//!   what it is worth is decided by the access control, as on coaps+tcp.
//! - **Hostile peers**: a HelloVerifyRequest cookie (RFC 6347 §4.2.1) keyed by the peer's
//!   address, checked without keeping state ([`ocf::security::dtls_hello`]), so only a peer that
//!   receives at its address gets a session. Sessions, handshakes included, are admitted by the
//!   same [`ConnTable`] rules as the stream listeners' connections ([`LIMITS`]): caps per IPv4
//!   address or IPv6 /64 and in all, the longest idle session that is not the owner's making
//!   room for a newcomer. A handshake must end within [`LIMITS`]`.handshake`, and a session
//!   without a record for [`LIMITS`]`.idle` ends.
//! - **Retransmission**: OpenSSL resends its flight when a read finds its timer expired
//!   (`dtls1_read_failed`), so a pending handshake is driven every [`FLIGHT_POLL`].

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use coap_lite::Packet;
use ocf::coap::block;
use ocf::coap::udp::{UdpInbound, UdpMessageLayer, UdpTimeout};
use ocf::resource::Origin;
use ocf::security::doc::SessionAuth;
use ocf::security::dtls_hello::ClientHello;
use ocf::security::dtls_keys::{SessionSecrets, MASTER_SECRET_LEN};
use ocf::server::Peer;
use openssl::ssl::{ErrorCode, Ssl, SslRef, SslStream};
use rustls::pki_types::CertificateDer;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::conn::{Admission, ConnTable, Limits};
use crate::dtls_context::{set_psk_lookup, DtlsContext, Indices};
use crate::security::Credentials;
use crate::server::Agent;
use crate::udp::UDP_SZX;

/// Sessions and handshakes at once: half the stream listeners' number, since a DTLS session
/// is only needed for OCF's standard ownership transfer and an owner's PSK sessions. The
/// write deadline does not apply: a datagram is never held back by the peer.
pub const LIMITS: Limits = Limits {
    total: 32,
    per_address: 8,
    handshake: Duration::from_secs(10),
    idle: Duration::from_secs(300),
    write: Duration::from_secs(10),
};
/// How often a pending handshake gives OpenSSL the chance to resend its last flight.
pub const FLIGHT_POLL: Duration = Duration::from_millis(250);
/// Datagrams the device sends: below the IPv6 minimum MTU with room for headers.
const MTU: u32 = 1200;
/// Largest datagram read.
const MAX_DATAGRAM: usize = 1500;
/// Datagrams queued for a session before more are dropped (a flood is not buffered).
const INBOX: usize = 32;
/// Notifications remembered by Message-ID so an RST can end the right observation.
const SENT_MEMORY: usize = 64;

/// The datagrams of one session, as OpenSSL's transport: a read takes one queued datagram,
/// a write is one datagram to send.
#[derive(Default)]
struct Datagrams {
    inbox: VecDeque<Vec<u8>>,
    outbox: Vec<Vec<u8>>,
}

impl Read for Datagrams {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(d) = self.inbox.pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let n = d.len().min(buf.len());
        buf[..n].copy_from_slice(&d[..n]);
        Ok(n)
    }
}

impl Write for Datagrams {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outbox.push(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The endpoint's view of one session.
struct Handle {
    inbox: mpsc::Sender<Vec<u8>>,
    /// Its entry in the admission table.
    conn: u64,
    /// The server's connection id once the handshake is done.
    id: Rc<Cell<Option<u64>>>,
}

/// The sessions by peer address, and their admission table.
#[derive(Clone)]
struct Table {
    sessions: Rc<RefCell<HashMap<SocketAddr, Handle>>>,
    conns: Rc<RefCell<ConnTable>>,
}

impl Table {
    fn new() -> Table {
        Table {
            sessions: Rc::default(),
            conns: Rc::new(RefCell::new(ConnTable::new(LIMITS))),
        }
    }

    /// Admits a session for `peer`, closing the one the table evicts to make room; its
    /// admission id, or `None` if every place is the owner's.
    fn admit(&self, agent: &Agent, peer: SocketAddr) -> Option<u64> {
        let (conn, evict) = match self.conns.borrow_mut().admit(peer.ip(), Instant::now()) {
            Admission::Admit { id, evict } => (id, evict),
            Admission::Refuse => return None,
        };
        if let Some(evicted) = evict {
            let mut sessions = self.sessions.borrow_mut();
            let found = sessions
                .iter()
                .find(|(_, h)| h.conn == evicted)
                .map(|(a, h)| (*a, h.id.get()));
            if let Some((addr, id)) = found {
                debug!(peer = %addr, "DTLS: closing the longest idle session to make room");
                // Dropping its inbox ends the session's task.
                sessions.remove(&addr);
                if let Some(id) = id {
                    agent.disconnect(id);
                }
            }
        }
        Some(conn)
    }

    /// The session `conn` of `peer` ended.
    fn remove(&self, peer: SocketAddr, conn: u64) {
        self.conns.borrow_mut().remove(conn);
        let mut sessions = self.sessions.borrow_mut();
        // The address may already have a newer session, if this one was evicted.
        if sessions.get(&peer).is_some_and(|h| h.conn == conn) {
            sessions.remove(&peer);
        }
    }
}

/// Serves the DTLS endpoint on `socket` until shutdown.
pub async fn serve(
    socket: UdpSocket,
    agent: Rc<Agent>,
    credentials: Rc<Credentials>,
    shutdown: watch::Receiver<bool>,
) {
    let lookup = agent.clone();
    set_psk_lookup(Box::new(move |identity| {
        let mut server = lookup.server.try_borrow_mut().ok()?;
        server.dtls_psk(identity, Instant::now())
    }));
    let socket = Rc::new(socket);
    let table = Table::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (n, peer) = match received {
                    Ok(r) => r,
                    Err(e) => { debug!("dtls receive: {e}"); continue; }
                };
                dispatch(&buf[..n], peer, &socket, &agent, &credentials, &table, &shutdown);
            }
            _ = stop.changed() => return,
        }
    }
}

/// Hands a datagram to its session, or starts one for a ClientHello if there is room.
fn dispatch(
    datagram: &[u8],
    peer: SocketAddr,
    socket: &Rc<UdpSocket>,
    agent: &Rc<Agent>,
    credentials: &Credentials,
    table: &Table,
    shutdown: &watch::Receiver<bool>,
) {
    if let Some(h) = table.sessions.borrow().get(&peer) {
        // A full inbox drops the datagram: DTLS and CoAP both recover from loss.
        let _ = h.inbox.try_send(datagram.to_vec());
        return;
    }
    let di = agent.server.borrow().device().info().di.clone();
    let ctx = match credentials.dtls_context(&di) {
        Ok(c) => c,
        Err(e) => {
            warn!("DTLS: {e}");
            return;
        }
    };
    // A new session starts with a ClientHello that carries the cookie for its address; any
    // other hello is answered with a HelloVerifyRequest and forgotten.
    let Some(hello) = ClientHello::parse(datagram) else {
        return;
    };
    let cookie = ctx.cookie(&peer);
    if hello.cookie != cookie {
        let hvr = hello.hello_verify_request(&cookie);
        let socket = socket.clone();
        tokio::task::spawn_local(async move {
            let _ = socket.send_to(&hvr, peer).await;
        });
        return;
    }
    let Some(first) = hello.without_cookie() else {
        return;
    };
    let Some(conn) = table.admit(agent, peer) else {
        debug!(%peer, "DTLS: every session is the owner's; dropped");
        return;
    };
    let (tx, rx) = mpsc::channel(INBOX);
    let _ = tx.try_send(datagram.to_vec());
    let id = Rc::new(Cell::new(None));
    table.sessions.borrow_mut().insert(
        peer,
        Handle {
            inbox: tx,
            conn,
            id: id.clone(),
        },
    );
    let session = Session {
        peer,
        socket: socket.clone(),
        agent: agent.clone(),
        conns: table.conns.clone(),
        conn,
        id,
        last_active: Cell::new(Instant::now()),
    };
    let table = table.clone();
    let shutdown = shutdown.clone();
    tokio::task::spawn_local(async move {
        session.run(ctx, first, rx, shutdown).await;
        table.remove(peer, conn);
    });
}

struct Session {
    peer: SocketAddr,
    socket: Rc<UdpSocket>,
    agent: Rc<Agent>,
    conns: Rc<RefCell<ConnTable>>,
    /// Its entry in `conns`.
    conn: u64,
    /// The server's connection id once the handshake is done.
    id: Rc<Cell<Option<u64>>>,
    /// The last record in either direction (or datagram, during the handshake).
    last_active: Cell<Instant>,
}

enum End {
    Quiet,
    Notify,
}

impl Session {
    /// `first_hello`: the cookieless hello the client sent first ([`ClientHello::without_cookie`]).
    async fn run(
        &self,
        ctx: DtlsContext,
        first_hello: Vec<u8>,
        mut inbox: mpsc::Receiver<Vec<u8>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let peer = self.peer;
        let Some(mut stream) = self.start(&ctx) else {
            return;
        };
        // OpenSSL first answers the cookieless copy of the hello with the HelloVerifyRequest
        // the client already has: that one is not sent.
        stream.get_mut().inbox.push_back(first_hello);
        match stream.accept() {
            Err(e) if e.code() == ErrorCode::WANT_READ => stream.get_mut().outbox.clear(),
            _ => {
                debug!(%peer, "DTLS: OpenSSL did not take the first hello");
                return;
            }
        }
        // The handshake.
        let deadline = tokio::time::Instant::now() + LIMITS.handshake;
        loop {
            let step = stream.accept();
            self.flush(&mut stream).await;
            match step {
                Ok(()) => break,
                Err(e) if e.code() == ErrorCode::WANT_READ => {}
                Err(e) => {
                    debug!(%peer, "DTLS handshake failed: {e}");
                    return;
                }
            }
            tokio::select! {
                d = inbox.recv() => match d {
                    Some(d) => {
                        // A handshake that moves on is not the idle one to make room.
                        self.touch();
                        stream.get_mut().inbox.push_back(d);
                    }
                    None => return,
                },
                _ = tokio::time::sleep(FLIGHT_POLL) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    debug!(%peer, "DTLS handshake not finished in time; dropped");
                    return;
                }
                _ = shutdown.changed() => return,
            }
        }
        let (id, mut notifications) = self.agent.open_stream();
        let (auth, secrets, chain) = session_facts(stream.ssl(), ctx.idx);
        info!(
            connection = id,
            %peer,
            suite = stream.ssl().current_cipher().map_or("?", |c| c.name()),
            "DTLS session open"
        );
        self.agent.open_dtls(id, auth, secrets, chain);
        self.id.set(Some(id));
        self.last_active.set(Instant::now());
        self.conns
            .borrow_mut()
            .established(self.conn, self.agent.is_owner(id), Instant::now());
        let end = self
            .established(
                &mut stream,
                id,
                &mut inbox,
                &mut notifications,
                &mut shutdown,
            )
            .await;
        if let End::Notify = end {
            let _ = stream.shutdown();
            self.flush(&mut stream).await;
        }
        self.agent.close_stream(id);
        debug!(connection = id, %peer, "DTLS session closed");
    }

    /// Something moved on the session.
    fn touch(&self) {
        let now = Instant::now();
        self.last_active.set(now);
        self.conns.borrow_mut().active(self.conn, now);
    }

    fn start(&self, ctx: &DtlsContext) -> Option<SslStream<Datagrams>> {
        let mut ssl = Ssl::new(&ctx.ctx)
            .map_err(|e| warn!("DTLS session: {e}"))
            .ok()?;
        ssl.set_mtu(MTU).ok()?;
        ssl.set_ex_data(ctx.idx.peer, self.peer);
        SslStream::new(ssl, Datagrams::default())
            .map_err(|e| warn!("DTLS session: {e}"))
            .ok()
    }

    /// Sends what OpenSSL wrote.
    async fn flush(&self, stream: &mut SslStream<Datagrams>) {
        for d in std::mem::take(&mut stream.get_mut().outbox) {
            let _ = self.socket.send_to(&d, self.peer).await;
        }
    }

    /// Writes one CoAP message as one record.
    async fn send(&self, stream: &mut SslStream<Datagrams>, bytes: &[u8]) {
        if let Err(e) = stream.ssl_write(bytes) {
            debug!(peer = %self.peer, "DTLS write: {e}");
        }
        self.touch();
        self.flush(stream).await;
    }

    async fn established(
        &self,
        stream: &mut SslStream<Datagrams>,
        id: u64,
        inbox: &mut mpsc::Receiver<Vec<u8>>,
        notifications: &mut mpsc::Receiver<Packet>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> End {
        let peer = self.peer;
        let mut layer = UdpMessageLayer::new();
        let mut sent: VecDeque<(u16, Vec<u8>)> = VecDeque::new();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            // Every record the queued datagrams hold.
            loop {
                match stream.ssl_read(&mut buf) {
                    Ok(n) => {
                        self.touch();
                        match layer.handle_datagram(peer, &buf[..n], Instant::now()) {
                            UdpInbound::Request(packet) => {
                                let answer = self.agent.serve(Peer::Dtls(id), &packet);
                                // A session that took ownership is the owner's from now on.
                                if self.agent.is_owner(id) {
                                    self.conns.borrow_mut().became_owner(self.conn);
                                }
                                if let Some(mut response) = answer {
                                    block::apply_block2(&packet, &mut response, UDP_SZX);
                                    let bytes =
                                        layer.respond(peer, &packet, response, Instant::now());
                                    self.send(stream, &bytes).await;
                                }
                            }
                            UdpInbound::Reply(bytes) => self.send(stream, &bytes).await,
                            UdpInbound::Reset { message_id, .. } => {
                                if let Some(pos) = sent.iter().position(|(m, _)| *m == message_id) {
                                    if let Some((_, token)) = sent.remove(pos) {
                                        self.agent
                                            .device()
                                            .cancel_observation(&Origin::Stream(id), &token);
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                    Err(e) if e.code() == ErrorCode::WANT_READ => break,
                    Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                        self.flush(stream).await;
                        return End::Quiet;
                    }
                    Err(e) => {
                        debug!(connection = id, %peer, "DTLS read: {e}");
                        self.flush(stream).await;
                        return End::Quiet;
                    }
                }
            }
            self.flush(stream).await;
            let idle_until = self.last_active.get() + LIMITS.idle;
            tokio::select! {
                d = inbox.recv() => match d {
                    Some(d) => stream.get_mut().inbox.push_back(d),
                    None => return End::Notify,
                },
                n = notifications.recv() => match n {
                    Some(mut packet) => {
                        block::apply_block2(&Packet::new(), &mut packet, UDP_SZX);
                        let token = packet.get_token().to_vec();
                        // Confirmable, so an observer that went away is noticed
                        // (RFC 7641 §4.5); the layer retransmits and gives up.
                        let (mid, bytes) = layer.notification(peer, packet, true, Instant::now());
                        sent.push_back((mid, token));
                        if sent.len() > SENT_MEMORY { sent.pop_front(); }
                        self.send(stream, &bytes).await;
                    }
                    // The agent closed the session (ownership taken, a reset, no room).
                    None => return End::Notify,
                },
                _ = sleep_until(layer.poll_timeout()) => {
                    for due in layer.handle_timeout(Instant::now()) {
                        match due {
                            UdpTimeout::Retransmit { bytes, .. } => self.send(stream, &bytes).await,
                            UdpTimeout::GaveUp { token, .. } => {
                                debug!(connection = id, "notification never acknowledged; ending the observation");
                                self.agent.device().cancel_observation(&Origin::Stream(id), &token);
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(idle_until.into()) => {
                    debug!(connection = id, %peer, "DTLS session idle; closed");
                    return End::Notify;
                }
                _ = shutdown.changed() => return End::Notify,
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// How the handshake authenticated the peer, the secrets an owner PSK is derived from, and
/// the client's certificate chain (leaf first; empty without one).
fn session_facts(
    ssl: &SslRef,
    idx: Indices,
) -> (
    SessionAuth,
    Option<SessionSecrets>,
    Vec<CertificateDer<'static>>,
) {
    let mut chain = Vec::new();
    if let Some(leaf) = ssl.peer_certificate() {
        if let Ok(der) = leaf.to_der() {
            chain.push(CertificateDer::from(der));
        }
        // On a server, OpenSSL's peer chain does not repeat the leaf.
        for c in ssl.peer_cert_chain().into_iter().flatten() {
            if let Ok(der) = c.to_der() {
                chain.push(CertificateDer::from(der));
            }
        }
    }
    let auth = match ssl.ex_data(idx.auth) {
        Some(a) => a.clone(),
        // The identity is filled in by the agent from the chain.
        None => SessionAuth::Certificate(None),
    };
    let secrets = ssl.session().and_then(|session| {
        let mut s = SessionSecrets {
            master_secret: [0; MASTER_SECRET_LEN],
            client_random: [0; 32],
            server_random: [0; 32],
            suite: u16::from_be_bytes(ssl.current_cipher()?.protocol_id()),
        };
        (session.master_key(&mut s.master_secret) == MASTER_SECRET_LEN
            && ssl.client_random(&mut s.client_random) == 32
            && ssl.server_random(&mut s.server_random) == 32)
            .then_some(s)
    });
    (auth, secrets, chain)
}
