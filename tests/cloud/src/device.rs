//! One device connection (coaps+tcp or coap+tcp): RFC 8323 framing through the shared
//! [`TcpConnection`], the device's requests through [`crate::core::Core`], and the cloud's own
//! requests to the device: discovery and observation after sign-in (hub style, OCF-PROTOCOL.md
//! §6.1), requests forwarded from the HTTP API, and the keepalive (Ping after silence, close
//! if no Pong, §7.3). A device request larger than our Max-Message-Size arrives block-wise
//! ([`crate::block1`]).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use coap_lite::option_value::OptionValueU32;
use coap_lite::{CoapOption, MessageClass, Packet, RequestType, ResponseType};
use ocf::coap::tcp_conn::{ConnEvent, TcpConnection};
use ocf::model::content::cbor_to_json;
use ocf::model::ContentFormat;
use ocf::resource::{Request, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::app::{
    code_string, method_name, now_ms, packet_path, App, Command, ConnHandle, LogEntry,
};
use crate::block1::{Block1Assembler, Block1Outcome};
use crate::core::{Effect, Session, URI_RES};

/// Our default Max-Message-Size (hub's value); `--max-message-size` sets another.
pub const MAX_MESSAGE_SIZE: u32 = 262_144;

/// Longest a write to the device may take before the connection is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(20);

/// Most requests of the cloud awaiting an answer on one connection.
const MAX_PENDING: usize = 1024;

enum PendingKind {
    Forward(oneshot::Sender<Packet>),
    Discovery,
    Batch {
        answered: bool,
    },
    Resource(String),
    /// The following block of a response or notification that came block-wise (RFC 7959
    /// §2.4, §2.6), for the request pending under `of`.
    Rest(RestOf),
}

/// A block-wise body being put together.
struct RestOf {
    /// The token of the request the body answers.
    of: Vec<u8>,
    /// The first block's response, its payload the body so far.
    first: Packet,
}

/// Largest body put together from blocks: beyond it the rest is not fetched.
const MAX_BLOCKWISE_BODY: usize = 4 * 1024 * 1024;

struct Pending {
    kind: PendingKind,
    method: &'static str,
    path: String,
    logged: bool,
    /// The request, for the GETs of the following blocks (its Uri-Path, Uri-Query, Accept).
    request: Packet,
}

struct Conn {
    app: Arc<App>,
    conn: TcpConnection,
    conn_id: u64,
    peer: SocketAddr,
    peer_di: Option<String>,
    session: Option<Session>,
    tx: mpsc::Sender<Command>,
    pending: HashMap<Vec<u8>, Pending>,
    next_token: u64,
    ping: Option<(Vec<u8>, Instant)>,
    discovered: bool,
    /// The links of the device's own `/oic/res?if=oic.if.ll`, as discovered after sign-in.
    resource_links: Vec<serde_json::Value>,
    /// Per-resource observation (fallback when the batch is not observable): the hrefs.
    per_resource: Option<HashSet<String>>,
    out: Vec<u8>,
    closing: Option<String>,
    /// The device's block-wise requests in progress (RFC 7959 §2.5).
    block1: Block1Assembler,
}

/// Serves one accepted connection until it closes. `peer_di` is the device id of the verified
/// client certificate (`None` on the plain listener).
pub async fn serve<S>(
    app: Arc<App>,
    mut stream: S,
    peer: SocketAddr,
    peer_di: Option<String>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::channel(64);
    let mut seed = [0u8; 8];
    // A fixed start is only a weaker token; it still works.
    let _ = getrandom::fill(&mut seed);
    let max_message_size = app.max_message_size();
    let mut c = Conn {
        conn_id: app.next_conn_id(),
        app,
        conn: TcpConnection::new(max_message_size),
        peer,
        peer_di,
        session: None,
        tx,
        pending: HashMap::new(),
        next_token: u64::from_be_bytes(seed),
        ping: None,
        discovered: false,
        resource_links: Vec::new(),
        per_resource: None,
        out: Vec::new(),
        closing: None,
        block1: Block1Assembler::default(),
    };
    info!(peer = %c.peer, di = c.peer_di.as_deref().unwrap_or("-"), "device connected");
    // RFC 8323 §5.3: our CSM first, without waiting for the peer's (which may never come).
    let csm = c.conn.start();
    c.out.extend(csm);
    let keepalive = c.app.keepalive;
    let mut last_rx = Instant::now();
    let mut buf = vec![0u8; 16 * 1024];
    let reason = loop {
        if !c.out.is_empty() {
            let data = std::mem::take(&mut c.out);
            let write = async {
                stream.write_all(&data).await?;
                stream.flush().await
            };
            match tokio::time::timeout(WRITE_TIMEOUT, write).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => break format!("write failed: {e}"),
                Err(_) => break "write timed out".to_owned(),
            }
        }
        if let Some(reason) = c.closing.take() {
            break reason;
        }
        let deadline = match &c.ping {
            Some((_, sent)) => *sent + keepalive,
            None => last_rx + keepalive,
        };
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) => break "closed by the device".to_owned(),
                Err(e) => break format!("read failed: {e}"),
                Ok(n) => {
                    last_rx = Instant::now();
                    c.on_bytes(&buf[..n]);
                }
            },
            cmd = rx.recv() => match cmd {
                Some(Command::Forward { packet, reply }) => {
                    c.request(packet, PendingKind::Forward(reply));
                }
                Some(Command::Close(reason)) => {
                    let release = c.conn.release(&reason);
                    c.out.extend(release);
                    c.closing = Some(reason);
                }
                None => {}
            },
            _ = tokio::time::sleep_until(deadline) => {
                if c.ping.is_some() {
                    break "no Pong to the keepalive Ping".to_owned();
                }
                let token = c.token();
                let ping = c.conn.ping(&token);
                c.out.extend(ping);
                c.ping = Some((token, Instant::now()));
                c.purge_abandoned();
            },
            _ = shutdown.changed() => {
                let release = c.conn.release("cloud shutting down");
                c.out.extend(release);
                c.closing = Some("cloud shutting down".to_owned());
            },
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
    for (_, p) in c.pending.drain() {
        if !p.logged && matches!(p.kind, PendingKind::Forward(_)) {
            c.app.log(LogEntry {
                t: now_ms(),
                di: c.session.as_ref().map(|s| s.di.clone()).unwrap_or_default(),
                method: p.method.to_owned(),
                path: p.path,
                code: "closed".to_owned(),
                from: "cloud",
            });
        }
    }
    if let Some(s) = c.session.take() {
        c.app.unregister(&s.di, c.conn_id);
    }
    info!(peer = %c.peer, "device connection closed: {reason}");
}

