//! Device endpoints: parsing `coaps+tcp://IP:PORT` (IPv6 in brackets, with an optional
//! `%zone`), and picking the secure endpoint of a device found by discovery.

use std::net::{IpAddr, SocketAddr, SocketAddrV6};

/// The default port of `coaps+tcp` (RFC 8323 §8.2).
pub const COAPS_TCP_PORT: u16 = 5684;

/// Parses a secure device endpoint: `coaps+tcp://IP[:PORT]`, `coaps+tcp://[IPv6%zone]:PORT`,
/// or a bare `IP:PORT`. Other schemes are refused with the reason.
pub fn parse_endpoint(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let rest = match s.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("coaps+tcp") => rest,
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("coap+tcp") || scheme.eq_ignore_ascii_case("coap") => {
            return Err(format!(
                "{s:?} is not a secure endpoint: onboarding needs the device's coaps+tcp endpoint"
            ))
        }
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("coaps") => {
            return Err(format!(
                "{s:?} is CoAP over DTLS, which this Mediator does not speak: use the device's coaps+tcp endpoint"
            ))
        }
        Some((scheme, _)) => return Err(format!("{s:?}: unknown scheme {scheme:?}; expected coaps+tcp://IP:PORT")),
        None => s,
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') || rest.contains('?') {
        return Err(format!(
            "{s:?}: an endpoint has no path; expected coaps+tcp://IP:PORT"
        ));
    }
    if let Some(inner) = rest.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: unclosed '[' in the address"))?;
        let port = match after {
            "" => COAPS_TCP_PORT,
            p => parse_port(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("{s:?}: expected :PORT after ']'"))?,
                s,
            )?,
        };
        let (ip, zone) = match host.split_once('%') {
            Some((ip, zone)) => (ip, Some(zone)),
            None => (host, None),
        };
        let ip: std::net::Ipv6Addr = ip
            .parse()
            .map_err(|_| format!("{s:?}: {ip:?} is not an IPv6 address"))?;
        let scope = match zone {
            None => 0,
            Some(z) => zone_index(z).ok_or_else(|| format!("{s:?}: no network interface {z:?}"))?,
        };
        return Ok(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope)));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, parse_port(p, s)?),
        None => (rest, COAPS_TCP_PORT),
    };
    let ip: IpAddr = host
        .parse()
        .map_err(|_| format!("{s:?}: {host:?} is not an IP address (IPv6 goes in brackets)"))?;
    Ok(SocketAddr::new(ip, port))
}

fn parse_port(p: &str, whole: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{whole:?}: {p:?} is not a port")),
        Ok(n) => Ok(n),
    }
}

/// The interface index of an IPv6 zone: a number, or an interface name.
fn zone_index(zone: &str) -> Option<u32> {
    if let Ok(n) = zone.parse::<u32>() {
        return Some(n);
    }
    nix::net::if_::if_nametoindex(zone)
        .ok()
        .filter(|&index| index != 0)
}

/// Formats an address as an endpoint URI.
pub fn endpoint_uri(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("coaps+tcp://{a}"),
        SocketAddr::V6(a) if a.scope_id() != 0 => {
            format!("coaps+tcp://[{}%{}]:{}", a.ip(), a.scope_id(), a.port())
        }
        SocketAddr::V6(a) => format!("coaps+tcp://[{}]:{}", a.ip(), a.port()),
    }
}

