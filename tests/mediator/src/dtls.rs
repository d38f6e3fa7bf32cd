//! CoAP over UDP to a device, in the clear (the method selection of OCF's standard ownership
//! transfer) and over DTLS 1.2 (`coaps://`, RFC 7252 §9) with OpenSSL, blocking.
//!
//! The DTLS client authenticates with a PSK (the Random PIN's, or the owner PSK) or with the
//! Mediator's certificate. A PSK identity goes out as text: OpenSSL's client callback takes a
//! NUL-terminated identity, so the 16 raw UUID bytes iotivity-lite sends cannot be given; the
//! device accepts the 36-character UUID as well.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use coap_lite::{MessageType, Packet};
use ocf::resource::{Request, Response};
use ocf::security::dtls_keys::{SessionSecrets, MASTER_SECRET_LEN};
use openssl::pkey::PKey;
use openssl::ssl::{
    ErrorCode, Ssl, SslContextBuilder, SslMethod, SslOptions, SslStream, SslVerifyMode, SslVersion,
};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::X509;

use crate::tls::{NetError, Reply};

/// The suites the Mediator offers for a PSK.
pub const PSK_CIPHERS: &str = "ECDHE-PSK-AES128-CBC-SHA256";
/// The suites the Mediator offers with certificates (iotivity-lite's Manufacturer Certificate
/// list).
pub const CERT_CIPHERS: &str = "ECDHE-ECDSA-AES128-CCM8:ECDHE-ECDSA-AES128-CCM:\
                                ECDHE-ECDSA-AES256-CCM8:ECDHE-ECDSA-AES256-CCM";

/// How the client authenticates.
pub enum ClientAuth<'a> {
    /// A PSK with this identity.
    Psk { identity: &'a [u8], key: &'a [u8] },
    /// The Mediator's certificate and key (PEM), and the CA the device's certificate must
    /// chain to (`None`: any, the caller pins it).
    Certificate {
        cert_pem: &'a str,
        key_pem: &'a str,
        device_ca_pem: Option<&'a str>,
    },
}

/// A connected UDP socket as a byte stream of whole datagrams.
struct Datagrams(UdpSocket);

impl Read for Datagrams {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf)
    }
}

