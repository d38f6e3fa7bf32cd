//! [`CloudLink`]: the whole connection to the cloud as one sans-IO object (bytes in, bytes
//! out, [`CloudLink::poll_timeout`]), the quinn-proto shape of DESIGN.md §6.
//!
//! It owns the RFC 8323 framing of the current connection ([`TcpConnection`]) and drives the
//! [`CloudSession`] it shares with [`crate::server::Server`] ([`SharedSession`]: CoAPCloudConf
//! writes reach the session through the server). The daemon only moves bytes and executes
//! [`Output`]s; every protocol decision is taken here:
//!
//! - **Connection start**: [`CloudLink::connected`] emits our CSM first (RFC 8323 §5.3), then
//!   the session signs up or in.
//! - **Framing**: Pongs are answered by [`TcpConnection`]; a bad frame is answered with an Abort
//!   and the connection is closed (§5.6); a Release or Abort from the cloud closes it (§5.5).
//!   The session hears of every such loss ([`CloudSession::handle_disconnected`]) and schedules
//!   the reconnect.
//! - **Keepalive**: the session's Pings go out, Pongs come back to it; missing Pongs make the
//!   session disconnect (OCF-PROTOCOL.md §7.3).
//! - **Requests the cloud forwards** come out as [`Output::Request`]; the daemon serves them
//!   through [`crate::server::Server::handle`] and hands the answer back with
//!   [`CloudLink::respond`], which fits it with Block2 to the cloud's Max-Message-Size
//!   (RFC 7959 §2.2, RFC 8323 §5.3.1). Notifications ([`CloudLink::notify`]) are fitted the
//!   same way: one larger than the cloud takes goes out as its first block (RFC 7959 §2.6).
//! - **Large requests to the cloud** (a publish of many links) that exceed the cloud's
//!   Max-Message-Size go out block-wise with Block1 (RFC 7959 §2.5): blocks sized to the CSM's
//!   limit, all with the request's token (plgd's go-coap keys its reassembly by token), each
//!   after the 2.31 Continue of the one before. The final response answers the session's
//!   request; a 4.13 or any other final response ends the transfer early and goes to the
//!   session like any answer. A 2.31 that does not acknowledge the block in flight ends it too,
//!   and the session's request timeout takes over.
//! - **Unsolicited responses** are ignored (RFC 7252 §5.3.2 would reset them; TCP has no RST).

use std::collections::VecDeque;
use std::fmt;
use std::time::Instant;

use coap_lite::{CoapOption, MessageClass, Packet, ResponseType};

use super::resource::SharedSession;
use super::session::{Action, ConnectError, SessionEvent};
use crate::coap::block::{szx_for, Block};
use crate::coap::tcp::FrameError;
use crate::coap::tcp_conn::{ConnEvent, TcpConnection};

/// The largest block number a Block1 option can carry (20 bits, RFC 7959 §2.2).
const MAX_BLOCK_NUM: u32 = (1 << 20) - 1;
/// Block-wise requests kept per connection. The session has at most two requests in flight;
/// a transfer it gave up on without closing the connection is forgotten beyond this.
const MAX_UPLOADS: usize = 4;

/// What the daemon must do, in order. Drain with [`CloudLink::poll_output`] after every input.
pub enum Output {
    /// Open a connection to `uri` and accept the cloud only with certificate CN `uuid:<sid>`
    /// (OCF-PROTOCOL.md §8.3). Report [`CloudLink::connected`] or
    /// [`CloudLink::connect_failed`]. Any connection or attempt still open is dropped first.
    Connect {
        /// The cloud URI (`cis`).
        uri: String,
        /// The expected cloud UUID.
        sid: String,
    },
    /// Write these bytes to the connection; a failure is [`CloudLink::transport_lost`].
    Transmit(Vec<u8>),
    /// Drop the connection (or the connect attempt): write `release` first, if any and the
    /// socket still takes it (RFC 8323 §5.5), then close. Nothing is to be reported back.
    Close {
        /// A Release to write before closing; `None` when the connection is broken.
        release: Option<Vec<u8>>,
        /// Why, for the log.
        reason: CloseReason,
    },
    /// A request the cloud forwarded: serve it and hand the answer to [`CloudLink::respond`]
    /// before polling again, so that it goes out in order (RFC 8323 §5.4, Custody).
    Request(Packet),
    /// A message could not be framed and was dropped: for the log.
    Undeliverable {
        /// What it was.
        what: &'static str,
        /// Why.
        error: String,
    },
    /// What the session reports (state to persist, status, milestones).
    Session(SessionEvent),
}

