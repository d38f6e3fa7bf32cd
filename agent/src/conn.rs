//! Admission and deadlines for every stream listener (the plain coap+tcp listener of the
//! development mode and the secure endpoint), so that no number of idle or slow peers can lock
//! the owner or an onboarding Mediator out. The DTLS endpoint admits its sessions by the same
//! table (`dtls.rs`), and runs their handshake and idle timers itself with the same limits.
//!
//! The decisions are in [`ConnTable`], sans-IO with the time passed in: who is admitted, who is
//! evicted to make room, and when a connection has outlived its handshake, idle or write
//! deadline. [`Conns`] applies them with tokio: it accepts, asks the table, and stops the
//! connection tasks the table names.
//!
//! - **Caps**: at most [`Limits::per_address`] connections from one IPv4 address or IPv6 /64, and
//!   [`Limits::total`] in all. A connection that would exceed either is still admitted: the
//!   connection idle the longest (from that address if its cap is the one reached) that is not
//!   the owner's is closed to make room, so a newcomer always gets its turn. Only when every
//!   candidate is the owner's is the newcomer refused.
//! - **Deadlines**: a TLS handshake must finish within [`Limits::handshake`]; an established
//!   connection with nothing received nor written for [`Limits::idle`] is closed (a client
//!   that keeps a quiet connection sends RFC 8323 §5.4 Pings; an observer hears notifications);
//!   a write the peer does not take within [`Limits::write`] closes the connection (a peer
//!   that never reads its socket). "Idle" for the eviction is the same: time since the last
//!   byte in either direction.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tracing::{debug, warn};

/// The connection limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections at once, in all.
    pub total: usize,
    /// Connections at once from one IP address.
    pub per_address: usize,
    /// Time from accept to the end of the TLS handshake.
    pub handshake: Duration,
    /// Time an established connection may go without a byte in either direction.
    pub idle: Duration,
    /// Time a write may wait for the peer to take the bytes.
    pub write: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            // A board serves a Mediator or two and a few local clients; each connection costs
            // a TLS session (tens of KiB) and a task.
            total: 64,
            per_address: 16,
            handshake: Duration::from_secs(10),
            // Long enough for a client between two requests of a session; RFC 8323 §5.4
            // Pings keep a connection that waits for notifications open.
            idle: Duration::from_secs(300),
            write: Duration::from_secs(10),
        }
    }
}

/// Why the table closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Handshake,
    Idle,
    Write,
    /// Closed to make room for a newcomer.
    Evicted,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Handshake => "TLS handshake not finished in time",
            CloseReason::Idle => "idle for too long",
            CloseReason::Write => "the peer does not read what is sent",
            CloseReason::Evicted => "evicted to make room for a new connection",
        }
    }
}

/// What to do with a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Serve it as `id`, after closing `evict` (at most one).
    Admit { id: u64, evict: Option<u64> },
    /// Every place is held by the owner: close it at once.
    Refuse,
}

#[derive(Debug, Clone)]
struct Entry {
    address: IpAddr,
    established: bool,
    owner: bool,
    opened: Instant,
    last_active: Instant,
    /// Since when a write has been waiting for the peer.
    write_blocked: Option<Instant>,
}

impl Entry {
    fn deadline(&self, limits: &Limits) -> (Instant, CloseReason) {
        let mut due = if self.established {
            (self.last_active + limits.idle, CloseReason::Idle)
        } else {
            (self.opened + limits.handshake, CloseReason::Handshake)
        };
        if let Some(since) = self.write_blocked {
            let write = since + limits.write;
            if write < due.0 {
                due = (write, CloseReason::Write);
            }
        }
        due
    }
}

/// The sans-IO connection table (see the module docs).
#[derive(Debug)]
pub struct ConnTable {
    limits: Limits,
    entries: HashMap<u64, Entry>,
    next_id: u64,
}