impl Write for Datagrams {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.send(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How often a blocked read returns so that OpenSSL can resend a lost flight.
const POLL: Duration = Duration::from_millis(200);

/// A DTLS session to a device.
pub struct DtlsClient {
    stream: SslStream<Datagrams>,
    next_mid: u16,
    next_token: u64,
    pub timeout: Duration,
}

impl DtlsClient {
    /// Connects and completes the handshake within `timeout`.
    pub fn connect(
        addr: SocketAddr,
        auth: ClientAuth<'_>,
        ciphers: &str,
        timeout: Duration,
    ) -> Result<DtlsClient, String> {
        fn e(what: &'static str) -> impl Fn(openssl::error::ErrorStack) -> String {
            move |err| format!("DTLS {what}: {err}")
        }
        let mut b = SslContextBuilder::new(SslMethod::dtls_client()).map_err(e("context"))?;
        b.set_min_proto_version(Some(SslVersion::DTLS1_2))
            .map_err(e("version"))?;
        b.set_max_proto_version(Some(SslVersion::DTLS1_2))
            .map_err(e("version"))?;
        b.set_cipher_list(ciphers).map_err(e("suites"))?;
        b.set_options(SslOptions::NO_QUERY_MTU | SslOptions::NO_TICKET);
        match auth {
            ClientAuth::Psk { identity, key } => {
                let (identity, key) = (identity.to_vec(), key.to_vec());
                b.set_verify(SslVerifyMode::NONE);
                b.set_psk_client_callback(move |_, _hint, id_out, key_out| {
                    if identity.len() >= id_out.len() || key.len() > key_out.len() {
                        return Ok(0);
                    }
                    id_out[..identity.len()].copy_from_slice(&identity);
                    id_out[identity.len()] = 0;
                    key_out[..key.len()].copy_from_slice(&key);
                    Ok(key.len())
                });
            }
            ClientAuth::Certificate {
                cert_pem,
                key_pem,
                device_ca_pem,
            } => {
                let chain = X509::stack_from_pem(cert_pem.as_bytes()).map_err(e("certificate"))?;
                let (leaf, rest) = chain.split_first().ok_or("DTLS: no certificate")?;
                b.set_certificate(leaf).map_err(e("certificate"))?;
                for c in rest {
                    b.add_extra_chain_cert(c.clone()).map_err(e("chain"))?;
                }
                let key = PKey::private_key_from_pem(key_pem.as_bytes())
                    .map_err(|_| "DTLS: the Mediator's key is not usable".to_string())?;
                b.set_private_key(&key).map_err(e("key"))?;
                match device_ca_pem {
                    Some(ca) => {
                        let mut store = X509StoreBuilder::new().map_err(e("trust"))?;
                        for c in X509::stack_from_pem(ca.as_bytes()).map_err(e("trust"))? {
                            store.add_cert(c).map_err(e("trust"))?;
                        }
                        b.set_verify_cert_store(store.build()).map_err(e("trust"))?;
                        b.set_verify(SslVerifyMode::PEER);
                    }
                    None => b.set_verify(SslVerifyMode::NONE),
                }
            }
        }
        let socket = UdpSocket::bind(if addr.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        })
        .and_then(|s| s.connect(addr).map(|()| s))
        .map_err(|e| format!("cannot open UDP to {addr}: {e}"))?;
        socket
            .set_read_timeout(Some(POLL))
            .map_err(|e| e.to_string())?;
        let mut ssl = Ssl::new(&b.build()).map_err(e("session"))?;
        ssl.set_mtu(1200).map_err(e("MTU"))?;
        let mut stream = SslStream::new(ssl, Datagrams(socket)).map_err(e("session"))?;
        let deadline = Instant::now() + timeout;
        loop {
            match stream.connect() {
                Ok(()) => break,
                Err(err) if err.code() == ErrorCode::WANT_READ && Instant::now() < deadline => {}
                Err(err) if err.code() == ErrorCode::WANT_READ => {
                    return Err(format!(
                        "DTLS handshake with {addr}: no answer in {} s",
                        timeout.as_secs()
                    ))
                }
                Err(err) => return Err(format!("DTLS handshake with {addr} failed: {err}")),
            }
        }
        Ok(DtlsClient {
            stream,
            next_mid: 0x4d00,
            next_token: 0,
            timeout,
        })
    }

    /// The negotiated suite's OpenSSL name.
    pub fn cipher(&self) -> String {
        self.stream
            .ssl()
            .current_cipher()
            .map_or_else(String::new, |c| c.name().to_string())
    }

    /// The session's master secret and randoms, which the owner PSK is derived from.
    pub fn secrets(&self) -> Option<SessionSecrets> {
        let ssl = self.stream.ssl();
        let mut s = SessionSecrets {
            master_secret: [0; MASTER_SECRET_LEN],
            client_random: [0; 32],
            server_random: [0; 32],
            suite: u16::from_be_bytes(ssl.current_cipher()?.protocol_id()),
        };
        let ok = ssl.session()?.master_key(&mut s.master_secret) == MASTER_SECRET_LEN
            && ssl.client_random(&mut s.client_random) == 32
            && ssl.server_random(&mut s.server_random) == 32;
        ok.then_some(s)
    }

    /// The device's leaf certificate (DER), on a certificate suite.
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        self.stream.ssl().peer_certificate()?.to_der().ok()
    }

    /// Sends a confirmable request and waits for its answer (piggybacked or separate).
    pub fn request(&mut self, req: &Request) -> Result<Reply, NetError> {
        self.next_token += 1;
        let token = self.next_token.to_be_bytes().to_vec();
        let mut p = req.to_packet(&token);
        self.next_mid = self.next_mid.wrapping_add(1);
        p.header.message_id = self.next_mid;
        p.header.set_type(MessageType::Confirmable);
        let bytes = p
            .to_bytes()
            .map_err(|e| NetError::Other(format!("cannot encode the request: {e:?}")))?;
        exchange(&mut self.stream, &bytes, &token, self.timeout)
    }

