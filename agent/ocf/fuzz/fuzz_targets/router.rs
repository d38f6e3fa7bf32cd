//! Fuzzes the device's one entry point (`ocf::server::Server::handle`: transport policy, access
//! control, ownership transfer, DELETE, maintenance, the resource tree) behind every transport.
//!
//! Input: `[chunk, szx, n, shapes (n bytes), stream length (2 bytes, big-endian), stream,
//! datagrams...]`, where the datagrams are records `[len, shape, datagram (len bytes)]`. The
//! stream is pushed `chunk` bytes at a time through the RFC 8323 frame decoder and every decoded
//! packet is served as if it came over the transport its shape's top bit picks (a secure local
//! connection with the owner's certificate, or the cloud link with the cloud's), on connection 1;
//! each datagram that parses as an RFC 7252 message is served as unicast and as multicast from
//! one of two UDP peers, and also over plain coap+tcp. The server runs in the development mode
//! when the first stream byte is odd (everything served, no access control) and secure
//! otherwise, with an ACE giving the cloud everything, so both sides of every rule are reached. After every message
//! the notifications are taken (the temperature changes each time, so observers are due), and
//! each response is cut into blocks with `szx` as the daemon does. The device has `/oic/res`,
//! `/oic/d`, `/oic/p`, `/oic/con`, the `/oic/sec/*` resources, `/oic/mnt`, a switch, a sensor
//! that fails every third reading, and CoAPCloudConf on the server's `CloudSession`; every
//! maintenance action asked for is taken and finished at once, so the rules run again.
//!
//! A shape byte (the i-th of `shapes` for the i-th frame, the record's own for a datagram; none
//! or 0 leaves the message as it came) may overwrite the message's Uri-Path with one of the
//! device's hrefs, its Uri-Query with an interface or type filter, and its Content-Format /
//! Accept / OCF version options: a random byte string almost never spells `oic` `res` in two
//! Uri-Path options, so without this the router's handlers are out of the fuzzer's reach.
//!
//! The only property checked is "never panics" (nor hangs, nor exhausts memory).
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Instant;

use ciborium::Value;
use std::collections::LinkedList;

use coap_lite::option_value::OptionValueU32;
use coap_lite::{CoapOption, MessageType, Packet};
use libfuzzer_sys::fuzz_target;
use ocf::cloud::session::{self, CloudSession, Timing};
use ocf::coap::block;
use ocf::coap::tcp::{self, FrameDecoder};
use ocf::resource::endpoint::Endpoint;
use ocf::resource::{
    Backend, Device, DeviceInfo, Interface, Origin, PlatformInfo, Policy, Props,
    Resource, ResourceError, OCF_ACCEPT_VERSION, OCF_CONTENT_VERSION,
};
use ocf::security::{AclBackend, PeerIdentity, Pin, SecurityState};
use ocf::server::{ConnKind, Options, Peer, Server};

const DI: &str = "2f1b6a3e-9c1d-4c3e-8f3a-0d3f5b8c9a11";
const SID: &str = "9b8c6a0e-1f2d-4e3c-8a7b-6c5d4e3f2a1b";
/// Max-Message-Size of the stream (the daemon's is of this order).
const MAX_MESSAGE_SIZE: usize = 16 * 1024;

/// A binary switch (`oic.r.switch.binary`).
struct Switch(bool);

impl Backend for Switch {
    fn retrieve(&mut self) -> Result<Props, ResourceError> {
        Ok(Props::from([("value".to_string(), Value::Bool(self.0))]))
    }

    fn update(&mut self, props: &Props) -> Result<(), ResourceError> {
        let mut value = self.0;
        for (k, v) in props {
            match (k.as_str(), v) {
                ("value", Value::Bool(b)) => value = *b,
                ("value", _) => {
                    return Err(ResourceError::BadRequest("value must be a boolean".into()))
                }
                (other, _) => {
                    return Err(ResourceError::BadRequest(format!(
                        "unknown property {other:?}"
                    )))
                }
            }
        }
        self.0 = value;
        Ok(())
    }
}

/// A read-only temperature sensor whose reading changes on every call and that fails every
/// third time.
struct Thermo(u32);

impl Backend for Thermo {
    fn retrieve(&mut self) -> Result<Props, ResourceError> {
        self.0 = self.0.wrapping_add(1);
        if self.0 % 3 == 0 {
            return Err(ResourceError::Unavailable(
                "sensor at 0x48 does not answer".into(),
            ));
        }
        Ok(Props::from([
            (
                "temperature".to_string(),
                Value::Float(20.0 + f64::from(self.0 % 50) / 4.0),
            ),
            ("units".to_string(), Value::Text("C".into())),
        ]))
    }
}

