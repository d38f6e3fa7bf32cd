//! A blocking CoAP-over-TLS-over-TCP (`coaps+tcp`) client for the agent's secure endpoint:
//! rustls (ring provider) under the project's sans-IO RFC 8323 connection, like [`TcpClient`]
//! over plain TCP.
//!
//! The device's certificate is not checked against a trust anchor (a device proves itself
//! through the ownership transfer, which is bound to this session's exporter, see
//! `ocf::security::otm`), but its handshake signature is. A client certificate (chain and key
//! in PEM, e.g. a Mediator's self-signed one) is optional.
//!
//! [`TcpClient`]: crate::TcpClient

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Receive;
use coap_lite::Packet;
use ocf::coap::tcp_conn::{ConnEvent, TcpConnection};
use ocf::resource::{Request, Response};
use ocf_rustls::ServerVerifier;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// TLS exporter label of the ownership transfer (`ocf::security::otm::EXPORTER_LABEL`).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-ocfpi-otm";

/// A client certificate chain (leaf first) and its private key, both PEM.
pub type ClientCertPem = (String, String);

/// A blocking coaps+tcp client.
pub struct TlsClient {
    pub stream: StreamOwned<ClientConnection, TcpStream>,
    pub conn: TcpConnection,
    exporter: [u8; 32],
    next_token: u64,
    pending: Vec<Packet>,
}

impl TlsClient {
    /// Connects (TLS 1.3 or 1.2), presenting `client_cert` if given; panics on failure.
    pub fn connect(addr: SocketAddr, client_cert: Option<ClientCertPem>) -> TlsClient {
        TlsClient::try_connect(addr, client_cert).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`TlsClient::connect`] with errors instead of panics.
    pub fn try_connect(
        addr: SocketAddr,
        client_cert: Option<ClientCertPem>,
    ) -> Result<TlsClient, String> {
        TlsClient::try_connect_versions(
            addr,
            client_cert,
            &[&rustls::version::TLS13, &rustls::version::TLS12],
        )
    }

    /// Connects offering only `versions`; sends our CSM; answers within 10 s are expected.
    pub fn try_connect_versions(
        addr: SocketAddr,
        client_cert: Option<ClientCertPem>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<TlsClient, String> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| format!("TLS versions: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier::any(&provider)));
        let config = match client_cert {
            Some((chain_pem, key_pem)) => {
                let chain = ocf::x509::certificates_from_pem(&chain_pem)
                    .map_err(|e| format!("client certificate PEM: {e}"))?;
                let key = ocf::x509::private_key_from_pem(key_pem.as_bytes())
                    .map_err(|e| format!("client key PEM: {e}"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("client certificate: {e}"))?
            }
            None => builder.with_no_client_auth(),
        };
        let tcp = TcpStream::connect(addr).map_err(|e| format!("connect to {addr}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| format!("timeout: {e}"))?;
        let name = ServerName::IpAddress(addr.ip().into());
        let conn =
            ClientConnection::new(Arc::new(config), name).map_err(|e| format!("TLS: {e}"))?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
        }
        let exporter = stream
            .conn
            .export_keying_material([0u8; 32], EXPORTER_LABEL, None)
            .map_err(|e| format!("TLS exporter: {e}"))?;
        let mut conn = TcpConnection::new(1 << 20);
        let csm = conn.start();
        stream
            .write_all(&csm)
            .map_err(|e| format!("send CSM to {addr}: {e}"))?;
        stream
            .flush()
            .map_err(|e| format!("send CSM to {addr}: {e}"))?;
        Ok(TlsClient {
            stream,
            conn,
            exporter,
            next_token: 1,
            pending: Vec::new(),
        })
    }

    /// This session's exporter value: label `EXPORTER-ocfpi-otm`, no context, 32 bytes.
    pub fn exporter(&self) -> [u8; 32] {
        self.exporter
    }

    /// The device's certificate chain (DER, leaf first).
    pub fn server_certificates(&self) -> Vec<Vec<u8>> {
        self.stream
            .conn
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.to_vec()).collect())
            .unwrap_or_default()
    }

    /// The negotiated TLS version.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.stream.conn.protocol_version()
    }

    pub fn token(&mut self) -> Vec<u8> {
        self.next_token += 1;
        self.next_token.to_be_bytes().to_vec()
    }

    /// Sends a message; an error when the connection is gone.
    pub fn try_send(&mut self, packet: &Packet) -> Result<(), String> {
        let bytes = self
            .conn
            .encode(packet)
            .map_err(|e| format!("encode: {e:?}"))?;
        self.stream
            .write_all(&bytes)
            .map_err(|e| format!("send: {e}"))?;
        self.stream.flush().map_err(|e| format!("send: {e}"))
    }

    /// Whether the device closes the connection within `timeout` (messages that arrive first
    /// are kept for [`TlsClient::recv`]).
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        let closed = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.stream.sock.set_read_timeout(Some(left)).is_err() {
                break false;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    let mut close = false;
                    for ev in self.conn.receive(&buf[..n]) {
                        match ev {
                            ConnEvent::Message(p) => self.pending.push(p),
                            ConnEvent::Close { .. } => close = true,
                            _ => {}
                        }
                    }
                    if close {
                        break true;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break false
                }
                Err(_) => break true,
            }
        };
        let _ = self
            .stream
            .sock
            .set_read_timeout(Some(Duration::from_secs(10)));
        closed
    }

    /// Sends a request and waits for its response; panics if the connection closes first.
    pub fn request(&mut self, req: &Request) -> Response {
        self.try_request(req)
            .unwrap_or_else(|e| panic!("{} {}: {e}", method_name(req), req.path))
    }

    /// [`TlsClient::request`] with errors instead of panics.
    pub fn try_request(&mut self, req: &Request) -> Result<Response, String> {
        let token = self.token();
        self.try_send(&req.to_packet(&token))?;
        let p = self
            .recv_token(&token)
            .ok_or("the connection closed (or 10 s passed) before the response")?;
        Response::from_packet(&p).ok_or_else(|| "the answer is not a CoAP response".to_string())
    }

    /// Sends a request with `token` (e.g. an observation) and waits for its first response.
    pub fn request_with_token(&mut self, req: &Request, token: &[u8]) -> Response {
        self.try_send(&req.to_packet(token))
            .unwrap_or_else(|e| panic!("{e}"));
        let p = self
            .recv_token(token)
            .expect("connection closed before the response");
        Response::from_packet(&p).expect("a response")
    }
}

fn method_name(req: &Request) -> String {
    format!("{:?}", req.method).to_uppercase()
}

impl crate::Receive for TlsClient {
    fn parts(
        &mut self,
    ) -> (
        &mut dyn crate::ReadWrite,
        &mut TcpConnection,
        &mut Vec<Packet>,
    ) {
        (&mut self.stream, &mut self.conn, &mut self.pending)
    }
}

/// The *ring* provider, for callers that build their own configurations.
pub use ocf_rustls::ring_provider as provider;