    /// Says goodbye (close_notify).
    pub fn close(mut self) {
        let _ = self.stream.shutdown();
    }
}

/// Where CoAP messages go: a DTLS session or a plain UDP socket.
trait Channel {
    fn send(&mut self, bytes: &[u8]) -> Result<(), NetError>;
    /// One message, `None` when nothing came in a short while.
    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError>;
}

impl Channel for SslStream<Datagrams> {
    fn send(&mut self, bytes: &[u8]) -> Result<(), NetError> {
        self.ssl_write(bytes)
            .map(|_| ())
            .map_err(|e| NetError::Closed(e.to_string()))
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError> {
        match self.ssl_read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.code() == ErrorCode::WANT_READ => Ok(None),
            Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                Err(NetError::Closed("closed by the device".into()))
            }
            Err(e) => Err(NetError::Closed(e.to_string())),
        }
    }
}

impl Channel for UdpSocket {
    fn send(&mut self, bytes: &[u8]) -> Result<(), NetError> {
        UdpSocket::send(self, bytes)
            .map(|_| ())
            .map_err(|e| NetError::Closed(e.to_string()))
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError> {
        match UdpSocket::recv(self, buf) {
            Ok(n) => Ok(Some(n)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            // ICMP port unreachable from an earlier send: keep trying until the deadline.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(None),
            Err(e) => Err(NetError::Closed(e.to_string())),
        }
    }
}

/// Sends `bytes` (resent every 2 s, RFC 7252 §4.2's ACK_TIMEOUT) and waits for the response
/// with `token`, acknowledging a separate one.
fn exchange(
    channel: &mut dyn Channel,
    bytes: &[u8],
    token: &[u8],
    timeout: Duration,
) -> Result<Reply, NetError> {
    let deadline = Instant::now() + timeout;
    let mut resend = Instant::now();
    let mut buf = vec![0u8; 2048];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(NetError::Timeout);
        }
        if now >= resend {
            channel.send(bytes)?;
            resend = now + Duration::from_secs(2);
        }
        let Some(n) = channel.recv(&mut buf)? else {
            continue;
        };
        let Ok(packet) = Packet::from_bytes(&buf[..n]) else {
            continue;
        };
        if packet.get_token() != token {
            continue;
        }
        if packet.header.get_type() == MessageType::Confirmable {
            let mut ack = Packet::new();
            ack.header.set_type(MessageType::Acknowledgement);
            ack.header.message_id = packet.header.message_id;
            if let Ok(b) = ack.to_bytes() {
                channel.send(&b)?;
            }
        }
        let Some(response) = Response::from_packet(&packet) else {
            // An empty ACK: the response comes separately.
            continue;
        };
        return Ok(Reply { packet, response });
    }
}

/// One confirmable request in the clear over UDP (the method selection of a standard
/// ownership transfer, OCF Security §7.3).
pub fn clear_request(
    addr: SocketAddr,
    req: &Request,
    timeout: Duration,
) -> Result<Reply, NetError> {
    let socket = UdpSocket::bind(if addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    })
    .and_then(|s| s.connect(addr).map(|()| s))
    .map_err(|e| NetError::Other(format!("cannot open UDP to {addr}: {e}")))?;
    socket
        .set_read_timeout(Some(POLL))
        .map_err(|e| NetError::Other(e.to_string()))?;
    let mut mid = [0u8; 2];
    let _ = getrandom::fill(&mut mid);
    let token = mid.repeat(4);
    let mut p = req.to_packet(&token);
    p.header.message_id = u16::from_be_bytes(mid);
    p.header.set_type(MessageType::Confirmable);
    let bytes = p
        .to_bytes()
        .map_err(|e| NetError::Other(format!("cannot encode the request: {e:?}")))?;
    let mut socket = socket;
    exchange(&mut socket, &bytes, &token, timeout)
}
