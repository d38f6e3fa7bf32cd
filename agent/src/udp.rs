//! CoAP over UDP (RFC 7252): unicast sockets, and multicast sockets joined to the OCF groups
//! (OCF Core §10.2: 224.0.1.187 and ff02::158, port 5683). Both answer discovery of `/oic/res`
//! only; everything else needs the secure endpoint, and is refused with 4.01 on unicast (in the
//! development mode, `--insecure-dev`, unicast serves every resource).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::rc::Rc;
use std::time::Instant;

use coap_lite::{MessageClass, Packet};
use nix::net::if_::InterfaceFlags;
use ocf::coap::block;
use ocf::coap::udp::{UdpInbound, UdpMessageLayer, UdpTimeout};
use ocf::resource::Origin;
use ocf::server::Peer;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::server::Agent;

pub const OCF_GROUP_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 1, 187);
pub const OCF_GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x158);

/// Every 8th notification to a UDP observer is confirmable, so an observer that went away is
/// noticed by its RST (RFC 7641 §4.5) without every notification costing an ACK.
const CON_EVERY: u32 = 8;

/// Responses larger than 1024 bytes go block-wise (RFC 7959), keeping datagrams within the
/// 1152 bytes CoAP stacks accept by default.
pub(crate) const UDP_SZX: u8 = 6;

/// Largest datagram we read; CoAP over UDP stays below the IPv6 minimum MTU in practice.
const MAX_DATAGRAM: usize = 1500;

/// Notifications remembered by Message-ID so an RST can end the right observation.
const SENT_MEMORY: usize = 256;

/// Multicast answers waiting for their leisure (RFC 7252 §8.2) at once; a request beyond is
/// not answered (answering a multicast request is optional, and a flood must not grow this).
const MULTICAST_PENDING: usize = 32;

/// Sleeps until `at`, or forever without a deadline.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Binds a unicast CoAP socket.
pub fn bind_unicast(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // A socket bound to the wildcard address would otherwise also receive the group traffic
    // that the multicast sockets serve, and a multicast request would be answered twice
    // (IP_MULTICAST_ALL, Linux ip(7)/ipv6(7)): take only groups this socket joined, i.e. none.
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
        let _ = socket.set_multicast_all_v6(false);
    } else {
        socket.set_multicast_all_v4(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// A socket bound to the IPv4 OCF group on `port`, so it sees group traffic only; its
/// memberships are [`Groups`]'s business.
fn bind_multicast_v4(port: u16) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::new(IpAddr::V4(OCF_GROUP_V4), port).into())?;
    UdpSocket::from_std(socket.into())
}

/// A socket bound to `[ff02::158%index]:port` and joined there: a link-local group needs its
/// interface named at bind time, so each interface has its own.
fn bind_multicast_v6(port: u16, index: u32) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_only_v6(true)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::V6(SocketAddrV6::new(OCF_GROUP_V6, port, 0, index)).into())?;
    socket.join_multicast_v6(&OCF_GROUP_V6, index)?;
    UdpSocket::from_std(socket.into())
}

/// The interfaces the group memberships follow, by index: those that are up and
/// multicast-capable, and among them those with an IPv4 address.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Seen {
    v4: BTreeMap<u32, String>,
    all: BTreeMap<u32, String>,
}

impl Seen {
    pub fn from_interfaces(list: &[(String, u32, Option<IpAddr>)]) -> Seen {
        let mut seen = Seen::default();
        for (name, index, addr) in list {
            if *index == 0 {
                continue;
            }
            seen.all.entry(*index).or_insert_with(|| name.clone());
            if matches!(addr, Some(IpAddr::V4(_))) {
                seen.v4.entry(*index).or_insert_with(|| name.clone());
            }
        }
        seen
    }
}

/// What a re-scan has to do: join the IPv4 group on interfaces that gained an IPv4 address
/// (or came up), leave it on those that lost it; open an IPv6 group socket on interfaces that
/// came up, close it on those that went.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub join_v4: Vec<(u32, String)>,
    pub leave_v4: Vec<u32>,
    pub open_v6: Vec<(u32, String)>,
    pub close_v6: Vec<u32>,
}

impl Changes {
    pub fn between(before: &Seen, now: &Seen) -> Changes {
        let added = |b: &BTreeMap<u32, String>, n: &BTreeMap<u32, String>| -> Vec<(u32, String)> {
            n.iter()
                .filter(|(i, _)| !b.contains_key(i))
                .map(|(i, name)| (*i, name.clone()))
                .collect()
        };
        let removed = |b: &BTreeMap<u32, String>, n: &BTreeMap<u32, String>| -> Vec<u32> {
            b.keys().filter(|i| !n.contains_key(i)).copied().collect()
        };
        Changes {
            join_v4: added(&before.v4, &now.v4),
            leave_v4: removed(&before.v4, &now.v4),
            open_v6: added(&before.all, &now.all),
            close_v6: removed(&before.all, &now.all),
        }
    }
}