/// Why the link closes a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The session asked (signed out, deregistered, keepalive or request timeout, gate closed).
    Requested,
    /// The session connects again, to the same or another server.
    Reconnecting,
    /// The session was replaced by a fresh one (factory reset): the connection belongs to the
    /// old identity.
    SessionReplaced,
    /// The cloud did not take its notifications in time: its observations are gone, so the
    /// connection starts over and the cloud observes anew.
    ObserverTooSlow,
    /// The cloud released or aborted the connection, or broke the framing (then it got an
    /// Abort, RFC 8323 §5.6).
    Peer(String),
    /// The daemon stops.
    ShuttingDown,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Requested => f.write_str("closing"),
            Self::Reconnecting => f.write_str("reconnecting"),
            Self::SessionReplaced => f.write_str("factory reset"),
            Self::ObserverTooSlow => f.write_str("observer too slow"),
            Self::Peer(reason) => write!(f, "closed by the cloud: {reason}"),
            Self::ShuttingDown => f.write_str("shutting down"),
        }
    }
}

impl fmt::Debug for Output {
    /// Shows sizes, never bytes: requests and their framing may carry tokens.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect { uri, sid } => f
                .debug_struct("Connect")
                .field("uri", uri)
                .field("sid", sid)
                .finish(),
            Self::Transmit(b) => f.debug_tuple("Transmit").field(&b.len()).finish(),
            Self::Close { release, reason } => f
                .debug_struct("Close")
                .field("release", &release.is_some())
                .field("reason", reason)
                .finish(),
            Self::Request(p) => f
                .debug_struct("Request")
                .field("code", &p.header.code.to_string())
                .field("payload_len", &p.payload.len())
                .finish(),
            Self::Undeliverable { what, error } => f
                .debug_struct("Undeliverable")
                .field("what", what)
                .field("error", error)
                .finish(),
            Self::Session(e) => e.fmt(f),
        }
    }
}

/// A request going out block-wise (RFC 7959 §2.5).
#[derive(Debug)]
struct Upload {
    /// The whole request; every block copies its options and token.
    request: Packet,
    /// Block size exponent, the cloud may lower it in a 2.31 (RFC 7959 §2.5).
    szx: u8,
    /// Number of the block in flight, in `szx` units.
    num: u32,
    /// Byte range of the block in flight.
    start: usize,
    end: usize,
}

impl Upload {
    fn token(&self) -> &[u8] {
        self.request.get_token()
    }

    /// The block in flight as a message: the request's header, token and options.
    fn block(&mut self) -> Packet {
        let body = std::mem::take(&mut self.request.payload);
        let mut p = self.request.clone();
        self.request.payload = body;
        let total = self.request.payload.len();
        p.payload = self.request.payload[self.start..self.end].to_vec();
        let more = self.end < total;
        p.add_option(
            CoapOption::Block1,
            Block {
                num: self.num,
                more,
                szx: self.szx,
            }
            .encode(),
        );
        if self.num == 0 {
            // RFC 7959 §4: the size of the whole body, so the cloud can refuse it at once.
            p.add_option_as(
                CoapOption::Size1,
                coap_lite::option_value::OptionValueU32(u32::try_from(total).unwrap_or(u32::MAX)),
            );
        }
        p
    }

