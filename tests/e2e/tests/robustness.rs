//! Hostile bytes on the agent's ports: the agent keeps serving everyone else with bounded memory.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use coap_lite::ResponseType;
use ocf_e2e::*;

fn still_serves(agent: &Agent) {
    let mut tcp = TcpClient::connect(agent.tcp());
    assert_eq!(tcp.request(&get("/oic/d")).code, ResponseType::Content);
    let mut udp = UdpClient::new(agent.udp());
    assert_eq!(udp.request(&get("/oic/d")).1.code, ResponseType::Content);
}

/// Sends `bytes` on a fresh connection and reads whatever comes back until the agent closes it
/// (or a short timeout passes).
fn hit(agent: &Agent, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(agent.tcp()).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(150)))
        .unwrap();
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[test]
fn garbage_truncated_and_huge_frames_do_not_hurt_other_connections() {
    let dir = TempDir::new("robust");
    let agent = Agent::start(dir.path(), &[]);
    // Keep one well-behaved connection open through the whole attack.
    let mut steady = TcpClient::connect(agent.tcp());
    assert_eq!(steady.request(&get("/oic/res")).code, ResponseType::Content);
    let rss_before = agent.rss_kib().expect("VmRSS");

    // A frame declaring a 1 GiB body (Len 15: 4-byte extended length), then 64 KiB of it.
    let mut huge = vec![0xF0, 0x3F, 0xFE, 0xFE, 0xF3, 0x01];
    huge.extend(std::iter::repeat_n(0x41u8, 64 * 1024));
    // Truncated frames: a header promising more than ever comes, then EOF.
    let truncated: &[&[u8]] = &[&[0x08], &[0xD1, 0x20, 0x01], &[0x48, 0x01, 1, 2, 3]];
    let mut seed: u32 = 0x1234_5678;
    for round in 0..30 {
        let answer = hit(&agent, &huge);
        // The agent refuses the frame from its header: an Abort (7.05 = 0xE5) follows our CSM.
        if round == 0 {
            assert!(
                answer.contains(&0xE5),
                "expected an Abort, got {answer:02x?}"
            );
        }
        for t in truncated {
            hit(&agent, t);
        }
        // Pseudo-random garbage.
        let garbage: Vec<u8> = (0..2048)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            })
            .collect();
        hit(&agent, &garbage);
        // And on UDP.
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        u.send_to(&garbage[..200], agent.udp()).unwrap();
        u.send_to(&[0x40], agent.udp()).unwrap();
    }
    assert_eq!(
        steady.request(&get("/oic/d")).code,
        ResponseType::Content,
        "steady connection survived"
    );
    still_serves(&agent);
    let rss_after = agent.rss_kib().expect("VmRSS");
    // Bounded memory: the attack must not leave its bytes behind. 30 × 64 KiB alone would be
    // 1.9 MiB; allow allocator slack but not the attack's size.
    assert!(
        rss_after < rss_before + 4096,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}

#[test]
fn connection_flood_is_bounded() {
    let dir = TempDir::new("flood");
    let agent = Agent::start(dir.path(), &[]);
    // Open more idle connections than the agent serves at once.
    let idle: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(agent.tcp()).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    drop(idle);
    std::thread::sleep(Duration::from_millis(300));
    still_serves(&agent);
}
