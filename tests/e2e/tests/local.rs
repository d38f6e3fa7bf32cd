//! The agent on the simulated board, spoken to over loopback UDP and TCP by the project's own
//! clients: discovery, reads, writes, observe, identity persistence, shutdown.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use ciborium::Value;
use coap_lite::{MessageClass, MessageType, Packet, ResponseType};
use ocf::coap::signal::Signal;
use ocf::resource::{Method, Request, Response};
use ocf_e2e::*;

fn hrefs(links: &Value) -> Vec<String> {
    links
        .as_array()
        .expect("array of links")
        .iter()
        .map(|l| {
            key(l, "href")
                .and_then(Value::as_text)
                .expect("href")
                .to_string()
        })
        .collect()
}

#[test]
fn identity_is_created_once_kept_across_restarts_and_private() {
    let dir = TempDir::new("identity");
    let di = {
        let mut agent = Agent::start(dir.path(), &[]);
        assert!(agent.terminate().success());
        agent.di.clone()
    };
    let mode = std::fs::metadata(dir.path().join("identity.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let mut agent = Agent::start(dir.path(), &[]);
    assert_eq!(agent.di, di, "di must survive a restart");
    let mut tcp = TcpClient::connect(agent.tcp());
    let d = body(&tcp.request(&get("/oic/d")));
    assert_eq!(key(&d, "di").and_then(Value::as_text), Some(di.as_str()));
    let piid = key(&d, "piid")
        .and_then(Value::as_text)
        .unwrap()
        .to_string();
    assert_ne!(piid, di);
    assert!(agent.terminate().success());
}

#[test]
fn discovery_over_udp_and_tcp_lists_the_sim_resources_with_both_endpoints() {
    let dir = TempDir::new("discovery");
    let agent = Agent::start(dir.path(), &[]);
    let mut udp = UdpClient::new(agent.udp());
    let (_, r) = udp.request(&get("/oic/res"));
    assert_eq!(r.code, ResponseType::Content);
    let links = body(&r);
    let h = hrefs(&links);
    for want in [
        "/oic/res",
        "/oic/d",
        "/oic/p",
        "/temperature",
        "/humidity",
        "/switch",
    ] {
        assert!(h.contains(&want.to_string()), "{want} missing from {h:?}");
    }
    let temp = links
        .as_array()
        .unwrap()
        .iter()
        .find(|l| key(l, "href").and_then(Value::as_text) == Some("/temperature"))
        .unwrap();
    let eps: Vec<String> = key(temp, "eps")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| key(e, "ep").unwrap().as_text().unwrap().to_string())
        .collect();
    assert!(eps.contains(&format!("coap://{}", agent.udp())), "{eps:?}");
    assert!(
        eps.contains(&format!("coap+tcp://{}", agent.tcp())),
        "{eps:?}"
    );
    assert_eq!(
        key(temp, "anchor").and_then(Value::as_text),
        Some(format!("ocf://{}", agent.di).as_str())
    );

    let mut tcp = TcpClient::connect(agent.tcp());
    let r = tcp.request(&get("/oic/res"));
    assert_eq!(hrefs(&body(&r)), h, "same links over TCP");
}

#[test]
fn switch_is_written_and_read_back_over_both_transports() {
    let dir = TempDir::new("switch");
    let agent = Agent::start(dir.path(), &[]);
    let mut tcp = TcpClient::connect(agent.tcp());
    let r = tcp.request(&post_cbor("/switch", &map(&[("value", Value::Bool(true))])));
    assert_eq!(r.code, ResponseType::Changed);
    let mut udp = UdpClient::new(agent.udp());
    let (_, r) = udp.request(&get("/switch"));
    assert_eq!(key(&body(&r), "value"), Some(&Value::Bool(true)));
    let (_, r) = udp.request(&post_cbor(
        "/switch",
        &map(&[("value", Value::Bool(false))]),
    ));
    assert_eq!(r.code, ResponseType::Changed);
    let r = tcp.request(&get("/switch"));
    assert_eq!(key(&body(&r), "value"), Some(&Value::Bool(false)));
    // A bad body changes nothing and says why.
    let r = tcp.request(&post_cbor(
        "/switch",
        &map(&[("value", Value::Text("on".into()))]),
    ));
    assert_eq!(r.code, ResponseType::BadRequest);
    assert!(!r.payload.is_empty());
    let r = tcp.request(&get("/switch"));
    assert_eq!(key(&body(&r), "value"), Some(&Value::Bool(false)));
}

#[test]
fn json_accept_and_json_bodies() {
    let dir = TempDir::new("json");
    let agent = Agent::start(dir.path(), &[]);
    let mut tcp = TcpClient::connect(agent.tcp());
    let mut req = Request::new(Method::Post, "/switch");
    req.content_format = Some(50);
    req.accept = Some(50);
    req.payload = br#"{"value": true}"#.to_vec();
    let r = tcp.request(&req);
    assert_eq!(r.code, ResponseType::Changed);
    assert_eq!(r.content_format, Some(50));
    let json: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
    assert_eq!(json["value"], true);
    let mut req = get("/temperature");
    req.accept = Some(50);
    let json: serde_json::Value = serde_json::from_slice(&tcp.request(&req).payload).unwrap();
    assert!(json["temperature"].is_number(), "{json}");
    assert_eq!(json["units"], "C");
}

#[test]
fn error_codes_come_with_diagnostics() {
    let dir = TempDir::new("errors");
    let agent = Agent::start(dir.path(), &[]);
    let mut tcp = TcpClient::connect(agent.tcp());
    let mut bad_accept = get("/switch");
    bad_accept.accept = Some(0);
    let mut old_version = get("/switch");
    old_version.accept_version = Some(0x0700);
    let mut bad_cf = Request::new(Method::Post, "/switch");
    bad_cf.content_format = Some(42);
    bad_cf.payload = b"x".to_vec();
    let mut garbage = Request::new(Method::Post, "/switch");
    garbage.content_format = Some(10000);
    garbage.payload = vec![0xff, 0x00, 0x13];
    for (req, code) in [
        (get("/no/such/thing"), ResponseType::NotFound),
        (
            Request::new(Method::Delete, "/switch"),
            ResponseType::MethodNotAllowed,
        ),
        (
            post_cbor("/temperature", &map(&[("temperature", Value::Float(1.0))])),
            ResponseType::MethodNotAllowed,
        ),
        (bad_accept, ResponseType::NotAcceptable),
        (old_version, ResponseType::UnsupportedContentFormat),
        (bad_cf, ResponseType::UnsupportedContentFormat),
        (garbage, ResponseType::BadRequest),
    ] {
        let r = tcp.request(&req);
        assert_eq!(r.code, code, "{} {}", req.path, r.diagnostic());
        assert!(!r.payload.is_empty(), "{code:?} without diagnostic");
    }
}

#[test]
fn temperature_observation_over_tcp_delivers_increasing_notifications_until_cancelled() {
    let dir = TempDir::new("observe-tcp");
    let agent = Agent::start(dir.path(), &[]);
    let mut tcp = TcpClient::connect(agent.tcp());
    let mut req = get("/temperature");
    req.observe = Some(0);
    let token = b"obs-temp".to_vec();
    let first = tcp.request_with_token(&req, &token);
    assert_eq!(first.code, ResponseType::Content);
    let mut last = first.observe.expect("registration answered with Observe");
    let deadline = Instant::now() + Duration::from_secs(20);
    for _ in 0..2 {
        let n = tcp.recv_token(&token).expect("notification");
        assert!(Instant::now() < deadline);
        let n = Response::from_packet(&n).unwrap();
        let seq = n.observe.expect("notification has Observe");
        assert!(seq > last, "sequence {seq} after {last}");
        last = seq;
        assert!(key(&body(&n), "temperature").is_some());
    }
    // Deregister: the answer has no Observe and no more notifications come.
    let mut cancel = get("/temperature");
    cancel.observe = Some(1);
    let r = tcp.request_with_token(&cancel, &token);
    assert!(r.observe.is_none());
    tcp.stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut buf = [0u8; 512];
    let got = tcp.stream.read(&mut buf);
    assert!(got.is_err(), "no notification after deregistering: {got:?}");
}

#[test]
fn switch_observation_notifies_on_write_and_ends_with_the_connection() {
    let dir = TempDir::new("observe-switch");
    let mut agent = Agent::start(dir.path(), &[]);
    let mut watcher = TcpClient::connect(agent.tcp());
    let mut req = get("/switch");
    req.observe = Some(0);
    let r = watcher.request_with_token(&req, b"sw");
    assert!(r.observe.is_some());
    let mut writer = TcpClient::connect(agent.tcp());
    writer.request(&post_cbor("/switch", &map(&[("value", Value::Bool(true))])));
    let n = Response::from_packet(&watcher.recv_token(b"sw").expect("notification")).unwrap();
    assert_eq!(key(&body(&n), "value"), Some(&Value::Bool(true)));
    drop(watcher);
    std::thread::sleep(Duration::from_millis(200));
    writer.request(&post_cbor(
        "/switch",
        &map(&[("value", Value::Bool(false))]),
    ));
    std::thread::sleep(Duration::from_millis(200));
    let log = agent.log().join("\n");
    assert!(
        log.contains("observations ended"),
        "the closed connection's observation must be dropped:\n{log}"
    );
}

#[test]
fn udp_message_layer_acks_dedups_and_resets() {
    let dir = TempDir::new("udp");
    let agent = Agent::start(dir.path(), &[]);
    let mut udp = UdpClient::new(agent.udp());
    // CON → piggybacked ACK with the same Message-ID.
    let mut p = get("/switch").to_packet(&[1, 2]);
    let mid = udp.send(&mut p, true);
    let r = udp.recv().unwrap();
    assert_eq!(r.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(r.header.message_id, mid);
    assert_eq!(r.header.code, MessageClass::Response(ResponseType::Content));
    // NON → NON.
    let mut p = get("/switch").to_packet(&[3]);
    udp.send(&mut p, false);
    let r = udp.recv().unwrap();
    assert_eq!(r.header.get_type(), MessageType::NonConfirmable);
    assert_eq!(r.get_token(), [3]);
    // A duplicate of a POST is answered from the cache, not executed twice: toggle-free check
    // by sending the same Message-ID with a *different* body; the cached answer comes back.
    let mut set = post_cbor("/switch", &map(&[("value", Value::Bool(true))])).to_packet(&[4]);
    let mid = udp.send(&mut set, true);
    let first = udp.recv().unwrap();
    let mut dup = post_cbor("/switch", &map(&[("value", Value::Bool(false))])).to_packet(&[4]);
    dup.header.message_id = mid;
    dup.header.set_type(MessageType::Confirmable);
    udp.socket
        .send_to(&dup.to_bytes().unwrap(), udp.peer)
        .unwrap();
    let second = udp.recv().unwrap();
    assert_eq!(first, second, "duplicate answered from the cache");
    let (_, r) = udp.request(&get("/switch"));
    assert_eq!(
        key(&body(&r), "value"),
        Some(&Value::Bool(true)),
        "duplicate was not executed"
    );
    // An ACK nobody expects is rejected by silently ignoring it (RFC 7252 §4.3) ...
    let mut ack = Packet::new();
    ack.header.set_type(MessageType::Acknowledgement);
    ack.header.message_id = 4242;
    ack.header.code = MessageClass::Empty;
    udp.socket
        .send_to(&ack.to_bytes().unwrap(), udp.peer)
        .unwrap();
    // ... while an unexpected CON that is not a request (an empty CON, "CoAP ping") gets RST
    // (§4.2, §4.3). The RST is the next datagram: the ACK drew no answer.
    let mut ping = Packet::new();
    ping.header.set_type(MessageType::Confirmable);
    ping.header.message_id = 4343;
    ping.header.code = MessageClass::Empty;
    udp.socket
        .send_to(&ping.to_bytes().unwrap(), udp.peer)
        .unwrap();
    let r = udp.recv().unwrap();
    assert_eq!(r.header.get_type(), MessageType::Reset);
    assert_eq!(r.header.message_id, 4343);
    // A CON *response* nobody asked for also gets RST.
    let mut stray = Packet::new();
    stray.header.set_type(MessageType::Confirmable);
    stray.header.message_id = 4444;
    stray.header.code = MessageClass::Response(ResponseType::Content);
    stray.set_token(vec![1, 2, 3, 4]);
    udp.socket
        .send_to(&stray.to_bytes().unwrap(), udp.peer)
        .unwrap();
    let r = udp.recv().unwrap();
    assert_eq!(r.header.get_type(), MessageType::Reset);
    assert_eq!(r.header.message_id, 4444);
}

#[test]
fn udp_observation_ends_when_a_notification_is_reset() {
    let dir = TempDir::new("udp-observe");
    let mut agent = Agent::start(dir.path(), &[]);
    let mut udp = UdpClient::new(agent.udp());
    let mut req = get("/switch");
    req.observe = Some(0);
    let mut p = req.to_packet(b"ob");
    udp.send(&mut p, true);
    let r = udp.recv().unwrap();
    assert!(Response::from_packet(&r).unwrap().observe.is_some());
    let mut writer = TcpClient::connect(agent.tcp());
    writer.request(&post_cbor("/switch", &map(&[("value", Value::Bool(true))])));
    let n = udp.recv().expect("notification over UDP");
    assert_eq!(n.get_token(), b"ob");
    // Reject it with RST (RFC 7641 §3.6).
    let mut rst = Packet::new();
    rst.header.set_type(MessageType::Reset);
    rst.header.code = MessageClass::Empty;
    rst.header.message_id = n.header.message_id;
    udp.socket
        .send_to(&rst.to_bytes().unwrap(), udp.peer)
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    writer.request(&post_cbor(
        "/switch",
        &map(&[("value", Value::Bool(false))]),
    ));
    udp.socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let late = udp.recv();
    assert!(
        late.is_none(),
        "no notification after RST: {late:?}\n{}",
        agent.log().join("\n")
    );
    let log = agent.log().join("\n");
    assert!(log.contains("notification reset"), "{log}");
}

#[test]
fn ping_gets_pong_and_sigterm_releases_connections() {
    let dir = TempDir::new("signals");
    let mut agent = Agent::start(dir.path(), &[]);
    let mut tcp = TcpClient::connect(agent.tcp());
    let ping = Signal::Ping { custody: true }.to_packet(b"pingpong");
    tcp.send(&ping);
    // The Pong is handled inside the connection; drive it through receive().
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut saw_pong = false;
    let mut saw_csm = false;
    let mut dec = ocf::coap::tcp::FrameDecoder::new(1 << 20);
    while Instant::now() < deadline && !(saw_pong && saw_csm) {
        let n = tcp.stream.read(&mut buf).unwrap();
        dec.push(&buf[..n]);
        while let Ok(Some(frame)) = dec.next_frame() {
            match Signal::from_packet(&frame) {
                Ok(Some(Signal::Pong { custody })) => {
                    assert!(custody, "Custody echoed");
                    assert_eq!(frame.get_token(), b"pingpong");
                    saw_pong = true;
                }
                Ok(Some(Signal::Csm { .. })) => saw_csm = true,
                _ => {}
            }
        }
    }
    assert!(saw_csm, "the agent sends a CSM first");
    assert!(saw_pong, "Ping answered with Pong");
    let status = agent.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    let n = tcp.stream.read(&mut buf).unwrap_or(0);
    let mut dec = ocf::coap::tcp::FrameDecoder::new(1 << 20);
    dec.push(&buf[..n]);
    let frame = dec
        .next_frame()
        .ok()
        .flatten()
        .expect("a Release before close");
    assert!(matches!(
        Signal::from_packet(&frame),
        Ok(Some(Signal::Release { .. }))
    ));
}

#[test]
fn device_name_set_through_oic_con_survives_a_restart() {
    let dir = TempDir::new("name");
    {
        let mut agent = Agent::start(dir.path(), &[]);
        let mut tcp = TcpClient::connect(agent.tcp());
        let r = tcp.request(&post_cbor(
            "/oic/con",
            &map(&[("n", Value::Text("Greenhouse".into()))]),
        ));
        assert_eq!(r.code, ResponseType::Changed, "{}", r.diagnostic());
        let d = body(&tcp.request(&get("/oic/d")));
        assert_eq!(key(&d, "n").and_then(Value::as_text), Some("Greenhouse"));
        let r = tcp.request(&post_cbor(
            "/oic/con",
            &map(&[("n", Value::Text(String::new()))]),
        ));
        assert_eq!(r.code, ResponseType::BadRequest);
        assert!(agent.terminate().success());
    }
    let agent = Agent::start(dir.path(), &[]);
    let mut tcp = TcpClient::connect(agent.tcp());
    let d = body(&tcp.request(&get("/oic/d")));
    assert_eq!(
        key(&d, "n").and_then(Value::as_text),
        Some("Greenhouse"),
        "the name is kept"
    );
}