/// The unit the per-address cap counts: an IPv4 address (also when it came IPv4-mapped), or
/// an IPv6 /64. A host given a /64 (RFC 4291 §2.5.4, SLAAC) can use any of its 2^64
/// addresses, so counting whole IPv6 addresses would cap nothing.
fn canonical(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

impl ConnTable {
    pub fn new(limits: Limits) -> ConnTable {
        ConnTable {
            limits: Limits {
                total: limits.total.max(1),
                per_address: limits.per_address.max(1),
                ..limits
            },
            entries: HashMap::new(),
            next_id: 1,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Connections from `address`.
    pub fn count_from(&self, address: IpAddr) -> usize {
        let address = canonical(address);
        self.entries
            .values()
            .filter(|e| e.address == address)
            .count()
    }

    /// A new connection from `address` at `now` (see the module docs for the rules).
    pub fn admit(&mut self, address: IpAddr, now: Instant) -> Admission {
        let address = canonical(address);
        let same_address = self.count_from(address);
        let evict = if same_address >= self.limits.per_address {
            match self.longest_idle(now, Some(address)) {
                Some(id) => Some(id),
                None => return Admission::Refuse,
            }
        } else if self.entries.len() >= self.limits.total {
            match self.longest_idle(now, None) {
                Some(id) => Some(id),
                None => return Admission::Refuse,
            }
        } else {
            None
        };
        if let Some(id) = evict {
            self.entries.remove(&id);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.entries.insert(
            id,
            Entry {
                address,
                established: false,
                owner: false,
                opened: now,
                last_active: now,
                write_blocked: None,
            },
        );
        Admission::Admit { id, evict }
    }

    /// The connection that is not the owner's and has been idle for the longest time (a
    /// handshake in progress counts from its accept), among those from `address` if given.
    fn longest_idle(&self, now: Instant, address: Option<IpAddr>) -> Option<u64> {
        self.entries
            .iter()
            .filter(|(_, e)| !e.owner && address.is_none_or(|a| e.address == a))
            .max_by_key(|(id, e)| {
                (
                    now.saturating_duration_since(e.last_active),
                    u64::MAX - **id,
                )
            })
            .map(|(id, _)| *id)
    }

    /// The handshake of `id` finished; `owner`: the peer proved to be the device's owner.
    pub fn established(&mut self, id: u64, owner: bool, now: Instant) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.established = true;
            e.owner = owner;
            e.last_active = now;
        }
    }

    /// The peer of `id` became the device's owner after its handshake (it took ownership).
    pub fn became_owner(&mut self, id: u64) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.owner = true;
        }
    }

    /// Bytes arrived on `id`, or the peer took bytes written to it.
    pub fn active(&mut self, id: u64, now: Instant) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.last_active = now;
        }
    }

    /// A write on `id` has to wait for the peer (from `now`, unless it already waited).
    pub fn write_blocked(&mut self, id: u64, now: Instant) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.write_blocked.get_or_insert(now);
        }
    }

    /// The peer took what `id` wrote.
    pub fn write_done(&mut self, id: u64) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.write_blocked = None;
        }
    }

    /// `id` ended; forget it.
    pub fn remove(&mut self, id: u64) {
        self.entries.remove(&id);
    }

    /// The next deadline, if any connection has one.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.entries
            .values()
            .map(|e| e.deadline(&self.limits).0)
            .min()
    }

    /// Removes and returns every connection whose deadline is at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<(u64, CloseReason)> {
        let limits = self.limits;
        let mut due: Vec<(u64, CloseReason)> = self
            .entries
            .iter()
            .filter_map(|(id, e)| {
                let (at, reason) = e.deadline(&limits);
                (at <= now).then_some((*id, reason))
            })
            .collect();
        due.sort_unstable_by_key(|(id, _)| *id);
        for (id, _) in &due {
            self.entries.remove(id);
        }
        due
    }
}

/// The table of one listener with the means to stop its connection tasks.
pub struct Conns {
    table: RefCell<ConnTable>,
    stops: RefCell<HashMap<u64, Rc<Notify>>>,
    /// Wakes the deadline task when the table's next deadline may have moved earlier.
    changed: Notify,
}

impl Conns {
    pub fn new(limits: Limits) -> Rc<Conns> {
        Rc::new(Conns {
            table: RefCell::new(ConnTable::new(limits)),
            stops: RefCell::new(HashMap::new()),
            changed: Notify::new(),
        })
    }

    fn stop(&self, id: u64, reason: CloseReason) {
        if let Some(stop) = self.stops.borrow_mut().remove(&id) {
            debug!(slot = id, "closing a connection: {}", reason.as_str());
            stop.notify_one();
        }
    }

    /// Accepts on `listener` until shutdown; each admitted connection runs `serve` in its own
    /// task, which is dropped (closing the socket) when the table closes the connection.
    pub async fn serve<F, Fut>(
        self: Rc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
        serve: F,
    ) where
        F: Fn(Tracked, SocketAddr, Slot) -> Fut,
        Fut: Future<Output = ()> + 'static,
    {
        tokio::task::spawn_local(self.clone().enforce_deadlines(shutdown.clone()));
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.changed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and the like: wait for a descriptor to be freed.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let admission = self.table.borrow_mut().admit(peer.ip(), Instant::now());
            let Admission::Admit { id, evict } = admission else {
                warn!(%peer, "every connection is the owner's; refusing");
                continue;
            };
            if let Some(old) = evict {
                self.stop(old, CloseReason::Evicted);
            }
            let stop = Rc::new(Notify::new());
            self.stops.borrow_mut().insert(id, stop.clone());
            self.changed.notify_one();
            // OCF-PROTOCOL.md §7.7: no Nagle delay on the last responses of a burst.
            let _ = stream.set_nodelay(true);
            let slot = Slot {
                id,
                conns: self.clone(),
            };
            let tracked = Tracked {
                stream,
                id,
                conns: self.clone(),
            };
            let task = serve(tracked, peer, slot);
            tokio::task::spawn_local(async move {
                tokio::select! {
                    _ = task => {}
                    _ = stop.notified() => {}
                }
            });
        }
    }

    /// Closes the connections whose deadline passed, as the table says.
    async fn enforce_deadlines(self: Rc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let next = self.table.borrow().poll_timeout();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                _ = self.changed.notified() => continue,
                _ = shutdown.changed() => return,
            }
            let due = self.table.borrow_mut().handle_timeout(Instant::now());
            for (id, reason) in due {
                self.stop(id, reason);
            }
        }
    }
}