fn now() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// A deterministic stand-in for the CSPRNG (the fuzzer needs reproducible runs).
fn random(buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(151).wrapping_add(7);
    }
}

fn server(dev_mode: bool) -> Server {
    let mut d = Device::new(
        DeviceInfo {
            di: DI.into(),
            piid: "6d0f9ab2-33c3-4d8e-b1f1-5a7c0e2f4b60".into(),
            name: "fuzz".into(),
            device_type: "oic.d.sensor".into(),
            spec_version: "ocf.2.5.0".into(),
            data_model_version: "ocf.res.1.3.0,ocf.sh.1.3.0".into(),
            software_version: "0.1.0".into(),
        },
        PlatformInfo {
            pi: "a0b1c2d3-0000-4000-8000-000000000001".into(),
            manufacturer: "Example".into(),
            extra: Props::from([("mnmo".to_string(), Value::Text("Pi".into()))]),
        },
    );
    d.add(Resource::new(
        "/switch",
        &["oic.r.switch.binary"],
        &[Interface::Actuator, Interface::Baseline],
        Policy::discoverable_observable(),
        Box::new(Switch(false)),
    ))
    .expect("add /switch");
    d.add(Resource::new(
        "/temperature",
        &["oic.r.temperature"],
        &[Interface::Sensor, Interface::Baseline],
        Policy::discoverable_observable(),
        Box::new(Thermo(0)),
    ))
    .expect("add /temperature");
    d.set_endpoints(vec![
        Endpoint {
            scheme: "coap",
            addr: "127.0.0.1:5683".parse().unwrap(),
        },
        Endpoint {
            scheme: "coap+tcp",
            addr: "127.0.0.1:5684".parse().unwrap(),
        },
    ]);
    let session = CloudSession::new(
        session::DeviceInfo {
            di: DI.into(),
            name: "fuzz".into(),
        },
        Timing::default(),
        7,
    );
    let mut server = Server::new(
        d,
        SecurityState::new(DI),
        session,
        Options {
            dev_mode,
            pin: Pin::new("12345678").expect("PIN"),
            random,
            default_name: "fuzz".into(),
            cloud_timing: Timing::default(),
        },
        now(),
    )
    .expect("server");
    server.set_csr("-----BEGIN CERTIFICATE REQUEST-----\nMA==\n-----END CERTIFICATE REQUEST-----\n".into());
    // An ACE that gives the cloud everything, so forwarded requests reach the tree.
    let ace = Props::from([(
        "aclist2".to_string(),
        Value::Array(vec![Value::Map(vec![
            (
                "subject".into(),
                Value::Map(vec![("uuid".into(), Value::Text(SID.into()))]),
            ),
            (
                "resources".into(),
                Value::Array(vec![Value::Map(vec![("wc".into(), Value::Text("*".into()))])]),
            ),
            ("permission".into(), Value::Integer(31.into())),
        ])]),
    )]);
    let _ = AclBackend::new(server.security().clone()).update(&ace);
    server.open(
        1,
        ConnKind::Tls {
            identity: Some(PeerIdentity {
                uuid: Some("00000000-0000-4000-8000-0000000000aa".into()),
                spki_sha256: [7; 32],
                chain_verified: false,
            }),
            exporter: vec![5; 32],
        },
    );
    server.open(
        2,
        ConnKind::Cloud {
            identity: Some(PeerIdentity {
                uuid: Some(SID.into()),
                spki_sha256: [9; 32],
                chain_verified: true,
            }),
        },
    );
    server
}

