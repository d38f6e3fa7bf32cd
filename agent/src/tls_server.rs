//! The secure local endpoint: CoAP over TLS over TCP (`coaps+tcp`, RFC 8323), the only way to
//! reach anything but discovery on a device that is not in the development mode (DESIGN.md §4).
//!
//! - **Server certificate**: the manufacturer certificate and key if the image carries them
//!   ([`load_manufacturer`]), else a self-signed certificate for the identity key with CN
//!   `uuid:<di>` ([`self_signed`]). The Mediator does not verify it: the ownership transfer
//!   authenticates the device by the PIN, bound to this TLS session (see `ocf::security::otm`).
//! - **Client certificates** are requested but optional, and any is accepted at the TLS layer
//!   ([`ocf_rustls::AnyClientCertificate`]: the Mediator's is self-signed). The handshake still proves that
//!   the client holds the certificate's key. What a certificate is worth is decided afterwards
//!   by the access control: [`chain_verifies`] against the trust anchors of `/oic/sec/cred`, or
//!   the owner's key recorded at the ownership transfer.
//! - **Versions**: TLS 1.3, and TLS 1.2 only with the extended master secret (RFC 7627), so the
//!   exporter the ownership transfer is bound to is unique to the session. No session
//!   resumption: every connection is a full handshake with its own client certificate.
//! - **Exporter**: `EXPORTER-ocfpi-otm`, no context, 32 bytes, per connection.

use std::fmt;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use ocf::security::otm;
use ocf::server::Peer;
use ocf_rustls::AnyClientCertificate;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::NoServerSessionStorage;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::conn::{Conns, Limits, Slot, Tracked};
use crate::server::Agent;
use crate::tcp;
use crate::tls;

/// The manufacturer certificate chain in the state directory (PEM, leaf first).
pub const MFG_CERT: &str = "mfg.crt";
/// The manufacturer certificate's private key in the state directory (PEM).
pub const MFG_KEY: &str = "mfg.key";

/// The server's certificate chain and key.
pub struct ServerIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// A manufacturer certificate (kept across factory resets), not a self-signed one.
    pub manufacturer: bool,
}

impl fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("chain", &self.chain.len())
            .field("key", &"<redacted>")
            .field("manufacturer", &self.manufacturer)
            .finish()
    }
}

/// A self-signed certificate for `key` with subject CN `uuid:<di>`.
pub fn self_signed(key: &KeyPair, di: &str) -> Result<ServerIdentity, String> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| format!("certificate: {e}"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("uuid:{di}"));
    params.distinguished_name = dn;
    let cert = params
        .self_signed(key)
        .map_err(|e| format!("self-signed certificate: {e}"))?;
    Ok(ServerIdentity {
        chain: vec![cert.der().clone()],
        key: tls::private_key_der(key),
        manufacturer: false,
    })
}

/// The manufacturer certificate and key: `--mfg-cert`/`--mfg-key` if given, else
/// `STATE/mfg.crt` + `STATE/mfg.key` if both exist. `Ok(None)` when there is none; one file of
/// the pair without the other, or an unreadable one, is an error naming it.
pub fn load_manufacturer(
    given: Option<(&Path, &Path)>,
    state_dir: &Path,
) -> Result<Option<ServerIdentity>, String> {
    let (cert_path, key_path) = match given {
        Some((c, k)) => (c.to_path_buf(), k.to_path_buf()),
        None => {
            let (c, k) = (state_dir.join(MFG_CERT), state_dir.join(MFG_KEY));
            match (c.exists(), k.exists()) {
                (false, false) => return Ok(None),
                (true, false) => {
                    return Err(format!(
                        "{} exists but {} does not",
                        c.display(),
                        k.display()
                    ))
                }
                (false, true) => {
                    return Err(format!(
                        "{} exists but {} does not",
                        k.display(),
                        c.display()
                    ))
                }
                (true, true) => (c, k),
            }
        }
    };
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| format!("{}: cannot read: {e}", p.display()))
    };
    let chain = ocf::x509::certificates_from_pem(&read(&cert_path)?)
        .map_err(|e| format!("{}: {e}", cert_path.display()))?;
    // The key's text never goes into a message.
    let key = ocf::x509::private_key_from_pem(read(&key_path)?.as_bytes())
        .map_err(|_| format!("{}: not a usable PEM private key", key_path.display()))?;
    let identity = ServerIdentity {
        chain,
        key,
        manufacturer: true,
    };
    // The key must be usable and belong to the certificate.
    server_config(&identity)
        .map_err(|e| format!("{} with {}: {e}", cert_path.display(), key_path.display()))?;
    Ok(Some(identity))
}

