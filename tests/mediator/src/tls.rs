//! CoAP over TLS over TCP (RFC 8323) to a device's secure endpoint, blocking.
//!
//! The device's certificate is self-signed (or a manufacturer's the Mediator has no CA for), so
//! it cannot be verified on first contact: [`ServerVerifier::any`] accepts any certificate at
//! the TLS layer, still checking that the server holds its key (the handshake signature). What
//! authenticates the device is the ownership transfer's key confirmation, which is bound to this
//! TLS session's exporter; after it the device's key is pinned (see [`crate::identity`]) and
//! checked by the caller on every later connection ([`SecureClient::peer_spki_sha256`]).
//!
//! The Mediator presents its own certificate (CN `uuid:<mediator uuid>`) as client certificate:
//! the device records its key as the owner's.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, Packet, ResponseType};
use ocf::coap::block::Block;
use ocf::coap::tcp_conn::{ConnEvent, TcpConnection};
use ocf::model::{decode_payload, ContentFormat};
use ocf::resource::{Request, Response};
use ocf::security::otm::{EXPORTER_LABEL, EXPORTER_LEN};
use ocf::x509;
use ocf_rustls::ServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::identity::{sha256_hex, Identity};

/// Largest message we accept (our CSM says so).
pub const MAX_MESSAGE_SIZE: u32 = 1 << 20;

/// The ring provider, the only one compiled in (OCF-PROTOCOL.md §8.4).
pub use ocf_rustls::ring_provider as provider;

/// Parses a PEM certificate chain and key for rustls.
pub fn cert_and_key(
    cert_pem: &str,
    key_pem: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain =
        x509::certificates_from_pem(cert_pem).map_err(|e| format!("certificate PEM: {e}"))?;
    let key =
        x509::private_key_from_pem(key_pem.as_bytes()).map_err(|e| format!("key PEM: {e}"))?;
    Ok((chain, key))
}

/// The client configuration: TLS 1.3 and 1.2 (ring), any server certificate, our certificate
/// as client certificate.
pub fn client_config(identity: &Identity) -> Result<Arc<ClientConfig>, String> {
    client_config_with(&identity.cert_pem, identity.key_pem())
}

/// [`client_config`] from PEM texts.
pub fn client_config_with(cert_pem: &str, key_pem: &str) -> Result<Arc<ClientConfig>, String> {
    let provider = provider();
    let (chain, key) = cert_and_key(cert_pem, key_pem)?;
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerVerifier::any(&provider)))
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("TLS client certificate: {e}"))?;
    Ok(Arc::new(config))
}

/// Why a network operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetError {
    /// Nothing (or not enough) arrived in time.
    Timeout,
    /// The connection is gone (closed by the peer, reset, or a TLS alert).
    Closed(String),
    /// Anything else (connect, handshake, encoding).
    Other(String),
}