/// Overwrites parts of a request as the shape byte says: bits 0-2 the Uri-Path, bits 3-5 the
/// Uri-Query, bits 6-7 the content negotiation options. 0 in a field keeps what the message has.
fn shape(packet: &mut Packet, shape: u8) {
    const PATHS: [&[&str]; 7] = [
        &["oic", "res"],
        &["oic", "d"],
        &["oic", "mnt"],
        &["switch"],
        &["temperature"],
        &["CoapCloudConfResURI"],
        &["switch", "x"],
    ];
    const QUERIES: [&[&str]; 7] = [
        &["if=oic.if.baseline"],
        &["if=oic.if.ll"],
        &["if=oic.if.b"],
        &["if=oic.if.a"],
        &["rt=oic.r.switch.binary"],
        &["rt=oic.wk.res", "if=oic.if.baseline"],
        &["if=oic.if.rw"],
    ];
    let list = |items: &[&str]| -> LinkedList<Vec<u8>> {
        items.iter().map(|s| s.as_bytes().to_vec()).collect()
    };
    if let Some(path) = usize::from(shape & 7).checked_sub(1) {
        packet.set_option(CoapOption::UriPath, list(PATHS[path]));
    }
    if let Some(query) = usize::from((shape >> 3) & 7).checked_sub(1) {
        packet.set_option(CoapOption::UriQuery, list(QUERIES[query]));
    }
    let uint = |v: u32| -> Vec<u8> { OptionValueU32(v).into() };
    let version = || uint(0x0800);
    match shape >> 6 {
        1 => {
            packet.set_option(CoapOption::ContentFormat, [uint(10000)].into());
            packet.set_option(CoapOption::Unknown(OCF_ACCEPT_VERSION), [version()].into());
            packet.set_option(CoapOption::Unknown(OCF_CONTENT_VERSION), [version()].into());
        }
        2 => {
            packet.set_option(CoapOption::ContentFormat, [uint(50)].into());
            packet.set_option(CoapOption::Accept, [uint(50)].into());
        }
        3 => {
            packet.set_option(CoapOption::ContentFormat, [uint(60)].into());
            packet.set_option(CoapOption::Accept, [uint(10000)].into());
        }
        _ => {}
    }
}

/// What the daemon does with a response before sending it.
fn send(request: &Packet, mut response: Packet, szx: u8, stream: bool) {
    block::apply_block2(request, &mut response, szx);
    if stream {
        let _ = tcp::encode(&response);
    } else {
        let _ = response.to_bytes();
    }
}

/// Takes and finishes whatever maintenance action was asked for (so the rules run again),
/// marks the sensor changed and sends what is due.
fn notify(server: &mut Server, szx: u8) {
    if server.take_maintenance_request().is_some() {
        server.maintenance_finished(None);
    }
    server.device_mut().mark_changed("/temperature");
    for n in server.take_notifications() {
        send(
            &Packet::new(),
            n.packet,
            szx,
            matches!(n.origin, Origin::Stream(_)),
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let [chunk, szx, n, rest @ ..] = data else {
        return;
    };
    let chunk = usize::from(*chunk).max(1);
    let szx = szx % (block::MAX_SZX + 1);
    let (shapes, rest) = rest.split_at(usize::from(*n).min(rest.len()));
    let [len_hi, len_lo, rest @ ..] = rest else {
        return;
    };
    let stream_len = usize::from(u16::from_be_bytes([*len_hi, *len_lo])).min(rest.len());
    let (stream, mut datagrams) = rest.split_at(stream_len);

    let mut server = server(stream.first().is_some_and(|b| b & 1 == 1));

    let mut decoder = FrameDecoder::new(MAX_MESSAGE_SIZE);
    let mut frames = 0;
    'stream: for piece in stream.chunks(chunk) {
        decoder.push(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(mut packet)) => {
                    let sel = shapes.get(frames).copied().unwrap_or(0);
                    shape(&mut packet, sel);
                    frames += 1;
                    // The owner's secure connection, or the cloud link.
                    let peer = if frames % 2 == 0 { Peer::Cloud(2) } else { Peer::Tls(1) };
                    let (response, _events) = server.handle(peer, &packet, now());
                    if let Some(response) = response {
                        send(&packet, response, szx, true);
                    }
                    notify(&mut server, szx);
                }
                Ok(None) => break,
                Err(_) => break 'stream,
            }
        }
    }

    while let [len, sel, tail @ ..] = datagrams {
        let len = usize::from(*len).min(tail.len());
        let (datagram, tail) = tail.split_at(len);
        datagrams = tail;
        let Ok(mut packet) = Packet::from_bytes(datagram) else {
            continue;
        };
        shape(&mut packet, *sel);
        let peer = SocketAddr::from(([192, 0, 2, 1 + (len as u8 & 1)], 5683));
        let origin = Origin::Udp(peer);
        if packet.header.get_type() == MessageType::Reset {
            server.device_mut().cancel_observation(&origin, packet.get_token());
            continue;
        }
        for (via, stream) in [
            (Peer::Udp(peer), false),
            (Peer::Multicast(peer), false),
            (Peer::Tcp(3), true),
        ] {
            if let (Some(response), _events) = server.handle(via, &packet, now()) {
                send(&packet, response, szx, stream);
            }
        }
        notify(&mut server, szx);
    }

    server.close(1);
    server.close(2);
    notify(&mut server, szx);
});