    /// Moves to the block at byte `start` (a multiple of the block size); `None` when it cannot
    /// be numbered.
    fn seek(&mut self, start: usize) -> Option<()> {
        let size = Block {
            num: 0,
            more: false,
            szx: self.szx,
        }
        .size();
        let num = u32::try_from(start / size).ok()?;
        if num > MAX_BLOCK_NUM {
            return None;
        }
        self.num = num;
        self.start = start;
        self.end = start.checked_add(size)?.min(self.request.payload.len());
        Some(())
    }
}

/// The current connection.
#[derive(Debug)]
struct Connection {
    tcp: TcpConnection,
    uploads: Vec<Upload>,
}

/// The connection to the cloud, sans-IO. See the module documentation.
pub struct CloudLink {
    session: SharedSession,
    max_message_size: u32,
    conn: Option<Connection>,
    outputs: VecDeque<Output>,
}

impl fmt::Debug for CloudLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudLink")
            .field("connected", &self.conn.is_some())
            .field("queued_outputs", &self.outputs.len())
            .finish()
    }
}

impl CloudLink {
    /// A link driving `session`, accepting messages up to `max_message_size` bytes from the
    /// cloud (announced in our CSM).
    pub fn new(session: SharedSession, max_message_size: u32) -> CloudLink {
        CloudLink {
            session,
            max_message_size,
            conn: None,
            outputs: VecDeque::new(),
        }
    }

    /// The session this link drives.
    pub fn session(&self) -> &SharedSession {
        &self.session
    }

    /// Whether a connection is up.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// The cloud's Max-Message-Size on the current connection (1152 until its CSM).
    pub fn peer_max_message_size(&self) -> Option<u32> {
        self.conn.as_ref().map(|c| c.tcp.peer_max_message_size())
    }

    /// The connection asked for by [`Output::Connect`] is up (TLS verified): our CSM goes out
    /// first (RFC 8323 §5.3), then whatever the session sends.
    pub fn connected(&mut self, now: Instant) {
        self.drop_connection();
        let mut tcp = TcpConnection::new(self.max_message_size);
        self.outputs.push_back(Output::Transmit(tcp.start()));
        self.conn = Some(Connection {
            tcp,
            uploads: Vec::new(),
        });
        self.session.borrow_mut().handle_connected(now);
    }

    /// The connect attempt failed.
    pub fn connect_failed(&mut self, error: ConnectError, now: Instant) {
        self.session.borrow_mut().handle_connect_failed(error, now);
    }

    /// The transport ended on its own: end of stream, a read or write error, a write that did
    /// not complete in time. The daemon has closed the socket already.
    pub fn transport_lost(&mut self, now: Instant) {
        if self.drop_connection() {
            self.session.borrow_mut().handle_disconnected(now);
        }
    }

    /// The daemon gave up queueing notifications for this connection (the cloud does not read
    /// them): close it, and let the cloud observe anew on the next one.
    pub fn notifications_overflowed(&mut self, now: Instant) {
        let release = self.release("observer too slow");
        if self.drop_connection() {
            self.outputs.push_back(Output::Close {
                release,
                reason: CloseReason::ObserverTooSlow,
            });
            self.session.borrow_mut().handle_disconnected(now);
        }
    }

    /// The session was replaced in place by a fresh one (a factory reset): whatever connection
    /// or attempt is open belongs to the old identity and is closed.
    pub fn session_replaced(&mut self) {
        let release = self.release("factory reset");
        self.drop_connection();
        self.outputs.push_back(Output::Close {
            release,
            reason: CloseReason::SessionReplaced,
        });
    }

    /// The daemon stops: the connection is released (RFC 8323 §5.5). The session is left as it
    /// is; what it persisted is what the next start resumes from.
    pub fn shut_down(&mut self) {
        let release = self.release("shutting down");
        if self.drop_connection() {
            self.outputs.push_back(Output::Close {
                release,
                reason: CloseReason::ShuttingDown,
            });
        }
    }