impl std::fmt::Display for NetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetError::Timeout => f.write_str("no answer in time"),
            NetError::Closed(why) => write!(f, "the connection closed: {why}"),
            NetError::Other(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for NetError {}

/// A response with the CoAP message it came in (for options the [`Response`] does not keep,
/// such as Max-Age).
#[derive(Debug, Clone)]
pub struct Reply {
    pub packet: Packet,
    pub response: Response,
}

impl Reply {
    pub fn code(&self) -> ResponseType {
        self.response.code
    }

    /// `2.05` etc.
    pub fn code_text(&self) -> String {
        code_text(self.response.code)
    }

    pub fn is_success(&self) -> bool {
        u8::from(MessageClass::Response(self.response.code)) >> 5 == 2
    }

    /// The Max-Age option (seconds), e.g. the retry delay of a 4.29.
    pub fn max_age(&self) -> Option<u32> {
        let b = self.packet.get_first_option(CoapOption::MaxAge)?;
        (b.len() <= 4).then(|| b.iter().fold(0u32, |acc, x| (acc << 8) | u32::from(*x)))
    }

    /// The body as a CBOR value (JSON is converted), if it decodes.
    pub fn body(&self) -> Option<ciborium::Value> {
        body_of(&self.response)
    }

    /// The diagnostic text of an error answer, or "" (sanitised: one line, at most 200 chars).
    pub fn diagnostic(&self) -> String {
        let d = self.response.diagnostic();
        let mut one: String = d
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(200)
            .collect();
        one.truncate(one.trim_end().len());
        one
    }

    /// `4.01 Unauthorized: <diagnostic>`.
    pub fn describe(&self) -> String {
        let d = self.diagnostic();
        if d.is_empty() {
            format!("{} {:?}", self.code_text(), self.response.code)
        } else {
            format!("{} {:?}: {d}", self.code_text(), self.response.code)
        }
    }
}

/// The body of a response as a CBOR value (by its Content-Format; CBOR without one).
pub fn body_of(r: &Response) -> Option<ciborium::Value> {
    if r.payload.is_empty() {
        return None;
    }
    let cf = r
        .content_format
        .and_then(ContentFormat::from_number)
        .unwrap_or(ContentFormat::OcfCbor);
    decode_payload(cf, &r.payload).ok()
}

/// `class.detail` of a response code, e.g. `4.29`.
pub fn code_text(code: ResponseType) -> String {
    let c = u8::from(MessageClass::Response(code));
    format!("{}.{:02}", c >> 5, c & 0x1f)
}

/// A CoAP-over-TLS connection to a device.
pub struct SecureClient {
    stream: StreamOwned<ClientConnection, TcpStream>,
    conn: TcpConnection,
    next_token: u64,
    pending: Vec<Packet>,
    pub peer: SocketAddr,
    /// How long [`SecureClient::request`] waits for an answer.
    pub timeout: Duration,
}

impl std::fmt::Debug for SecureClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureClient")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl SecureClient {
    /// Connects, completes the TLS handshake and sends our CSM.
    pub fn connect(
        addr: SocketAddr,
        config: Arc<ClientConfig>,
        timeout: Duration,
    ) -> Result<SecureClient, NetError> {
        let sock = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| NetError::Other(format!("cannot connect to {addr}: {e}")))?;
        let _ = sock.set_nodelay(true);
        sock.set_read_timeout(Some(timeout))
            .map_err(|e| NetError::Other(e.to_string()))?;
        sock.set_write_timeout(Some(timeout))
            .map_err(|e| NetError::Other(e.to_string()))?;
        let name = ServerName::IpAddress(addr.ip().into());
        let tls = ClientConnection::new(config, name)
            .map_err(|e| NetError::Other(format!("TLS: {e}")))?;
        let mut stream = StreamOwned::new(tls, sock);
        while stream.conn.is_handshaking() {
            if let Err(e) = stream.conn.complete_io(&mut stream.sock) {
                return Err(match e.kind() {
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                        NetError::Other(format!(
                            "TLS handshake with {addr}: no answer in {} s",
                            timeout.as_secs()
                        ))
                    }
                    _ => NetError::Other(format!("TLS handshake with {addr} failed: {e}")),
                });
            }
        }
        let mut conn = TcpConnection::new(MAX_MESSAGE_SIZE);
        let csm = conn.start();
        let mut client = SecureClient {
            stream,
            conn,
            next_token: 0,
            pending: Vec::new(),
            peer: addr,
            timeout,
        };
        client.write(&csm)?;
        Ok(client)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), NetError> {
        self.stream
            .write_all(bytes)
            .and_then(|()| self.stream.flush())
            .map_err(|e| NetError::Closed(e.to_string()))
    }

    /// The TLS exporter the ownership transfer is bound to (label `EXPORTER-ocfpi-otm`, no
    /// context, 32 bytes).
    pub fn exporter(&self) -> Result<[u8; EXPORTER_LEN], String> {
        self.stream
            .conn
            .export_keying_material([0u8; EXPORTER_LEN], EXPORTER_LABEL, None)
            .map_err(|e| format!("TLS exporter: {e}"))
    }

    /// The device's leaf certificate (DER).
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        self.stream
            .conn
            .peer_certificates()?
            .first()
            .map(|c| c.as_ref().to_vec())
    }

    /// SHA-256 of the device certificate's SubjectPublicKeyInfo (its key), lower-case hex.
    pub fn peer_spki_sha256(&self) -> Option<String> {
        let der = self.peer_certificate()?;
        x509::Certificate::from_der(&der)
            .ok()
            .map(|c| x509::hex(&c.spki_sha256()))
    }

    /// SHA-256 of the device's whole DER certificate.
    pub fn peer_cert_sha256(&self) -> Option<String> {
        self.peer_certificate().map(|d| sha256_hex(&d))
    }

    /// The UUID of the device certificate's CN `uuid:<di>`, if it has one.
    pub fn peer_cn_uuid(&self) -> Option<String> {
        x509::Certificate::from_der(&self.peer_certificate()?)
            .ok()?
            .cn_uuid()
    }

    /// The subject CN of the device's certificate.
    pub fn peer_cn(&self) -> Option<String> {
        x509::Certificate::from_der(&self.peer_certificate()?)
            .ok()?
            .subject_cn()
            .map(str::to_owned)
    }

    /// `TLS 1.3, TLS13_AES_128_GCM_SHA256`.
    pub fn describe_session(&self) -> String {
        let v = match self.stream.conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".to_string(),
            Some(other) => format!("{other:?}"),
            None => "TLS".to_string(),
        };
        match self.stream.conn.negotiated_cipher_suite() {
            Some(s) => format!("{v}, {:?}", s.suite()),
            None => v,
        }
    }

    pub fn token(&mut self) -> Vec<u8> {
        self.next_token += 1;
        // 8-byte tokens (OCF-PROTOCOL.md §7.7: 4 bytes or more).
        (0x6d65_6400_0000_0000u64 | self.next_token)
            .to_be_bytes()
            .to_vec()
    }

    /// Sends `req` with `token`.
    pub fn send(&mut self, req: &Request, token: &[u8]) -> Result<(), NetError> {
        self.send_packet(&req.to_packet(token))
    }

    fn send_packet(&mut self, p: &Packet) -> Result<(), NetError> {
        let bytes = self
            .conn
            .encode(p)
            .map_err(|e| NetError::Other(format!("cannot encode the request: {e:?}")))?;
        self.write(&bytes)
    }

    /// Reads once (waiting until `deadline` at most) and queues what arrives.
    fn fill(&mut self, deadline: Instant) -> Result<(), NetError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(NetError::Timeout);
        }
        let _ = self
            .stream
            .sock
            .set_read_timeout(Some(left.max(Duration::from_millis(1))));
        let mut buf = [0u8; 16 * 1024];
        let n = match self.stream.read(&mut buf) {
            Ok(0) => return Err(NetError::Closed("closed by the device".into())),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(NetError::Timeout)
            }
            Err(e) => return Err(NetError::Closed(e.to_string())),
        };
        for ev in self.conn.receive(&buf[..n]) {
            match ev {
                ConnEvent::Message(p) => self.pending.push(p),
                ConnEvent::Transmit(bytes) => self.write(&bytes)?,
                ConnEvent::Close { reason } => return Err(NetError::Closed(reason)),
                ConnEvent::Pong { .. } => {}
            }
        }
        Ok(())
    }

    /// The next message with `token`, keeping others for later.
    pub fn recv_token(&mut self, token: &[u8], deadline: Instant) -> Result<Packet, NetError> {
        loop {
            if let Some(i) = self.pending.iter().position(|p| p.get_token() == token) {
                return Ok(self.pending.remove(i));
            }
            self.fill(deadline)?;
        }
    }

    /// Sends a request and waits for its answer ([`SecureClient::timeout`]). A block-wise
    /// answer (RFC 7959 Block2) is reassembled.
    pub fn request(&mut self, req: &Request) -> Result<Reply, NetError> {
        let token = self.token();
        self.send(req, &token)?;
        let packet = self.recv_token(&token, Instant::now() + self.timeout)?;
        let mut response = Response::from_packet(&packet)
            .ok_or_else(|| NetError::Other("the answer is not a CoAP response".into()))?;
        let mut block = packet
            .get_first_option(CoapOption::Block2)
            .and_then(|b| Block::decode(b));
        let mut guard = 0;
        while let Some(b) = block.filter(|b| b.more && response.code == ResponseType::Content) {
            guard += 1;
            if guard > 4096 {
                return Err(NetError::Other("block-wise answer too long".into()));
            }
            let token = self.token();
            let mut p = req.to_packet(&token);
            p.add_option(
                CoapOption::Block2,
                Block {
                    num: b.num + 1,
                    more: false,
                    szx: b.szx,
                }
                .encode(),
            );
            self.send_packet(&p)?;
            let next = self.recv_token(&token, Instant::now() + self.timeout)?;
            let r = Response::from_packet(&next)
                .ok_or_else(|| NetError::Other("the answer is not a CoAP response".into()))?;
            if r.code != ResponseType::Content || r.etag != response.etag {
                return Err(NetError::Other(
                    "the representation changed during a block-wise transfer".into(),
                ));
            }
            response.payload.extend_from_slice(&r.payload);
            block = next
                .get_first_option(CoapOption::Block2)
                .and_then(|b| Block::decode(b));
        }
        Ok(Reply { packet, response })
    }

    /// Registers an observation (GET with Observe 0) and returns its token and first answer.
    pub fn observe(&mut self, req: &Request) -> Result<(Vec<u8>, Reply), NetError> {
        let mut req = req.clone();
        req.observe = Some(0);
        let token = self.token();
        self.send(&req, &token)?;
        let packet = self.recv_token(&token, Instant::now() + self.timeout)?;
        let response = Response::from_packet(&packet)
            .ok_or_else(|| NetError::Other("the answer is not a CoAP response".into()))?;
        Ok((token, Reply { packet, response }))
    }

    /// The next notification for `token`, or `Ok(None)` at `deadline`.
    pub fn next_notification(
        &mut self,
        token: &[u8],
        deadline: Instant,
    ) -> Result<Option<Reply>, NetError> {
        match self.recv_token(token, deadline) {
            Ok(packet) => {
                let response = Response::from_packet(&packet).ok_or_else(|| {
                    NetError::Other("a notification that is not a response".into())
                })?;
                Ok(Some(Reply { packet, response }))
            }
            Err(NetError::Timeout) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Says goodbye (Release) and closes.
    pub fn close(mut self) {
        let release = self.conn.release("done");
        let _ = self.write(&release);
        self.stream.conn.send_close_notify();
        let _ = self.stream.flush();
        let _ = self.stream.sock.shutdown(std::net::Shutdown::Both);
    }
}
