//! `ocf-mitm`: a man in the middle for the onboarding tests. It terminates TLS on both sides —
//! towards the Mediator it presents its own certificate with the device's CN (so only the key
//! differs), towards the device its own client certificate — and relays the CoAP bytes
//! unchanged between the two sessions. The ownership transfer must fail through it: the two
//! TLS sessions have different exporters, so the relayed key confirmations do not fit.
//!
//! ```text
//! ocf-mitm --target IP:PORT [--listen 127.0.0.1:0]
//! ```
//! prints `ocf-mitm: listening coaps+tcp://IP:PORT`, then `ocf-mitm: ready`; each relayed
//! connection is reported on stderr. Stops on SIGTERM / SIGKILL (the tests kill it by PID).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ocf_mediator::identity::random_uuid;
use ocf_mediator::tls::{cert_and_key, client_config_with, provider};
use ocf_rustls::AnyClientCertificate;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, Connection, ServerConfig, ServerConnection};

/// A fresh key and self-signed certificate with subject CN `cn`: (cert PEM, key PEM).
fn self_signed(cn: &str) -> Result<(String, String), String> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(target) = arg(&args, "--target").and_then(|t| {
        t.trim_start_matches("coaps+tcp://")
            .parse::<SocketAddr>()
            .ok()
    }) else {
        eprintln!("usage: ocf-mitm --target IP:PORT [--listen IP:PORT]");
        std::process::exit(2);
    };
    let listen = arg(&args, "--listen").unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = match TcpListener::bind(&listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ocf-mitm: cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    let local = listener.local_addr().expect("local address");
    println!("ocf-mitm: listening coaps+tcp://{local}");
    println!("ocf-mitm: ready");
    let _ = std::io::stdout().flush();
    let mut n = 0u32;
    for inbound in listener.incoming() {
        let Ok(inbound) = inbound else { continue };
        n += 1;
        let id = n;
        std::thread::spawn(move || {
            if let Err(e) = relay(id, inbound, target) {
                eprintln!("ocf-mitm: connection {id}: {e}");
            }
        });
    }
}

/// Connects to the device, then terminates the inbound TLS with a certificate carrying the
/// device's CN, and relays plaintext both ways until either side closes.
fn relay(id: u32, inbound: TcpStream, target: SocketAddr) -> Result<(), String> {
    // Towards the device: our own client certificate.
    let (ccert, ckey) = self_signed(&format!("uuid:{}", random_uuid()?))?;
    let ccfg = client_config_with(&ccert, &ckey)?;
    let mut out_sock = TcpStream::connect(target).map_err(|e| format!("connect {target}: {e}"))?;
    out_sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut out = ClientConnection::new(ccfg, ServerName::IpAddress(target.ip().into()))
        .map_err(|e| e.to_string())?;
    while out.is_handshaking() {
        out.complete_io(&mut out_sock)
            .map_err(|e| format!("TLS to the device: {e}"))?;
    }
    let device_cn = out
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| ocf::x509::Certificate::from_der(c).ok())
        .and_then(|c| c.subject_cn().map(str::to_owned))
        .unwrap_or_else(|| "device".into());

    // Towards the Mediator: a certificate with the device's CN and our key.
    let (scert, skey) = self_signed(&device_cn)?;
    let (chain, key) = cert_and_key(&scert, &skey)?;
    let p = provider();
    let scfg = ServerConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(Arc::new(AnyClientCertificate::new(&p)))
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    let inn = ServerConnection::new(Arc::new(scfg)).map_err(|e| e.to_string())?;
    eprintln!(
        "ocf-mitm: connection {id}: relaying {} <-> {target} (posing as {device_cn})",
        inbound
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );

    let mut in_sock = inbound;
    in_sock.set_nonblocking(true).map_err(|e| e.to_string())?;
    out_sock.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut a = Connection::Server(inn);
    let mut b = Connection::Client(out);
    let (mut to_device, mut to_mediator) = (0usize, 0usize);
    let mut idle_since = Instant::now();
    loop {
        let mut busy = false;
        let ra = pump(&mut a, &mut in_sock, &mut b, &mut busy)?;
        let rb = pump(&mut b, &mut out_sock, &mut a, &mut busy)?;
        to_device += ra.1;
        to_mediator += rb.1;
        flush(&mut a, &mut in_sock)?;
        flush(&mut b, &mut out_sock)?;
        if ra.0 || rb.0 {
            flush(&mut a, &mut in_sock).ok();
            flush(&mut b, &mut out_sock).ok();
            eprintln!("ocf-mitm: connection {id}: closed after {to_device} bytes to the device, {to_mediator} to the Mediator");
            return Ok(());
        }
        if busy {
            idle_since = Instant::now();
        } else {
            if idle_since.elapsed() > Duration::from_secs(300) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Reads TLS records from `sock` into `from`, and moves the plaintext into `to`. Returns
/// (closed, bytes moved).
fn pump(
    from: &mut Connection,
    sock: &mut TcpStream,
    to: &mut Connection,
    busy: &mut bool,
) -> Result<(bool, usize), String> {
    let mut closed = false;
    match from.read_tls(sock) {
        Ok(0) => closed = true,
        Ok(_) => {
            *busy = true;
            from.process_new_packets()
                .map_err(|e| format!("TLS: {e}"))?;
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Err(e) => return Err(e.to_string()),
    }
    let mut moved = 0;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.reader().read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => {
                to.writer()
                    .write_all(&buf[..n])
                    .map_err(|e| e.to_string())?;
                moved += n;
                *busy = true;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok((closed, moved))
}

fn flush(conn: &mut Connection, sock: &mut TcpStream) -> Result<(), String> {
    while conn.wants_write() {
        match conn.write_tls(sock) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}