/// Starts serving a group socket; `true` for IPv6.
pub type ServeGroup = Box<dyn Fn(Rc<UdpSocket>, bool) -> tokio::task::JoinHandle<()>>;

/// The OCF group memberships on `port`, kept in step with the interfaces: on a board the unit
/// does not wait for network-online.target, so DHCP (or a Wi-Fi link) often comes after the
/// agent started. [`Groups::rescan`] is cheap (one getifaddrs(3)) and only acts on changes.
pub struct Groups {
    port: u16,
    seen: Seen,
    v4: Option<Rc<UdpSocket>>,
    v6: BTreeMap<u32, tokio::task::JoinHandle<()>>,
    serve: ServeGroup,
}

impl Groups {
    /// Binds the IPv4 group socket, starts serving it, and joins the groups on the interfaces
    /// there are now.
    pub fn start(port: u16, serve: ServeGroup) -> Groups {
        let v4 = match bind_multicast_v4(port) {
            Ok(s) => {
                let s = Rc::new(s);
                serve(s.clone(), false);
                Some(s)
            }
            Err(e) => {
                warn!("cannot listen on {OCF_GROUP_V4}:{port}: {e}");
                None
            }
        };
        let mut groups = Groups {
            port,
            seen: Seen::default(),
            v4,
            v6: BTreeMap::new(),
            serve,
        };
        groups.rescan();
        groups
    }

    /// Applies what changed since the last scan.
    pub fn rescan(&mut self) {
        let now = Seen::from_interfaces(&interfaces());
        if now == self.seen {
            return;
        }
        let changes = Changes::between(&self.seen, &now);
        let port = self.port;
        if let Some(v4) = &self.v4 {
            let sock = socket2::SockRef::from(v4.as_ref());
            for (index, name) in &changes.join_v4 {
                let at = socket2::InterfaceIndexOrAddress::Index(*index);
                match sock.join_multicast_v4_n(&OCF_GROUP_V4, &at) {
                    Ok(()) => info!(interface = %name, "joined {OCF_GROUP_V4}:{port}"),
                    // Already a member there (it went down and up again): nothing to do.
                    Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {}
                    Err(e) => debug!(interface = %name, "cannot join {OCF_GROUP_V4}: {e}"),
                }
            }
            for index in &changes.leave_v4 {
                // The kernel has already dropped it if the interface is gone.
                let at = socket2::InterfaceIndexOrAddress::Index(*index);
                let _ = sock.leave_multicast_v4_n(&OCF_GROUP_V4, &at);
            }
        }
        for index in &changes.close_v6 {
            if let Some(task) = self.v6.remove(index) {
                task.abort();
            }
        }
        for (index, name) in &changes.open_v6 {
            match bind_multicast_v6(port, *index) {
                Ok(s) => {
                    info!(interface = %name, "joined [{OCF_GROUP_V6}]:{port}");
                    let task = (self.serve)(Rc::new(s), true);
                    self.v6.insert(*index, task);
                }
                Err(e) => debug!(interface = %name, "no IPv6 multicast: {e}"),
            }
        }
        self.seen = now;
    }
}

/// (name, index, address) of every interface that is up and multicast-capable.
pub fn interfaces() -> Vec<(String, u32, Option<IpAddr>)> {
    interface_list()
        .into_iter()
        .filter(|i| i.flags.contains(InterfaceFlags::IFF_MULTICAST))
        .map(|i| (i.name, i.index, i.addr))
        .collect()
}

/// (index, address, is loopback) of every address of an interface that is up.
pub fn interface_addresses() -> Vec<(u32, IpAddr, bool)> {
    interface_list()
        .into_iter()
        .filter_map(|i| {
            let lo = i.flags.contains(InterfaceFlags::IFF_LOOPBACK);
            Some((i.index, i.addr?, lo))
        })
        .collect()
}

struct InterfaceEntry {
    name: String,
    index: u32,
    flags: InterfaceFlags,
    addr: Option<IpAddr>,
}

/// getifaddrs(3): one entry per interface address (and one per interface without one), of the
/// interfaces that are up; index 0 where the interface went away meanwhile.
fn interface_list() -> Vec<InterfaceEntry> {
    let Ok(list) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    list.filter(|i| i.flags.contains(InterfaceFlags::IFF_UP))
        .map(|i| InterfaceEntry {
            index: nix::net::if_::if_nametoindex(i.interface_name.as_str()).unwrap_or(0),
            addr: i.address.as_ref().and_then(ip_of),
            flags: i.flags,
            name: i.interface_name,
        })
        .collect()
}

