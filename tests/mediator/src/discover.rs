//! `ocf-mediator discover`: multicast GET /oic/res to the OCF groups (224.0.1.187 and
//! ff02::158 on every multicast interface, port 5683), as an OCF client does (OCF Core §10.2),
//! collecting the answers for a while and grouping the links by device.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::time::{Duration, Instant};

use ciborium::Value;
use coap_lite::{CoapOption, MessageType, Packet};
use nix::net::if_::InterfaceFlags;
use ocf::coap::block::Block;
use ocf::model::{decode_payload, ContentFormat};
use ocf::resource::{Method, Request, Response};

pub const OCF_GROUP_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 1, 187);
pub const OCF_GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x158);

/// One device found on the network.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Found {
    pub di: String,
    /// Every endpoint listed in its links (`eps`), in the order first seen.
    pub eps: Vec<String>,
    /// Its resources: href and resource types.
    pub resources: Vec<(String, Vec<String>)>,
    /// Who answered.
    pub from: Vec<SocketAddr>,
}

fn discovery_request(token: &[u8], message_id: u16, block: Option<Block>) -> Vec<u8> {
    let mut req = Request::new(Method::Get, "/oic/res");
    // An OCF client: Accept 10000 with OCF-Accept-Content-Format-Version.
    req.accept = Some(ContentFormat::OCF_CBOR_NUMBER);
    let mut p = req.to_packet(token);
    p.header.set_type(MessageType::NonConfirmable);
    p.header.message_id = message_id;
    if let Some(b) = block {
        p.header.set_type(MessageType::Confirmable);
        p.add_option(CoapOption::Block2, b.encode());
    }
    p.to_bytes().unwrap_or_default()
}

/// Interface indexes of multicast-capable interfaces that are up (getifaddrs(3)).
fn ipv6_interfaces() -> Vec<u32> {
    let up_mc = InterfaceFlags::IFF_UP | InterfaceFlags::IFF_MULTICAST;
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().into_iter().flatten() {
        if ifa.flags.contains(up_mc) {
            match nix::net::if_::if_nametoindex(ifa.interface_name.as_str()) {
                Ok(index) if index != 0 && !out.contains(&index) => out.push(index),
                _ => {}
            }
        }
    }
    out
}

/// Sends discovery to both groups and collects answers for `wait`.
pub fn discover(wait: Duration, port: u16) -> Result<Vec<Found>, String> {
    let token: Vec<u8> = (0u8..8)
        .map(|i| (std::process::id() as u8).wrapping_add(i.wrapping_mul(37)))
        .collect();
    let mut sockets = Vec::new();
    if let Ok(v4) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) {
        let _ = v4.send_to(&discovery_request(&token, 1, None), (OCF_GROUP_V4, port));
        sockets.push(v4);
    }
    if let Ok(v6) = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)) {
        for index in ipv6_interfaces() {
            let _ = v6.send_to(
                &discovery_request(&token, 2, None),
                SocketAddrV6::new(OCF_GROUP_V6, port, 0, index),
            );
        }
        sockets.push(v6);
    }
    if sockets.is_empty() {
        return Err("cannot open a UDP socket".into());
    }
    let mut found: BTreeMap<String, Found> = BTreeMap::new();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        for sock in &sockets {
            let _ = sock.set_read_timeout(Some(Duration::from_millis(50)));
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let Ok(packet) = Packet::from_bytes(&buf[..n]) else {
                continue;
            };
            if packet.get_token() != token.as_slice() {
                continue;
            }
            let Some(mut resp) = Response::from_packet(&packet) else {
                continue;
            };
            // A large answer comes block-wise: fetch the rest from the responder (RFC 7959).
            if let Some(mut b) = packet
                .get_first_option(CoapOption::Block2)
                .and_then(|v| Block::decode(v))
            {
                let mut mid = 100u16;
                while b.more {
                    mid = mid.wrapping_add(1);
                    let next = Block {
                        num: b.num + 1,
                        more: false,
                        szx: b.szx,
                    };
                    let _ = sock.send_to(&discovery_request(&token, mid, Some(next)), from);
                    let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
                    let Ok((n, _)) = sock.recv_from(&mut buf) else {
                        break;
                    };
                    let Ok(p) = Packet::from_bytes(&buf[..n]) else {
                        break;
                    };
                    let Some(r) = Response::from_packet(&p) else {
                        break;
                    };
                    resp.payload.extend_from_slice(&r.payload);
                    match p
                        .get_first_option(CoapOption::Block2)
                        .and_then(|v| Block::decode(v))
                    {
                        Some(nb) => b = nb,
                        None => break,
                    }
                }
            }
            let cf = resp
                .content_format
                .and_then(ContentFormat::from_number)
                .unwrap_or(ContentFormat::OcfCbor);
            let Ok(links) = decode_payload(cf, &resp.payload) else {
                continue;
            };
            merge(&mut found, &links, from);
        }
    }
    Ok(found.into_values().collect())
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.as_map()?
        .iter()
        .find(|(k, _)| k.as_text() == Some(key))?
        .1
        .as_text()
}

fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_map()?
        .iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
}

/// Adds the links of one answer, grouped by the device in their `anchor` (`ocf://<di>`).
pub fn merge(found: &mut BTreeMap<String, Found>, links: &Value, from: SocketAddr) {
    let Some(links) = links.as_array() else {
        return;
    };
    for link in links {
        let Some(di) = text(link, "anchor").and_then(|a| a.strip_prefix("ocf://")) else {
            continue;
        };
        let entry = found.entry(di.to_string()).or_insert_with(|| Found {
            di: di.to_string(),
            ..Found::default()
        });
        if !entry.from.contains(&from) {
            entry.from.push(from);
        }
        if let Some(eps) = field(link, "eps").and_then(Value::as_array) {
            for ep in eps.iter().filter_map(|e| text(e, "ep")) {
                if !entry.eps.iter().any(|x| x == ep) {
                    entry.eps.push(ep.to_string());
                }
            }
        }
        if let Some(href) = text(link, "href") {
            let types = field(link, "rt")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_text().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if !entry.resources.iter().any(|(h, _)| h == href) {
                entry.resources.push((href.to_string(), types));
            }
        }
    }
}

/// The device's address as seen by the discovery answer, for a `--device` argument.
pub fn answered_from(f: &Found) -> Option<IpAddr> {
    f.from.first().map(SocketAddr::ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_interfaces_are_listed_once_each_by_index() {
        let list = ipv6_interfaces();
        let mut unique = list.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), list.len(), "{list:?}");
        assert!(!list.contains(&0), "{list:?}");
    }

    #[test]
    fn links_are_grouped_by_anchor_with_their_endpoints() {
        let link = |di: &str, href: &str, ep: &str| {
            Value::Map(vec![
                ("href".into(), Value::Text(href.into())),
                (
                    "rt".into(),
                    Value::Array(vec![Value::Text("oic.r.x".into())]),
                ),
                ("anchor".into(), Value::Text(format!("ocf://{di}"))),
                (
                    "eps".into(),
                    Value::Array(vec![Value::Map(vec![(
                        "ep".into(),
                        Value::Text(ep.into()),
                    )])]),
                ),
            ])
        };
        let mut found = BTreeMap::new();
        let from: SocketAddr = "127.0.0.1:5683".parse().unwrap();
        merge(
            &mut found,
            &Value::Array(vec![
                link("a", "/x", "coap://1"),
                link("a", "/y", "coap+tcp://1"),
            ]),
            from,
        );
        merge(
            &mut found,
            &Value::Array(vec![link("b", "/x", "coap://2"), Value::Bool(true)]),
            from,
        );
        let a = &found["a"];
        assert_eq!(a.eps, ["coap://1", "coap+tcp://1"]);
        assert_eq!(a.resources.len(), 2);
        assert_eq!(found.len(), 2);
        // Garbage does not panic.
        merge(&mut found, &Value::Text("x".into()), from);
    }
}