impl Conn {
    fn di(&self) -> String {
        self.session
            .as_ref()
            .map(|s| s.di.clone())
            .or_else(|| self.peer_di.clone())
            .unwrap_or_default()
    }

    fn token(&mut self) -> Vec<u8> {
        self.next_token = self.next_token.wrapping_add(1);
        // 8 bytes: never a frame under six bytes (OCF-PROTOCOL.md §7.7).
        self.next_token.to_be_bytes().to_vec()
    }

    fn push_packet(&mut self, packet: &Packet) {
        match self.conn.encode(packet) {
            Ok(bytes) => self.out.extend(bytes),
            Err(e) => match ocf::coap::tcp::encode(packet) {
                // The peer announced no CSM (1152 bytes assumed) or a small one: send anyway,
                // as hub does, rather than fail the exchange.
                Ok(bytes) => {
                    debug!("sending a message over the peer's Max-Message-Size: {e:?}");
                    self.out.extend(bytes);
                }
                Err(e) => warn!("cannot encode a message: {e:?}"),
            },
        }
    }

    fn on_bytes(&mut self, bytes: &[u8]) {
        for event in self.conn.receive(bytes) {
            match event {
                ConnEvent::Message(p) => self.on_message(p),
                ConnEvent::Transmit(b) => self.out.extend(b),
                ConnEvent::Pong { token } => {
                    if self.ping.as_ref().is_some_and(|(t, _)| *t == token) {
                        self.ping = None;
                    }
                }
                ConnEvent::Close { reason } => {
                    self.closing = Some(reason);
                    return;
                }
            }
            if self.closing.is_some() {
                return;
            }
        }
    }