    /// Bytes read from the connection.
    pub fn receive(&mut self, bytes: &[u8], now: Instant) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let events = conn.tcp.receive(bytes);
        self.session.borrow_mut().handle_received(now);
        for event in events {
            match event {
                ConnEvent::Message(packet) => match packet.header.code {
                    MessageClass::Request(_) => self.outputs.push_back(Output::Request(packet)),
                    MessageClass::Response(_) => self.on_response(packet, now),
                    _ => {}
                },
                ConnEvent::Transmit(bytes) => self.outputs.push_back(Output::Transmit(bytes)),
                ConnEvent::Pong { token } => {
                    self.session.borrow_mut().handle_pong(&token, now);
                }
                ConnEvent::Close { reason } => {
                    // An Abort we owe the cloud is already queued before this.
                    self.conn = None;
                    self.outputs.push_back(Output::Close {
                        release: None,
                        reason: CloseReason::Peer(reason),
                    });
                    self.session.borrow_mut().handle_disconnected(now);
                    return;
                }
            }
        }
    }

    /// The answer the server gave to `request` (an [`Output::Request`]): fitted with Block2 to
    /// the cloud's Max-Message-Size (RFC 7959 §2.2) and sent before anything queued since.
    pub fn respond(&mut self, request: &Packet, mut response: Packet) {
        let Some(conn) = self.conn.as_ref() else {
            return;
        };
        conn.tcp.fit(request, &mut response);
        match conn.tcp.encode(&response) {
            Ok(bytes) => self.outputs.push_front(Output::Transmit(bytes)),
            Err(e) => self.outputs.push_front(Output::Undeliverable {
                what: "a response",
                error: e.to_string(),
            }),
        }
    }

    /// A notification for one of the cloud's observations: one larger than the cloud takes
    /// goes out as its first block, the cloud fetches the rest (RFC 7959 §2.6).
    pub fn notify(&mut self, mut notification: Packet) {
        let Some(conn) = self.conn.as_ref() else {
            return;
        };
        conn.tcp.fit(&Packet::new(), &mut notification);
        let output = match conn.tcp.encode(&notification) {
            Ok(bytes) => Output::Transmit(bytes),
            Err(e) => Output::Undeliverable {
                what: "a notification",
                error: e.to_string(),
            },
        };
        self.outputs.push_back(output);
    }

    /// Timers (the session's: back-off, connect and request timeouts, keepalive, refresh).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.session.borrow_mut().handle_timeout(now);
    }

    /// When [`CloudLink::handle_timeout`] must be called next, if at all.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.session.borrow().poll_timeout()
    }

    /// The next thing for the daemon to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        loop {
            if let Some(output) = self.outputs.pop_front() {
                return Some(output);
            }
            let action = self.session.borrow_mut().poll_action()?;
            self.execute(action);
        }
    }

    fn execute(&mut self, action: Action) {
        let output = match action {
            Action::Connect { uri, sid } => {
                if let Some(release) = self.release("reconnecting") {
                    self.drop_connection();
                    self.outputs.push_back(Output::Close {
                        release: Some(release),
                        reason: CloseReason::Reconnecting,
                    });
                }
                Output::Connect { uri, sid }
            }
            Action::Disconnect => {
                let release = self.release("closing");
                self.drop_connection();
                Output::Close {
                    release,
                    reason: CloseReason::Requested,
                }
            }
            Action::Send(packet) => return self.send(packet),
            Action::SendPing { token } => match &self.conn {
                Some(conn) => Output::Transmit(conn.tcp.ping(&token)),
                None => return,
            },
            Action::Event(event) => Output::Session(event),
        };
        self.outputs.push_back(output);
    }

    /// A request of the session: in one message, or block-wise when the cloud's
    /// Max-Message-Size is smaller (RFC 7959 §2.5, RFC 8323 §5.3.1).
    fn send(&mut self, request: Packet) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let output = match conn.tcp.encode(&request) {
            Ok(bytes) => Output::Transmit(bytes),
            Err(FrameError::TooLarge { .. }) => {
                let szx = szx_for(usize::try_from(conn.tcp.peer_max_message_size()).unwrap_or(0));
                let mut upload = Upload {
                    request,
                    szx,
                    num: 0,
                    start: 0,
                    end: 0,
                };
                match upload.seek(0).map(|()| conn.tcp.encode(&upload.block())) {
                    Some(Ok(bytes)) => {
                        if conn.uploads.len() >= MAX_UPLOADS {
                            conn.uploads.remove(0);
                        }
                        conn.uploads.push(upload);
                        Output::Transmit(bytes)
                    }
                    Some(Err(e)) => undeliverable_request(e.to_string()),
                    None => undeliverable_request("too large for block-wise transfer".into()),
                }
            }
            Err(e) => undeliverable_request(e.to_string()),
        };
        self.outputs.push_back(output);
    }

    /// A response from the cloud: the next block of a block-wise request after a 2.31, else an
    /// answer for the session.
    fn on_response(&mut self, response: Packet, now: Instant) {
        if let Some(conn) = self.conn.as_mut() {
            let token = response.get_token();
            if let Some(i) = conn.uploads.iter().position(|u| u.token() == token) {
                if response.header.code != MessageClass::Response(ResponseType::Continue) {
                    // The final response, or an early error (4.13, 4.08, ...): the transfer is
                    // over and the session gets the answer (RFC 7959 §2.5, §2.9).
                    conn.uploads.remove(i);
                } else {
                    let upload = &mut conn.uploads[i];
                    let output = match next_block(upload, &response) {
                        Ok(()) => match conn.tcp.encode(&upload.block()) {
                            Ok(bytes) => Output::Transmit(bytes),
                            Err(e) => {
                                conn.uploads.remove(i);
                                undeliverable_request(e.to_string())
                            }
                        },
                        Err(why) => {
                            conn.uploads.remove(i);
                            undeliverable_request(why)
                        }
                    };
                    self.outputs.push_back(output);
                    // A 2.31 answers a block, never the request.
                    return;
                }
            }
        }
        // False for an unsolicited response: nothing to do with it.
        let _ = self.session.borrow_mut().handle_response(&response, now);
    }

    /// A Release for the current connection, if it is still healthy.
    fn release(&self, reason: &str) -> Option<Vec<u8>> {
        self.conn
            .as_ref()
            .filter(|c| !c.tcp.is_closed())
            .map(|c| c.tcp.release(reason))
    }

    /// Forgets the current connection and what was queued for it. Returns whether there was
    /// one.
    fn drop_connection(&mut self) -> bool {
        if self.conn.take().is_none() {
            return false;
        }
        self.outputs
            .retain(|o| !matches!(o, Output::Transmit(_) | Output::Request(_)));
        true
    }
}

