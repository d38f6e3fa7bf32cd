//! Fuzzes OCF's standard ownership transfer on the device side: the DTLS cookie exchange
//! (`ocf::security::dtls_hello`) and `ocf::server::Server` with Device Ownership Connections
//! (`ocf::security::doc`): the method selected in the clear, PSK lookups (the Random PIN, owner
//! credentials), DTLS sessions authenticated every way, and requests on them.
//!
//! Input: records `[op, len, bytes (len)]`. `op % 8`: 0 a ClientHello (parsed; if it is one,
//! its HelloVerifyRequest and its cookieless predecessor are made, and the predecessor must
//! parse again with an empty cookie); 1 a PSK lookup with `bytes` as identity; 2 opens DTLS
//! session `op >> 3` authenticated by the Random PIN, 3 by the owner's PSK, 4 by a certificate,
//! each with session secrets from `bytes`; 5 closes session `op >> 3`; 6 serves `bytes` as an
//! RFC 7252 message from UDP, 7 on DTLS session `op >> 3`. Messages get one of the SVR hrefs
//! (chosen by the message's first byte) as Uri-Path, so the rules are reached. The server
//! offers Random PIN and Manufacturer Certificate.
//!
//! The only property checked is "never panics" (nor hangs, nor exhausts memory), plus the
//! round trip of the cookieless hello.
#![no_main]

use std::time::Instant;

use coap_lite::{CoapOption, Packet};
use libfuzzer_sys::fuzz_target;
use ocf::cloud::session::{self, CloudSession, Timing};
use ocf::resource::{Device, DeviceInfo, PlatformInfo};
use ocf::security::doc::SessionAuth;
use ocf::security::dtls_hello::ClientHello;
use ocf::security::dtls_keys::{SessionSecrets, TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA256};
use ocf::security::{PeerIdentity, Pin, SecurityState};
use ocf::server::{ConnKind, Options, Peer, Server};

const DI: &str = "2f1b6a3e-9c1d-4c3e-8f3a-0d3f5b8c9a11";
const OWNER: &str = "0a0b0c0d-0000-4000-8000-00000000000e";
const HREFS: [&str; 6] = [
    "/oic/sec/doxm",
    "/oic/sec/pstat",
    "/oic/sec/cred",
    "/oic/sec/acl2",
    "/oic/d",
    "/oic/sec/csr",
];

fn random(buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(151).wrapping_add(7);
    }
}

fn server() -> Server {
    let d = Device::new(
        DeviceInfo {
            di: DI.into(),
            piid: "6d0f9ab2-33c3-4d8e-b1f1-5a7c0e2f4b60".into(),
            name: "fuzz".into(),
            device_type: "oic.d.sensor".into(),
            spec_version: "ocf.2.5.0".into(),
            data_model_version: "ocf.res.1.3.0".into(),
            software_version: "0.1.0".into(),
        },
        PlatformInfo::default(),
    );
    let session = CloudSession::new(
        session::DeviceInfo {
            di: DI.into(),
            name: "fuzz".into(),
        },
        Timing::default(),
        7,
    );
    let mut s = Server::new(
        d,
        SecurityState::new(DI),
        session,
        Options {
            dev_mode: false,
            pin: Pin::new("12345678").expect("PIN"),
            random,
            default_name: "fuzz".into(),
            cloud_timing: Timing::default(),
        },
        Instant::now(),
    )
    .expect("server");
    s.set_offered_oxms(&[1, 2]);
    s
}

fn secrets(bytes: &[u8]) -> SessionSecrets {
    let mut s = SessionSecrets {
        master_secret: [0; 48],
        client_random: [0; 32],
        server_random: [0; 32],
        suite: TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA256,
    };
    for (i, b) in bytes.iter().enumerate() {
        s.master_secret[i % 48] ^= *b;
        if i == 0 {
            // Now and then a suite without a key block.
            s.suite = [0xC037, 0xC0AE, 0xC0AD, 0x1301][usize::from(*b) % 4];
        }
    }
    s
}

fuzz_target!(|data: &[u8]| {
    let mut s = server();
    let now = Instant::now();
    let mut rest = data;
    while rest.len() >= 2 {
        let (op, len) = (rest[0], usize::from(rest[1]));
        let bytes = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[(2 + len).min(rest.len())..];
        let id = u64::from(op >> 3) + 1;
        match op % 8 {
            0 => {
                if let Some(h) = ClientHello::parse(bytes) {
                    let _ = h.hello_verify_request(&[1; 16]);
                    if let Some(first) = h.without_cookie() {
                        let again = ClientHello::parse(&first).expect("the rebuilt hello parses");
                        assert!(again.cookie.is_empty());
                    }
                }
            }
            1 => {
                let _ = s.dtls_psk(bytes, now);
            }
            2 | 3 | 4 => {
                let auth = match op % 8 {
                    2 => SessionAuth::RandomPin,
                    3 => SessionAuth::Psk {
                        subject: OWNER.into(),
                    },
                    _ => SessionAuth::Certificate(bytes.first().map(|b| PeerIdentity {
                        uuid: Some(OWNER.into()),
                        spki_sha256: [*b; 32],
                        chain_verified: b % 2 == 0,
                    })),
                };
                s.open(
                    id,
                    ConnKind::Dtls {
                        auth,
                        secrets: Some(secrets(bytes)),
                    },
                );
            }
            5 => s.close(id),
            _ => {
                let Ok(mut packet) = Packet::from_bytes(bytes) else {
                    continue;
                };
                let href = HREFS[usize::from(bytes.first().copied().unwrap_or(0)) % HREFS.len()];
                packet.clear_option(CoapOption::UriPath);
                for seg in href.trim_start_matches('/').split('/') {
                    packet.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
                }
                let peer = if op % 8 == 6 {
                    Peer::Udp("192.0.2.1:5683".parse().unwrap())
                } else {
                    Peer::Dtls(id)
                };
                let _ = s.handle(peer, &packet, now);
                let _ = s.take_notifications();
            }
        }
    }
});
