//! rustls glue shared by the agent, the Mediator and the test tools (the sans-IO core `ocf`
//! stays free of rustls).
//!
//! OCF peers are not authenticated by a web PKI: the device's server certificate is self-signed
//! and is vouched for by the ownership transfer, the Mediator's client certificate likewise, and
//! the cloud is named by its CN, not by a host name. So these verifiers decide nothing about a
//! certificate's worth by themselves; they only keep what TLS must always do, verifying the
//! handshake signature with the certificate's key (RFC 8446 §4.4.3, RFC 5246 §7.4.8), so the
//! peer holds the key of the certificate it presented. What the certificate is worth is then
//! up to the caller: a check passed in ([`ServerVerifier::checked`]), the access control, or a
//! pinned key.

#![forbid(unsafe_code)]

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The handshake signature checks every verifier here shares, over `self.algorithms`.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

/// The *ring* provider with its default suites (the agent orders its own for the cloud link).
pub fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// A check of the server's certificate chain (leaf, intermediates) at a time.
pub type ServerCheck = dyn Fn(&CertificateDer<'_>, &[CertificateDer<'_>], UnixTime) -> Result<(), rustls::Error>
    + Send
    + Sync;

/// A server certificate verifier: the handshake signature is always verified; the certificate
/// itself is accepted as it is ([`ServerVerifier::any`]) or as a check decides.
pub struct ServerVerifier {
    algorithms: WebPkiSupportedAlgorithms,
    check: Option<Box<ServerCheck>>,
    /// What the check is, for Debug.
    what: String,
}

impl ServerVerifier {
    /// Accepts any server certificate (the caller pins or otherwise judges it afterwards).
    pub fn any(provider: &CryptoProvider) -> ServerVerifier {
        ServerVerifier {
            algorithms: provider.signature_verification_algorithms,
            check: None,
            what: "any certificate".to_owned(),
        }
    }

    /// Accepts a server certificate if `check` does; `what` describes it in Debug output.
    pub fn checked(
        provider: &CryptoProvider,
        what: impl Into<String>,
        check: Box<ServerCheck>,
    ) -> ServerVerifier {
        ServerVerifier {
            algorithms: provider.signature_verification_algorithms,
            check: Some(check),
            what: what.into(),
        }
    }
}

impl fmt::Debug for ServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ServerVerifier").field(&self.what).finish()
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(check) = &self.check {
            check(end_entity, intermediates, now)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

/// Asks for a client certificate but does not require one, and accepts any (a Mediator's is
/// self-signed): which one it is matters to the access control, not to the handshake. The
/// handshake signature is still verified.
#[derive(Debug)]
pub struct AnyClientCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AnyClientCertificate {
    pub fn new(provider: &CryptoProvider) -> AnyClientCertificate {
        AnyClientCertificate {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for AnyClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

    /// A self-signed certificate and its key.
    fn identity(
        cn: &str,
    ) -> (
        Vec<CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.self_signed(&key).unwrap();
        (
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
    }

    /// Runs a handshake in memory; returns how many certificates the server saw from the client.
    fn handshake(
        client: ClientConfig,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> Result<usize, rustls::Error> {
        let (chain, key) = identity("server");
        let provider = ring_provider();
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])?
            .with_client_cert_verifier(Arc::new(AnyClientCertificate::new(&provider)))
            .with_single_cert(chain, key)?;
        let name = ServerName::try_from("device").unwrap();
        let mut c = Connection::from(ClientConnection::new(Arc::new(client), name)?);
        let mut s = Connection::from(ServerConnection::new(Arc::new(server))?);
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets()?;
            let mut buf = Vec::new();
            s.write_tls(&mut buf).unwrap();
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(s.peer_certificates().map_or(0, <[_]>::len));
            }
        }
        panic!("the handshake did not finish");
    }

    fn client(verifier: ServerVerifier, cert: bool) -> ClientConfig {
        let builder = ClientConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        if cert {
            let (chain, key) = identity("client");
            builder.with_client_auth_cert(chain, key).unwrap()
        } else {
            builder.with_no_client_auth()
        }
    }

    #[test]
    fn any_certificate_on_both_sides_with_and_without_a_client_certificate() {
        let p = ring_provider();
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            assert_eq!(
                handshake(client(ServerVerifier::any(&p), true), version),
                Ok(1)
            );
            assert_eq!(
                handshake(client(ServerVerifier::any(&p), false), version),
                Ok(0)
            );
        }
    }

    #[test]
    fn a_check_decides_about_the_server_certificate() {
        let p = ring_provider();
        let refuse = ServerVerifier::checked(
            &p,
            "nothing",
            Box::new(|_, _, _| Err(rustls::Error::General("refused".into()))),
        );
        assert!(format!("{refuse:?}").contains("nothing"));
        let e = handshake(client(refuse, false), &rustls::version::TLS13).unwrap_err();
        assert_eq!(e, rustls::Error::General("refused".into()));
        let cn_seen = ServerVerifier::checked(
            &p,
            "leaf only",
            Box::new(|leaf, intermediates, _| {
                assert!(!leaf.is_empty() && intermediates.is_empty());
                Ok(())
            }),
        );
        assert_eq!(
            handshake(client(cn_seen, false), &rustls::version::TLS12),
            Ok(0)
        );
    }
}