/// A connection's place in the table; dropping it frees the place.
pub struct Slot {
    id: u64,
    conns: Rc<Conns>,
}

impl Slot {
    /// The handshake finished; `owner`: the peer is the device's owner (never evicted).
    pub fn established(&self, owner: bool) {
        self.conns
            .table
            .borrow_mut()
            .established(self.id, owner, Instant::now());
        self.conns.changed.notify_one();
    }

    /// The peer took ownership of the device on this connection: never evict it.
    pub fn became_owner(&self) {
        self.conns.table.borrow_mut().became_owner(self.id);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.conns.table.borrow_mut().remove(self.id);
        self.conns.stops.borrow_mut().remove(&self.id);
    }
}

/// The TCP stream of an admitted connection, reporting what it receives and writes that wait
/// to the table (below TLS, so the handshake counts too).
pub struct Tracked {
    stream: TcpStream,
    id: u64,
    conns: Rc<Conns>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conns
                .table
                .borrow_mut()
                .active(self.id, Instant::now());
        }
        poll
    }
}

impl Tracked {
    fn track_write(&self, poll: &Poll<io::Result<usize>>) {
        let mut table = self.conns.table.borrow_mut();
        match poll {
            Poll::Pending => {
                table.write_blocked(self.id, Instant::now());
                drop(table);
                self.conns.changed.notify_one();
            }
            Poll::Ready(result) => {
                table.write_done(self.id);
                if matches!(result, Ok(n) if *n > 0) {
                    table.active(self.id, Instant::now());
                }
            }
        }
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write(cx, data);
        self.track_write(&poll);
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A TCP stream has nothing to flush.
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.track_write(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    fn limits() -> Limits {
        Limits {
            total: 4,
            per_address: 2,
            handshake: Duration::from_secs(10),
            idle: Duration::from_secs(300),
            write: Duration::from_secs(10),
        }
    }

    fn admitted(a: Admission) -> (u64, Option<u64>) {
        match a {
            Admission::Admit { id, evict } => (id, evict),
            Admission::Refuse => panic!("refused"),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_address_makes_room_by_closing_its_longest_idle_connection() {
        let mut t = ConnTable::new(limits());
        let t0 = Instant::now();
        let (a, _) = admitted(t.admit(ip(1), t0));
        let (b, _) = admitted(t.admit(ip(1), t0 + ms(1)));
        t.established(a, false, t0 + ms(2));
        t.established(b, false, t0 + ms(3));
        t.active(a, t0 + ms(50));
        // b has been quiet longer than a: it goes.
        let (c, evicted) = admitted(t.admit(ip(1), t0 + ms(60)));
        assert_eq!(evicted, Some(b));
        assert_eq!(t.count_from(ip(1)), 2);
        // Another address is not touched by this address's cap.
        let (_, evicted) = admitted(t.admit(ip(2), t0 + ms(61)));
        assert_eq!(evicted, None);
        // IPv4-mapped IPv6 is the same address.
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let (_, evicted) = admitted(t.admit(mapped, t0 + ms(70)));
        assert_eq!(
            evicted,
            Some(a),
            "a quiet since +50 ms, c only since its accept at +60"
        );
        assert!(t.entries.contains_key(&c));
    }

    #[test]
    fn ipv6_addresses_of_one_64_prefix_share_one_cap() {
        let mut t = ConnTable::new(limits());
        let t0 = Instant::now();
        let v6 = |s: &str| -> IpAddr { s.parse().unwrap() };
        let (a, _) = admitted(t.admit(v6("2001:db8:1:2::1"), t0));
        let (_, evicted) = admitted(t.admit(v6("2001:db8:1:2:ffff::9"), t0 + ms(1)));
        assert_eq!(evicted, None);
        // A third address from the same /64 is over the cap of 2: the longest idle goes.
        let (_, evicted) = admitted(t.admit(v6("2001:db8:1:2:dead:beef::1"), t0 + ms(2)));
        assert_eq!(evicted, Some(a));
        assert_eq!(t.count_from(v6("2001:db8:1:2::77")), 2);
        // Another /64 has its own cap.
        let (_, evicted) = admitted(t.admit(v6("2001:db8:1:3::1"), t0 + ms(3)));
        assert_eq!(evicted, None);
        assert_eq!(t.count_from(v6("2001:db8:1:3::2")), 1);
    }

    #[test]
    fn a_connection_that_takes_ownership_after_its_handshake_is_never_evicted() {
        let mut t = ConnTable::new(limits());
        let t0 = Instant::now();
        let (mediator, _) = admitted(t.admit(ip(1), t0));
        t.established(mediator, false, t0);
        t.became_owner(mediator);
        // However long it stays quiet, newcomers from its address take other places.
        let (other, evicted) = admitted(t.admit(ip(1), t0 + ms(10)));
        assert_eq!(evicted, None);
        let (_, evicted) = admitted(t.admit(ip(1), t0 + ms(500)));
        assert_eq!(evicted, Some(other));
        assert!(t.entries.contains_key(&mediator));
    }

    #[test]
    fn a_full_table_closes_the_longest_idle_connection_that_is_not_the_owners() {
        let mut t = ConnTable::new(limits());
        let t0 = Instant::now();
        let ids: Vec<u64> = (0..4)
            .map(|i| admitted(t.admit(ip(i), t0 + ms(u64::from(i)))).0)
            .collect();
        // The oldest is the owner's: never evicted, however idle.
        t.established(ids[0], true, t0 + ms(5));
        t.established(ids[1], false, t0 + ms(5));
        t.active(ids[1], t0 + ms(100));
        let (_, evicted) = admitted(t.admit(ip(9), t0 + ms(200)));
        assert_eq!(evicted, Some(ids[2]), "the handshake idle since its accept");
        assert_eq!(t.len(), 4);
        // Every newcomer gets in; the owner stays.
        for i in 0..100u64 {
            admitted(t.admit(ip(10 + (i % 50) as u8), t0 + ms(300 + i)));
            assert_eq!(t.len(), 4);
        }
        assert!(t.entries.contains_key(&ids[0]));
    }

    #[test]
    fn only_owner_connections_means_a_refusal() {
        let mut t = ConnTable::new(Limits {
            total: 2,
            ..limits()
        });
        let t0 = Instant::now();
        for i in 0..2 {
            let (id, _) = admitted(t.admit(ip(i), t0));
            t.established(id, true, t0);
        }
        assert_eq!(t.admit(ip(7), t0), Admission::Refuse);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn deadlines_handshake_idle_and_write() {
        let l = limits();
        let mut t = ConnTable::new(l);
        let t0 = Instant::now();
        let (slow_handshake, _) = admitted(t.admit(ip(1), t0));
        let (quiet, _) = admitted(t.admit(ip(2), t0));
        let (reader, _) = admitted(t.admit(ip(3), t0));
        t.established(quiet, false, t0 + ms(100));
        t.established(reader, false, t0 + ms(100));
        assert_eq!(t.poll_timeout(), Some(t0 + l.handshake));
        assert!(t.handle_timeout(t0 + l.handshake - ms(1)).is_empty());
        assert_eq!(
            t.handle_timeout(t0 + l.handshake),
            [(slow_handshake, CloseReason::Handshake)]
        );
        // A write that waits: closed after the write deadline, although data came in.
        t.write_blocked(reader, t0 + secs(20));
        t.active(reader, t0 + secs(25));
        t.write_blocked(reader, t0 + secs(26)); // still the same wait
        assert_eq!(t.poll_timeout(), Some(t0 + secs(30)));
        assert_eq!(
            t.handle_timeout(t0 + secs(30)),
            [(reader, CloseReason::Write)]
        );
        // A write that completes clears its deadline; the quiet one ends when idle.
        t.write_blocked(quiet, t0 + secs(40));
        t.write_done(quiet);
        t.active(quiet, t0 + secs(60));
        assert_eq!(t.poll_timeout(), Some(t0 + secs(60) + l.idle));
        assert!(t.handle_timeout(t0 + secs(60) + l.idle - ms(1)).is_empty());
        assert_eq!(
            t.handle_timeout(t0 + secs(60) + l.idle),
            [(quiet, CloseReason::Idle)]
        );
        assert_eq!(t.poll_timeout(), None);
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn the_owner_is_still_closed_by_its_own_deadlines() {
        let l = limits();
        let mut t = ConnTable::new(l);
        let t0 = Instant::now();
        let (owner, _) = admitted(t.admit(ip(1), t0));
        t.established(owner, true, t0);
        assert_eq!(t.handle_timeout(t0 + l.idle), [(owner, CloseReason::Idle)]);
    }
}