/// Picks the secure endpoint to use among a device's advertised `eps`, given the address its
/// discovery answer came from: an endpoint on that address first, then IPv4, then a routable
/// IPv6 address, then a link-local one with its zone. An unspecified address (`0.0.0.0`, `::`)
/// stands for the answering address. `None` if it advertises no coaps+tcp endpoint.
pub fn pick_endpoint(eps: &[String], answered_from: Option<IpAddr>) -> Option<SocketAddr> {
    let mut candidates: Vec<SocketAddr> = eps
        .iter()
        .filter(|e| e.to_ascii_lowercase().starts_with("coaps+tcp://"))
        .filter_map(|e| parse_endpoint(e).ok())
        .filter_map(|mut a| {
            if a.ip().is_unspecified() {
                a.set_ip(answered_from?);
            }
            Some(a)
        })
        .collect();
    let rank = |a: &SocketAddr| -> u8 {
        if Some(a.ip()) == answered_from {
            return 0;
        }
        match a {
            SocketAddr::V4(_) => 1,
            SocketAddr::V6(v6) if (v6.ip().segments()[0] & 0xffc0) != 0xfe80 => 2,
            SocketAddr::V6(v6) if v6.scope_id() != 0 => 3,
            SocketAddr::V6(_) => 4,
        }
    };
    candidates.sort_by_key(rank);
    candidates.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_secure_endpoints() {
        assert_eq!(
            parse_endpoint("coaps+tcp://127.0.0.1:4000").unwrap(),
            "127.0.0.1:4000".parse().unwrap()
        );
        assert_eq!(
            parse_endpoint("COAPS+TCP://10.1.2.3").unwrap(),
            "10.1.2.3:5684".parse().unwrap()
        );
        assert_eq!(
            parse_endpoint("127.0.0.1:9").unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        assert_eq!(
            parse_endpoint("coaps+tcp://[::1]:4000/").unwrap(),
            "[::1]:4000".parse().unwrap()
        );
        let v6 = parse_endpoint("coaps+tcp://[fe80::1%7]:4000").unwrap();
        let SocketAddr::V6(v6) = v6 else { panic!() };
        assert_eq!((v6.scope_id(), v6.port()), (7, 4000));
        assert_eq!(
            parse_endpoint("coaps+tcp://[fe80::1%lo]:1").map(|a| a.port()),
            Ok(1)
        );
    }

    #[test]
    fn refuses_insecure_and_malformed_endpoints() {
        for bad in [
            "coap+tcp://127.0.0.1:1",
            "coap://127.0.0.1:1",
            "coaps://127.0.0.1:1",
            "http://127.0.0.1:1",
            "coaps+tcp://127.0.0.1:0",
            "coaps+tcp://127.0.0.1:x",
            "coaps+tcp://localhost:1",
            "coaps+tcp://[::1:1",
            "coaps+tcp://127.0.0.1:1/oic/res",
            "coaps+tcp://[fe80::1%no-such-if0]:1",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad} accepted");
        }
        assert!(parse_endpoint("coap+tcp://127.0.0.1:1")
            .unwrap_err()
            .contains("not a secure endpoint"));
    }

    #[test]
    fn endpoint_uri_round_trips() {
        for s in [
            "coaps+tcp://127.0.0.1:4000",
            "coaps+tcp://[::1]:4000",
            "coaps+tcp://[fe80::1%3]:4000",
        ] {
            assert_eq!(endpoint_uri(&parse_endpoint(s).unwrap()), s);
        }
    }

    #[test]
    fn picks_the_secure_endpoint_of_the_answering_address() {
        let eps: Vec<String> = [
            "coap://192.168.1.9:5683",
            "coaps+tcp://[fe80::1%1]:5000",
            "coaps+tcp://[2001:db8::1]:5000",
            "coaps+tcp://192.168.1.9:5000",
            "coaps+tcp://10.0.0.9:5000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let from: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(
            pick_endpoint(&eps, Some(from)),
            Some("10.0.0.9:5000".parse().unwrap())
        );
        assert_eq!(
            pick_endpoint(&eps, None),
            Some("192.168.1.9:5000".parse().unwrap())
        );
        assert_eq!(
            pick_endpoint(&eps[1..3], None),
            Some("[2001:db8::1]:5000".parse().unwrap())
        );
        assert_eq!(pick_endpoint(&eps[..1], None), None);
        // A wildcard listener address stands for the address that answered.
        let any = vec!["coaps+tcp://0.0.0.0:7000".to_string()];
        assert_eq!(
            pick_endpoint(&any, Some(from)),
            Some("10.0.0.9:7000".parse().unwrap())
        );
        assert_eq!(pick_endpoint(&any, None), None);
    }
}
