//! The endpoints a device lists as `eps` in discovery (OCF Core §10.2): which of its addresses a
//! client can use, and how each is written.
//!
//! - A socket bound to one address is listed at that address; one bound to the unspecified
//!   address at every address of its family that the interfaces carry.
//! - Loopback addresses are left out (a client elsewhere would talk to itself), unless they are
//!   all the device has: an agent bound to loopback only, as in tests.
//! - Link-local IPv6 addresses are listed: on most home LANs IPv6 is link-local only. They are
//!   written without a zone, as iotivity-lite writes them (`oc_endpoint_to_string`): a zone is
//!   the client's own interface name or index, which the device cannot know; clients apply the
//!   interface they heard the answer on. A client known to be on one link (its own address is
//!   link-local with a zone) is shown only the link-local addresses of that link.
//! - The unspecified address is never listed.

use std::net::{IpAddr, SocketAddr};

/// An address of the device on one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddress {
    /// The interface index (the zone of a link-local IPv6 address).
    pub index: u32,
    pub addr: IpAddr,
    pub loopback: bool,
}

/// One endpoint: a scheme and a socket address (`scope_id` set for link-local IPv6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: &'static str,
    pub addr: SocketAddr,
}

impl Endpoint {
    /// The `ep` string: `coap://192.168.1.20:5683`, `coap://[fe80::1]:5683` (no zone).
    pub fn uri(&self) -> String {
        match self.addr.ip() {
            IpAddr::V4(a) => format!("{}://{a}:{}", self.scheme, self.addr.port()),
            IpAddr::V6(a) => format!("{}://[{a}]:{}", self.scheme, self.addr.port()),
        }
    }

    /// The interface of a link-local IPv6 endpoint.
    fn link(&self) -> Option<u32> {
        match self.addr {
            SocketAddr::V6(a) if is_link_local(&self.addr.ip()) => Some(a.scope_id()),
            _ => None,
        }
    }

    /// Whether a client whose address is `client` (when the transport tells it) can use this
    /// endpoint.
    pub fn usable_by(&self, client: Option<&SocketAddr>) -> bool {
        let Some(link) = self.link() else {
            return true;
        };
        match client {
            Some(SocketAddr::V6(peer))
                if is_link_local(&IpAddr::V6(*peer.ip())) && peer.scope_id() != 0 =>
            {
                peer.scope_id() == link
            }
            _ => true,
        }
    }
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(_) => false,
    }
}

/// The endpoints of the listening sockets `bound` (scheme, local address), given the addresses
/// the interfaces carry now.
pub fn advertised(
    bound: &[(&'static str, SocketAddr)],
    interfaces: &[InterfaceAddress],
) -> Vec<Endpoint> {
    let only_loopback = interfaces.iter().all(|i| i.loopback);
    let mut out: Vec<Endpoint> = Vec::new();
    for &(scheme, local) in bound {
        let port = local.port();
        if !local.ip().is_unspecified() {
            out.push(Endpoint {
                scheme,
                addr: local,
            });
            continue;
        }
        for i in interfaces {
            if i.addr.is_ipv4() != local.is_ipv4() || i.addr.is_unspecified() {
                continue;
            }
            if i.loopback && !only_loopback {
                continue;
            }
            let addr = match i.addr {
                IpAddr::V4(a) => SocketAddr::new(IpAddr::V4(a), port),
                IpAddr::V6(a) => {
                    let scope = if is_link_local(&i.addr) { i.index } else { 0 };
                    SocketAddr::V6(std::net::SocketAddrV6::new(a, port, 0, scope))
                }
            };
            let ep = Endpoint { scheme, addr };
            if !out.contains(&ep) {
                out.push(ep);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(index: u32, addr: &str, loopback: bool) -> InterfaceAddress {
        InterfaceAddress {
            index,
            addr: addr.parse().unwrap(),
            loopback,
        }
    }

    fn uris(eps: &[Endpoint]) -> Vec<String> {
        eps.iter().map(Endpoint::uri).collect()
    }

    const ANY4: &str = "0.0.0.0:5683";
    const ANY6: &str = "[::]:5683";

    #[test]
    fn a_link_local_only_lan_lists_its_fe80_address_without_zone() {
        let ifs = [
            iface(1, "127.0.0.1", true),
            iface(1, "::1", true),
            iface(3, "fe80::a8c1:abff:fe12:3456", false),
        ];
        let eps = advertised(&[("coap", ANY6.parse().unwrap())], &ifs);
        assert_eq!(uris(&eps), ["coap://[fe80::a8c1:abff:fe12:3456]:5683"]);
        match eps[0].addr {
            SocketAddr::V6(a) => assert_eq!(a.scope_id(), 3),
            _ => unreachable!(),
        }
    }

    #[test]
    fn loopback_is_left_out_even_with_the_multicast_flag_unless_it_is_all_there_is() {
        let lan = [
            iface(1, "127.0.0.1", true),
            iface(2, "192.168.1.20", false),
            iface(2, "2001:db8::20", false),
            iface(2, "fe80::20", false),
        ];
        let eps = advertised(
            &[
                ("coap", ANY4.parse().unwrap()),
                ("coap", ANY6.parse().unwrap()),
                ("coaps+tcp", "0.0.0.0:5684".parse().unwrap()),
            ],
            &lan,
        );
        assert_eq!(
            uris(&eps),
            [
                "coap://192.168.1.20:5683",
                "coap://[2001:db8::20]:5683",
                "coap://[fe80::20]:5683",
                "coaps+tcp://192.168.1.20:5684",
            ]
        );
        let alone = [iface(1, "127.0.0.1", true), iface(1, "::1", true)];
        let eps = advertised(&[("coap", ANY4.parse().unwrap())], &alone);
        assert_eq!(uris(&eps), ["coap://127.0.0.1:5683"]);
    }

    #[test]
    fn never_the_unspecified_address() {
        let eps = advertised(
            &[("coap", ANY6.parse().unwrap())],
            &[iface(2, "10.0.0.2", false)],
        );
        assert!(eps.is_empty(), "{eps:?}");
        let eps = advertised(&[("coap", "127.0.0.1:40000".parse().unwrap())], &[]);
        assert_eq!(uris(&eps), ["coap://127.0.0.1:40000"]);
    }

    #[test]
    fn a_client_on_one_link_sees_only_that_links_link_local_addresses() {
        let ifs = [
            iface(2, "fe80::2", false),
            iface(3, "fe80::3", false),
            iface(3, "192.168.7.3", false),
        ];
        let eps = advertised(
            &[
                ("coap", ANY6.parse().unwrap()),
                ("coap", ANY4.parse().unwrap()),
            ],
            &ifs,
        );
        let on_link_3: SocketAddr = "[fe80::99%3]:40000".parse().unwrap();
        let seen: Vec<String> = eps
            .iter()
            .filter(|e| e.usable_by(Some(&on_link_3)))
            .map(Endpoint::uri)
            .collect();
        assert_eq!(seen, ["coap://[fe80::3]:5683", "coap://192.168.7.3:5683"]);
        assert_eq!(eps.iter().filter(|e| e.usable_by(None)).count(), 3);
    }
}