/// The IP address of a socket address, if it is one.
fn ip_of(addr: &nix::sys::socket::SockaddrStorage) -> Option<IpAddr> {
    match (addr.as_sockaddr_in(), addr.as_sockaddr_in6()) {
        (Some(v4), _) => Some(IpAddr::V4(v4.ip())),
        (_, Some(v6)) => Some(IpAddr::V6(v6.ip())),
        _ => None,
    }
}

/// Serves one unicast socket until shutdown.
pub async fn serve_unicast(
    socket: Rc<UdpSocket>,
    agent: Rc<Agent>,
    mut shutdown: watch::Receiver<bool>,
) {
    let v6 = socket.local_addr().map(|a| a.is_ipv6()).unwrap_or(false);
    let (tx, mut notifications) = mpsc::channel::<(SocketAddr, Packet)>(256);
    agent.set_udp(v6, tx);
    let mut layer = UdpMessageLayer::new();
    let mut sent: VecDeque<(SocketAddr, u16, Vec<u8>)> = VecDeque::new();
    let mut counter: u32 = 0;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (n, peer) = match received {
                    Ok(r) => r,
                    Err(e) => { debug!("udp receive: {e}"); continue; }
                };
                match layer.handle_datagram(peer, &buf[..n], Instant::now()) {
                    UdpInbound::Request(packet) => {
                        // Discovery only, unless in the development mode (ocf::server).
                        let Some(mut response) = agent.serve(Peer::Udp(peer), &packet) else { continue };
                        block::apply_block2(&packet, &mut response, UDP_SZX);
                        let bytes = layer.respond(peer, &packet, response, Instant::now());
                        let _ = socket.send_to(&bytes, peer).await;
                        agent.flush_notifications();
                    }
                    UdpInbound::Reply(bytes) => { let _ = socket.send_to(&bytes, peer).await; }
                    UdpInbound::Reset { peer, message_id } => {
                        debug!(%peer, message_id, "reset received");
                        if let Some(pos) = sent.iter().position(|(p, m, _)| *p == peer && *m == message_id) {
                            if let Some((_, _, token)) = sent.remove(pos) {
                                debug!(%peer, "notification reset; ending the observation");
                                agent.device().cancel_observation(&Origin::Udp(peer), &token);
                            }
                        }
                    }
                    _ => {}
                }
            }
            Some((peer, mut packet)) = notifications.recv() => {
                block::apply_block2(&Packet::new(), &mut packet, UDP_SZX);
                counter = counter.wrapping_add(1);
                let token = packet.get_token().to_vec();
                let confirmable = counter.is_multiple_of(CON_EVERY);
                let (mid, bytes) = layer.notification(peer, packet, confirmable, Instant::now());
                sent.push_back((peer, mid, token));
                if sent.len() > SENT_MEMORY { sent.pop_front(); }
                let _ = socket.send_to(&bytes, peer).await;
            }
            _ = sleep_until(layer.poll_timeout()) => {
                for due in layer.handle_timeout(Instant::now()) {
                    match due {
                        UdpTimeout::Retransmit { peer, bytes } => {
                            let _ = socket.send_to(&bytes, peer).await;
                        }
                        UdpTimeout::GaveUp { peer, token } => {
                            // RFC 7641 §4.5: an observer that does not acknowledge is gone.
                            debug!(%peer, "notification never acknowledged; ending the observation");
                            agent.device().cancel_observation(&Origin::Udp(peer), &token);
                        }
                    }
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Serves a multicast socket: discovery requests only, answered from `reply` (a unicast socket
/// of the same family, RFC 7252 §8.1: responses to multicast come from a unicast address).
pub async fn serve_multicast(
    socket: Rc<UdpSocket>,
    reply: Option<Rc<UdpSocket>>,
    agent: Rc<Agent>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(reply) = reply else {
        warn!("multicast socket without a unicast socket of its family: discovery goes unanswered");
        return;
    };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut layer = UdpMessageLayer::new();
    // Answers waiting for their random leisure (RFC 7252 §8.2), earliest first.
    let mut pending: BinaryHeap<Reverse<(Instant, SocketAddr, Vec<u8>)>> = BinaryHeap::new();
    loop {
        let next = pending.peek().map(|Reverse((at, _, _))| *at);
        tokio::select! {
            _ = sleep_until(next) => {
                let now = Instant::now();
                while let Some(Reverse((at, peer, bytes))) = pending.peek() {
                    if *at > now { break; }
                    let _ = reply.send_to(bytes, *peer).await;
                    pending.pop();
                }
            }
            received = socket.recv_from(&mut buf) => {
                let Ok((n, peer)) = received else { continue };
                // Multicast requests are NON (RFC 7252 §8.1); anything else is not for us.
                let UdpInbound::Request(packet) = layer.handle_datagram(peer, &buf[..n], Instant::now()) else { continue };
                if !matches!(packet.header.code, MessageClass::Request(_)) { continue; }
                // Discovery only, and nothing when nothing matches (ocf::server).
                if let Some(mut response) = agent.serve(Peer::Multicast(peer), &packet) {
                    if pending.len() >= MULTICAST_PENDING {
                        debug!(%peer, "too many multicast answers waiting; not answering");
                        continue;
                    }
                    block::apply_block2(&packet, &mut response, UDP_SZX);
                    let now = Instant::now();
                    let bytes = layer.respond(peer, &packet, response, now);
                    pending.push(Reverse((now + layer.multicast_delay(), peer, bytes)));
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loopback interface is up on any machine the tests run on: its addresses are listed
    /// as loopback, under the kernel's index for `lo`.
    #[test]
    fn interface_listing_finds_the_loopback_addresses() {
        let lo = nix::net::if_::if_nametoindex("lo").expect("lo");
        let addrs = interface_addresses();
        assert!(
            addrs.contains(&(lo, IpAddr::V4(Ipv4Addr::LOCALHOST), true)),
            "{addrs:?}"
        );
        assert!(addrs.iter().filter(|a| a.0 == lo).all(|a| a.2), "{addrs:?}");
        // Every listed interface is multicast-capable, named, and has its index.
        for (name, index, _) in interfaces() {
            assert!(!name.is_empty());
            assert_eq!(
                nix::net::if_::if_nametoindex(name.as_str()).ok(),
                Some(index)
            );
        }
    }

    fn seen(list: &[(&str, u32, Option<&str>)]) -> Seen {
        let list: Vec<(String, u32, Option<IpAddr>)> = list
            .iter()
            .map(|(n, i, a)| (n.to_string(), *i, a.map(|a| a.parse().unwrap())))
            .collect();
        Seen::from_interfaces(&list)
    }

    #[test]
    fn a_rescan_acts_only_on_what_changed() {
        let start = seen(&[("lo", 1, Some("127.0.0.1")), ("lo", 1, Some("::1"))]);
        let first = Changes::between(&Seen::default(), &start);
        assert_eq!(first.join_v4, [(1, "lo".to_string())]);
        assert_eq!(first.open_v6, [(1, "lo".to_string())]);
        // Nothing changed: nothing to do (no join repeated, no error logged).
        assert_eq!(Changes::between(&start, &start), Changes::default());

        // eth0 comes up with only its IPv6 link-local address, then DHCP gives it IPv4, then a
        // second IPv4 address: one IPv6 socket, one IPv4 join, nothing for the second address.
        let up = seen(&[
            ("lo", 1, Some("127.0.0.1")),
            ("eth0", 2, Some("fe80::1")),
            ("eth0", 2, None),
        ]);
        let c = Changes::between(&start, &up);
        assert_eq!(c.open_v6, [(2, "eth0".to_string())]);
        assert!(c.join_v4.is_empty() && c.leave_v4.is_empty() && c.close_v6.is_empty());
        let dhcp = seen(&[
            ("lo", 1, Some("127.0.0.1")),
            ("eth0", 2, Some("fe80::1")),
            ("eth0", 2, Some("192.168.1.20")),
        ]);
        let c = Changes::between(&up, &dhcp);
        assert_eq!(c.join_v4, [(2, "eth0".to_string())]);
        assert!(c.open_v6.is_empty());
        let two = seen(&[
            ("lo", 1, Some("127.0.0.1")),
            ("eth0", 2, Some("192.168.1.20")),
            ("eth0", 2, Some("192.168.1.21")),
        ]);
        assert_eq!(Changes::between(&dhcp, &two), Changes::default());

        // eth0 goes down: leave and close; it comes back: join and open again.
        let down = seen(&[("lo", 1, Some("127.0.0.1"))]);
        let c = Changes::between(&two, &down);
        assert_eq!((c.leave_v4, c.close_v6), (vec![2], vec![2]));
        let c = Changes::between(&down, &two);
        assert_eq!(c.join_v4, [(2, "eth0".to_string())]);
        assert_eq!(c.open_v6, [(2, "eth0".to_string())]);
        // Index 0 (no index) is never acted on.
        assert_eq!(seen(&[("x", 0, Some("10.0.0.1"))]), Seen::default());
    }
}
