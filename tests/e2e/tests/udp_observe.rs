//! Observation over CoAP over UDP (RFC 7641) by a raw UDP client that registers and then never
//! acknowledges anything: the agent's Confirmable notification is retransmitted with the
//! RFC 7252 §4.2 back-off (MAX_RETRANSMIT = 4 times, each timeout twice the previous), and once
//! it gives up the observation is over: later changes notify no one (RFC 7641 §4.5). UDP serves
//! every resource only in the development mode, so the agent runs in it.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use ciborium::Value;
use coap_lite::ResponseType;
use coap_lite::{MessageType, Packet};
use ocf_e2e::*;

fn switch_to(agent: &Agent, on: bool) {
    let r = TcpClient::connect(agent.tcp())
        .request(&post_cbor("/switch", &map(&[("value", Value::Bool(on))])));
    assert_eq!(r.code, ResponseType::Changed, "{}", r.diagnostic());
}

fn recv(socket: &UdpSocket, wait: Duration) -> Option<(Instant, Packet)> {
    socket.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = socket.recv_from(&mut buf).ok()?;
    Some((Instant::now(), Packet::from_bytes(&buf[..n]).ok()?))
}

#[test]
fn an_unacknowledged_con_notification_is_retransmitted_then_ends_the_observation() {
    let dir = TempDir::new("udp-observe");
    let agent = Agent::start(dir.path(), &[]);
    let mut client = UdpClient::new(agent.udp());
    let token = [0x0b, 0x5e];
    let mut register = get("/switch").to_packet(&token);
    register.set_observe_value(0);
    client.send(&mut register, false);
    let (_, first) = recv(&client.socket, Duration::from_secs(5)).expect("registration answer");
    assert!(first.get_observe_value().is_some(), "not registered");

    // Changes until a Confirmable notification comes (one in eight is).
    let mut con = None;
    for i in 0..16 {
        switch_to(&agent, i % 2 == 0);
        while let Some((at, p)) = recv(&client.socket, Duration::from_millis(300)) {
            if p.get_token() == token && p.header.get_type() == MessageType::Confirmable {
                con = Some((at, p));
            }
        }
        if con.is_some() {
            break;
        }
    }
    let (sent_at, con) = con.expect("no Confirmable notification");
    let mid = con.header.message_id;

    // Never acknowledged: the same message again, 4 times, each wait twice the previous.
    let mut times = vec![sent_at];
    while let Some((at, p)) = recv(&client.socket, Duration::from_secs(60)) {
        if p.header.message_id == mid {
            assert_eq!(p.header.get_type(), MessageType::Confirmable);
            assert_eq!(p.payload, con.payload);
            times.push(at);
        }
        if times.len() == 5 {
            break;
        }
    }
    assert_eq!(times.len(), 5, "retransmissions seen: {}", times.len() - 1);
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // The first is 2–3 s (ACK_TIMEOUT × [1, ACK_RANDOM_FACTOR]); the rest double, give or take
    // the scheduling of a busy machine.
    assert!(gaps[0] >= Duration::from_millis(1900), "{gaps:?}");
    for w in gaps.windows(2) {
        let ratio = w[1].as_secs_f64() / w[0].as_secs_f64();
        assert!((1.7..2.3).contains(&ratio), "{gaps:?}");
    }
    // After the last timeout (twice the last gap) the agent gives up: the observation is over.
    std::thread::sleep(gaps[3] * 2 + Duration::from_secs(2));
    while recv(&client.socket, Duration::from_millis(100)).is_some() {}
    for on in [true, false] {
        switch_to(&agent, on);
    }
    let after = recv(&client.socket, Duration::from_secs(2));
    assert!(
        after.is_none(),
        "still notified after the give-up: {:?}",
        after.map(|(_, p)| p)
    );
}