fn undeliverable_request(error: String) -> Output {
    Output::Undeliverable {
        what: "a request",
        error,
    }
}

/// Moves `upload` past the block a 2.31 Continue acknowledges (RFC 7959 §2.5): the cloud may
/// ask for smaller blocks from now on, never larger ones.
fn next_block(upload: &mut Upload, cont: &Packet) -> Result<(), String> {
    let ack = cont
        .get_first_option(CoapOption::Block1)
        .and_then(|b| Block::decode(b))
        .ok_or("a 2.31 Continue without Block1")?;
    let acked_start = usize::try_from(ack.num)
        .ok()
        .and_then(|n| n.checked_mul(ack.size()));
    // go-coap echoes our number with its own size; RFC 7959's figures number in its size.
    if ack.num != upload.num && acked_start != Some(upload.start) {
        return Err(format!(
            "the cloud acknowledged block {} while block {} was in flight",
            ack.num, upload.num
        ));
    }
    if upload.end >= upload.request.payload.len() {
        return Err("a 2.31 Continue after the last block".into());
    }
    upload.szx = upload.szx.min(ack.szx.min(crate::coap::block::MAX_SZX));
    let start = upload.end;
    upload
        .seek(start)
        .ok_or_else(|| "too large for block-wise transfer".to_string())
}

#[cfg(test)]
#[path = "link_tests.rs"]
mod tests;