/// The rustls server configuration of the secure endpoint (see the module docs).
pub fn server_config(identity: &ServerIdentity) -> Result<Arc<ServerConfig>, String> {
    let provider = tls::provider();
    let verifier = AnyClientCertificate::new(&provider);
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: {e}"))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| format!("server certificate and key: {e}"))?;
    config.require_ems = true;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Serves the secure endpoint until shutdown. A TLS handshake that does not finish within
/// [`Limits::handshake`] is dropped, so a client that opens connections and never finishes
/// them cannot hold the places ([`crate::conn`]).
pub async fn serve(listener: TcpListener, agent: Rc<Agent>, shutdown: watch::Receiver<bool>) {
    let conns = Conns::new(Limits::default());
    let stop = shutdown.clone();
    conns
        .serve(listener, stop, move |stream, peer, slot| {
            connection(stream, peer, slot, agent.clone(), shutdown.clone())
        })
        .await;
}

async fn connection(
    stream: Tracked,
    peer: std::net::SocketAddr,
    slot: Slot,
    agent: Rc<Agent>,
    shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(agent.tls_config());
    let tls = match acceptor.accept(stream).await {
        Ok(s) => s,
        Err(e) => {
            debug!(%peer, "TLS handshake failed: {e}");
            return;
        }
    };
    let (_, conn) = tls.get_ref();
    let exporter =
        match conn.export_keying_material([0u8; otm::EXPORTER_LEN], otm::EXPORTER_LABEL, None) {
            Ok(e) => e,
            Err(e) => {
                warn!(%peer, "no TLS exporter: {e}");
                return;
            }
        };
    let version = conn.protocol_version();
    let certs: Option<Vec<CertificateDer<'static>>> = conn.peer_certificates().map(|c| c.to_vec());
    let (id, outbox) = agent.open_stream();
    agent.open_tls(id, certs.as_deref().unwrap_or_default(), exporter.to_vec());
    let mut owner = agent.is_owner(id);
    slot.established(owner);
    debug!(%peer, connection = id, ?version, "secure connection opened");
    let result = tcp::run_connection(tls, &agent, id, outbox, shutdown, |packet| {
        let answer = agent.serve(Peer::Tls(id), packet).unwrap_or_default();
        // An onboarding Mediator's connection becomes the owner's partway through (the
        // ownership transfer on it succeeded): from then on it is never evicted.
        if !owner && agent.is_owner(id) {
            owner = true;
            slot.became_owner();
        }
        answer
    })
    .await;
    if let Err(e) = result {
        debug!(%peer, connection = id, "secure connection ended: {e}");
    }
}

pub fn log_listening(listener: &TcpListener) {
    if let Ok(addr) = listener.local_addr() {
        info!("coaps+tcp listening on {addr}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::chain_verifies;
    use crate::tls::tests::{ca, leaf, DI};
    use rcgen::PKCS_ECDSA_P256_SHA256;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Handshakes a client (with `client_cert`, if any) against the device's server config;
    /// returns (client exporter, server exporter, the certificates the server saw).
    async fn handshake(
        server: Arc<ServerConfig>,
        client_cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> Result<([u8; 32], [u8; 32], usize), String> {
        let provider = tls::provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ocf_rustls::ServerVerifier::any(&provider)));
        let client = match client_cert {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
            None => builder.with_no_client_auth(),
        };
        let (a, b) = tokio::io::duplex(16 * 1024);
        let server_task = async move {
            let mut s = tokio_rustls::TlsAcceptor::from(server)
                .accept(b)
                .await
                .map_err(|e| e.to_string())?;
            let (_, conn) = s.get_ref();
            let ex = conn
                .export_keying_material([0u8; 32], otm::EXPORTER_LABEL, None)
                .map_err(|e| e.to_string())?;
            let n = conn.peer_certificates().map(|c| c.len()).unwrap_or(0);
            let mut buf = [0u8; 1];
            s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((ex, n))
        };
        let client_task = async move {
            let mut c = tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(tls::server_name("127.0.0.1").unwrap(), a)
                .await
                .map_err(|e| e.to_string())?;
            c.write_all(b"x").await.map_err(|e| e.to_string())?;
            c.flush().await.map_err(|e| e.to_string())?;
            let (_, conn) = c.get_ref();
            conn.export_keying_material([0u8; 32], otm::EXPORTER_LABEL, None)
                .map_err(|e| e.to_string())
        };
        let (s, c) = tokio::join!(server_task, client_task);
        let (server_ex, n) = s?;
        Ok((c?, server_ex, n))
    }

    #[test]
    fn anonymous_and_self_signed_clients_are_accepted_with_matching_exporters() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let config = server_config(&self_signed(&key, DI).unwrap()).unwrap();
        let mediator_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mediator = self_signed(&mediator_key, "00000000-0000-4000-8000-0000000000aa").unwrap();
        rt().block_on(async {
            for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
                let (c, s, n) = handshake(config.clone(), None, version).await.unwrap();
                assert_eq!(c, s, "both ends derive the same exporter");
                assert_eq!(n, 0);
                let cert = Some((mediator.chain.clone(), mediator.key.clone_key()));
                let (c2, s2, n) = handshake(config.clone(), cert, version).await.unwrap();
                assert_eq!((c2, n), (s2, 1));
                assert_ne!(c, c2, "every session has its own exporter");
            }
        });
    }

    #[test]
    fn chains_are_verified_against_the_trust_anchors_for_client_auth() {
        let other = ca();
        let ca = ca();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = leaf("uuid:5a3d0b1c-9e8f-4a7b-8c6d-5e4f3a2b1c0d", &ca, &key);
        let chain = [cert.der().clone()];
        assert!(chain_verifies(&chain, &[ca.der().clone()]));
        assert!(!chain_verifies(&chain, &[]));
        assert!(
            !chain_verifies(&chain, &[other.der().clone()]),
            "another CA"
        );
        assert!(!chain_verifies(&[], &[ca.der().clone()]));
        assert!(!chain_verifies(&chain, &[b"junk".to_vec().into()]));
        // A self-signed certificate is not its own trust anchor's child.
        let me = self_signed(&key, DI).unwrap();
        assert!(!chain_verifies(&me.chain, &[ca.der().clone()]));
    }

    #[test]
    fn manufacturer_files_come_in_pairs() {
        let dir = std::env::temp_dir().join(format!("ocf-mfg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::state::ensure_dir(&dir).unwrap();
        assert!(load_manufacturer(None, &dir).unwrap().is_none());
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = leaf(&format!("uuid:{DI}"), &ca(), &key);
        std::fs::write(dir.join(MFG_CERT), cert.pem()).unwrap();
        let e = load_manufacturer(None, &dir).unwrap_err();
        assert!(e.contains(MFG_KEY), "{e}");
        std::fs::write(
            dir.join(MFG_KEY),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = load_manufacturer(None, &dir).unwrap_err();
        assert!(e.contains(MFG_KEY) && !e.contains("AAAA"), "{e}");
        std::fs::write(dir.join(MFG_KEY), key.serialize_pem()).unwrap();
        let id = load_manufacturer(None, &dir).unwrap().unwrap();
        assert!(id.manufacturer);
        server_config(&id).unwrap();
        let missing = dir.join("nope.crt");
        let e = load_manufacturer(Some((&missing, &dir.join(MFG_KEY))), &dir).unwrap_err();
        assert!(e.contains("nope.crt"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