    fn on_message(&mut self, p: Packet) {
        match p.header.code {
            MessageClass::Request(_) => self.on_request(p),
            MessageClass::Response(_) => self.on_response(p),
            _ => {}
        }
    }

    fn on_request(&mut self, p: Packet) {
        let token = p.get_token().to_vec();
        let method = method_name(p.header.code);
        let path = packet_path(&p);
        let (p, last_block) = match self.block1.accept(p) {
            Block1Outcome::Whole { request, last } => (request, last),
            Block1Outcome::Reply(reply) => {
                let code = code_string(reply.header.code);
                debug!(di = %self.di(), method, %path, %code, "device request block");
                if reply.header.code != MessageClass::Response(ResponseType::Continue) {
                    self.app.log(LogEntry {
                        t: now_ms(),
                        di: self.di(),
                        method: method.to_owned(),
                        path,
                        code,
                        from: "device",
                    });
                }
                self.push_packet(&reply);
                return;
            }
        };
        let (response, effect, close, di) = match Request::from_packet(&p) {
            Err(resp) => (resp, Effect::None, false, self.di()),
            Ok(req) => {
                let o = self.app.core.handle(
                    self.peer_di.as_deref(),
                    self.session.as_ref(),
                    &req,
                    now_ms(),
                );
                let di = o.di.unwrap_or_else(|| self.di());
                (o.response, o.effect, o.close, di)
            }
        };
        let code = code_string(MessageClass::Response(response.code));
        debug!(%di, method, %path, %code, "device request");
        // A sign-up answered 2.04: plgd's `deviceRegistered` event.
        let signed_up = (method == "POST"
            && path == crate::core::URI_ACCOUNT
            && response.code == ResponseType::Changed)
            .then(|| di.clone());
        self.app.log(LogEntry {
            t: now_ms(),
            di,
            method: method.to_owned(),
            path: path.clone(),
            code,
            from: "device",
        });
        let mut packet = response_packet(&response, &token);
        if let Some(block) = last_block {
            // RFC 7959 §2.3: the final response echoes the last block.
            packet.add_option(CoapOption::Block1, block.encode());
        }
        self.push_packet(&packet);
        if let Some(di) = signed_up {
            self.app.device_registered(&di);
        }
        self.apply(effect);
        if close && self.closing.is_none() {
            self.closing = Some(format!(
                "{} {path} answered {}",
                method,
                code_string(MessageClass::Response(response.code))
            ));
        }
    }

    fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::None => {}
            Effect::SignedIn(s) => {
                if let Some(old) = self.session.take() {
                    if old.di != s.di {
                        self.app.unregister(&old.di, self.conn_id);
                    }
                }
                let handle = ConnHandle {
                    conn_id: self.conn_id,
                    uid: s.uid.clone(),
                    tx: self.tx.clone(),
                };
                if let Some(old) = self.app.register(&s.di, handle) {
                    let _ = old
                        .tx
                        .try_send(Command::Close("replaced by a new connection".into()));
                }
                info!(di = %s.di, uid = %s.uid, "device signed in");
                self.session = Some(s);
                if !self.discovered {
                    self.discovered = true;
                    self.start_discovery();
                }
            }
            Effect::SignedOut => {
                if let Some(s) = self.session.take() {
                    info!(di = %s.di, "device signed out");
                    self.app.unregister(&s.di, self.conn_id);
                }
            }
            Effect::Published(hrefs) => {
                self.app.links_published(&self.di(), &hrefs);
                if self.per_resource.is_some() {
                    for href in hrefs {
                        self.observe_resource(href);
                    }
                }
            }
            Effect::Unpublished(hrefs) => {
                let di = self.di();
                self.app.links_unpublished(&di, &hrefs);
                for href in &hrefs {
                    self.app.remove_rep(&di, href);
                    if let Some(set) = &mut self.per_resource {
                        set.remove(href);
                    }
                }
                self.pending.retain(
                    |_, p| !matches!(&p.kind, PendingKind::Resource(h) if hrefs.contains(h)),
                );
            }
            Effect::Deregistered(di) => {
                info!(%di, "device deregistered");
                self.app.remove_device_reps(&di);
                if let Some(s) = self.session.take() {
                    self.app.unregister(&s.di, self.conn_id);
                }
            }
        }
    }

    /// Sends a request of the cloud to the device; returns its token.
    fn request(&mut self, mut packet: Packet, kind: PendingKind) -> Option<Vec<u8>> {
        if self.pending.len() >= MAX_PENDING {
            self.purge_abandoned();
            if self.pending.len() >= MAX_PENDING {
                warn!(di = %self.di(), "too many requests in flight; dropping one");
                return None; // a Forward's reply sender drops: the HTTP side sees "closed"
            }
        }
        let token = self.token();
        packet.set_token(token.clone());
        let pending = Pending {
            kind,
            method: method_name(packet.header.code),
            path: packet_path(&packet),
            logged: false,
            request: packet.clone(),
        };
        self.pending.insert(token.clone(), pending);
        self.push_packet(&packet);
        Some(token)
    }

    /// Forwarded requests whose HTTP client gave up: logged as timeouts and forgotten.
    fn purge_abandoned(&mut self) {
        let di = self.di();
        let app = self.app.clone();
        self.pending.retain(|_, p| match &p.kind {
            PendingKind::Forward(reply) if reply.is_closed() => {
                if !p.logged {
                    app.log(LogEntry {
                        t: now_ms(),
                        di: di.clone(),
                        method: p.method.to_owned(),
                        path: p.path.clone(),
                        code: "timeout".to_owned(),
                        from: "cloud",
                    });
                }
                false
            }
            _ => true,
        });
    }

    fn start_discovery(&mut self) {
        let p = get_packet(URI_RES, &["if=oic.if.ll"], false);
        self.request(p, PendingKind::Discovery);
    }

    fn start_batch_observe(&mut self) {
        let p = get_packet(URI_RES, &["if=oic.if.b"], true);
        self.request(p, PendingKind::Batch { answered: false });
    }

    fn start_per_resource(&mut self) {
        if self.per_resource.is_some() {
            return;
        }
        self.per_resource = Some(HashSet::new());
        let di = self.di();
        let mut hrefs: Vec<String> = match self.app.core.store.links(&di) {
            Ok(links) => links.into_iter().map(|l| l.href).collect(),
            Err(e) => {
                warn!("{e}");
                Vec::new()
            }
        };
        if hrefs.is_empty() {
            // Nothing published (yet): observe what the device's own /oic/res marks
            // observable. Whatever it publishes later is observed then.
            hrefs = self
                .resource_links
                .iter()
                .filter(|l| l["p"]["bm"].as_u64().is_some_and(|bm| bm & 2 != 0))
                .filter_map(|l| l["href"].as_str().map(local_href))
                .collect();
        }
        debug!(%di, n = hrefs.len(), "batch observation unavailable: observing each resource");
        for href in hrefs {
            self.observe_resource(href);
        }
    }

    fn observe_resource(&mut self, href: String) {
        if href == URI_RES {
            return;
        }
        let Some(set) = &mut self.per_resource else {
            return;
        };
        if !set.insert(href.clone()) {
            return;
        }
        let p = get_packet(&href, &[], true);
        self.request(p, PendingKind::Resource(href));
    }

    fn on_response(&mut self, p: Packet) {
        let Some(p) = self.reassemble(p) else {
            return;
        };
        let token = p.get_token().to_vec();
        let di = self.di();
        let Some(entry) = self.pending.get_mut(&token) else {
            return; // a late answer or a cancelled observation
        };
        let code = match p.header.code {
            MessageClass::Response(c) => c,
            _ => return,
        };
        if !entry.logged {
            entry.logged = true;
            self.app.log(LogEntry {
                t: now_ms(),
                di: di.clone(),
                method: entry.method.to_owned(),
                path: entry.path.clone(),
                code: code_string(p.header.code),
                from: "cloud",
            });
        }
        let observing = p.get_first_option(CoapOption::Observe).is_some();
        let success = matches!(code, ResponseType::Content | ResponseType::Valid);
        match &mut entry.kind {
            PendingKind::Forward(_) => {
                if let Some(Pending {
                    kind: PendingKind::Forward(reply),
                    ..
                }) = self.pending.remove(&token)
                {
                    let _ = reply.send(p);
                }
            }
            PendingKind::Discovery => {
                self.pending.remove(&token);
                if code == ResponseType::Content {
                    if let Some(serde_json::Value::Array(links)) = rep_json(&p) {
                        debug!(%di, links = links.len(), "discovered the device");
                        self.resource_links = links;
                    }
                } else {
                    debug!(%di, code = %code_string(p.header.code), "discovery failed");
                }
                self.start_batch_observe();
            }
            PendingKind::Batch { answered } => {
                let first = !*answered;
                *answered = true;
                if code == ResponseType::Content {
                    if let Some(items) = rep_json(&p) {
                        self.apply_batch(&di, items);
                    }
                }
                if !(success && observing) {
                    self.pending.remove(&token);
                    if first {
                        self.start_per_resource();
                    }
                }
            }
            // Put together in `reassemble`, never handed on.
            PendingKind::Rest(_) => {}
            PendingKind::Resource(href) => {
                let href = href.clone();
                if code == ResponseType::Content {
                    if let Some(rep) = rep_json(&p) {
                        self.app.update_rep(&di, &href, rep);
                    }
                } else if code == ResponseType::NotFound {
                    self.app.remove_rep(&di, &href);
                }
                if !(success && observing) {
                    self.pending.remove(&token);
                }
            }
        }
    }

    /// Puts a block-wise body together (RFC 7959 §2.4): a first block with more to come is kept
    /// and the next one asked for with a GET of the same resource (for a notification too,
    /// §2.6); the whole body comes back under the original request's token once the last block
    /// is in. A response in one piece passes through.
    fn reassemble(&mut self, p: Packet) -> Option<Packet> {
        let token = p.get_token().to_vec();
        let block = p
            .get_first_option(CoapOption::Block2)
            .and_then(|b| ocf::coap::block::Block::decode(b));
        let continuing = matches!(
            self.pending.get(&token),
            Some(Pending {
                kind: PendingKind::Rest(_),
                ..
            })
        );
        let (of, mut first) = if continuing {
            let Some(Pending {
                kind: PendingKind::Rest(rest),
                ..
            }) = self.pending.remove(&token)
            else {
                return None;
            };
            let mut first = rest.first;
            let expected = first.payload.len();
            match block {
                Some(b) if (b.num as usize).checked_mul(b.size()) == Some(expected) => {
                    first.payload.extend_from_slice(&p.payload)
                }
                // An error, or a block that does not follow: the body is given up on.
                _ => {
                    warn!(di = %self.di(), "a block-wise body broke off; dropping it");
                    self.pending.remove(&rest.of);
                    return None;
                }
            }
            (rest.of, first)
        } else {
            match block {
                Some(b) if b.more && b.num == 0 => (token, p),
                _ => return Some(p),
            }
        };
        let more = block.is_some_and(|b| b.more);
        if !more {
            first.set_token(of);
            first.clear_option(CoapOption::Block2);
            return Some(first);
        }
        let Some(original) = self.pending.get(&of) else {
            return None; // the request was given up meanwhile
        };
        let b = block.unwrap_or(ocf::coap::block::Block {
            num: 0,
            more: true,
            szx: 6,
        });
        if first.payload.len() + b.size() > MAX_BLOCKWISE_BODY {
            warn!(di = %self.di(), "a block-wise body larger than {MAX_BLOCKWISE_BODY} bytes; dropping it");
            self.pending.remove(&of);
            return None;
        }
        let mut next = Packet::new();
        next.header.code = MessageClass::Request(RequestType::Get);
        for number in [
            CoapOption::UriPath,
            CoapOption::UriQuery,
            CoapOption::Accept,
        ] {
            if let Some(values) = original.request.get_option(number) {
                for v in values {
                    next.add_option(number, v.clone());
                }
            }
        }
        next.add_option(
            CoapOption::Block2,
            ocf::coap::block::Block {
                num: (first.payload.len() / b.size()) as u32,
                more: false,
                szx: b.szx,
            }
            .encode(),
        );
        // The following blocks belong to the exchange already in the request log.
        if let Some(token) = self.request(next, PendingKind::Rest(RestOf { of, first })) {
            if let Some(rest) = self.pending.get_mut(&token) {
                rest.logged = true;
            }
        }
        None
    }

    /// A batch representation: `[{"href", "rep"}]`, href `/path` or `ocf://<di>/path`.
    fn apply_batch(&mut self, di: &str, items: serde_json::Value) {
        let serde_json::Value::Array(items) = items else {
            return;
        };
        for item in items {
            let Some(href) = item.get("href").and_then(|h| h.as_str()) else {
                continue;
            };
            let href = local_href(href);
            match item.get("rep") {
                Some(rep) if rep.as_object().is_some_and(|o| !o.is_empty()) => {
                    if href == "/oic/d" {
                        if let Some(n) = rep.get("n").and_then(|n| n.as_str()) {
                            if let Ok(Some(d)) = self.app.core.store.device(di) {
                                if d.name != n {
                                    let _ = self.app.core.store.set_name(di, n);
                                }
                            }
                        }
                    }
                    self.app.update_rep(di, &href, rep.clone());
                }
                // An empty rep means the resource is gone (pdev).
                _ => self.app.remove_rep(di, &href),
            }
        }
    }
}

/// `ocf://<di>/path` → `/path`; `/path` unchanged.
pub fn local_href(href: &str) -> String {
    match href.strip_prefix("ocf://") {
        Some(rest) => match rest.find('/') {
            Some(i) => rest[i..].to_owned(),
            None => "/".to_owned(),
        },
        None => href.to_owned(),
    }
}

/// A GET as hub sends it: Accept 10000, no OCF version options; Observe 0 if `observe`.
fn get_packet(href: &str, query: &[&str], observe: bool) -> Packet {
    let mut p = Packet::new();
    p.header.code = MessageClass::Request(RequestType::Get);
    for seg in href.split('/').filter(|s| !s.is_empty()) {
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    if observe {
        p.add_option(CoapOption::Observe, Vec::new());
    }
    for q in query {
        p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
    }
    p.add_option_as(
        CoapOption::Accept,
        OptionValueU32(u32::from(ContentFormat::OCF_CBOR_NUMBER)),
    );
    p
}

/// A response packet as hub sends it: no OCF version options.
pub fn response_packet(r: &Response, token: &[u8]) -> Packet {
    let mut p = Packet::new();
    p.header.code = MessageClass::Response(r.code);
    p.set_token(token.to_vec());
    if let Some(cf) = r.content_format {
        p.add_option_as(CoapOption::ContentFormat, OptionValueU32(u32::from(cf)));
    }
    p.payload = r.payload.clone();
    p
}

/// The JSON form of a response body (CBOR 10000/60, or JSON 50); `None` when empty or
/// undecodable.
pub fn rep_json(p: &Packet) -> Option<serde_json::Value> {
    if p.payload.is_empty() {
        return None;
    }
    let cf = ocf::cloud::payload::content_format(p);
    match cf {
        None | Some(ContentFormat::OCF_CBOR_NUMBER) | Some(ContentFormat::CBOR_NUMBER) => {
            let v = ocf::model::decode_payload(ContentFormat::Cbor, &p.payload).ok()?;
            cbor_to_json(&v).ok()
        }
        Some(ContentFormat::JSON_NUMBER) => serde_json::from_slice(&p.payload).ok(),
        Some(_) => None,
    }
}
