//! TLS for the cloud link (OCF-PROTOCOL.md §8): the device's identity key and CSR, and the
//! rustls client configuration that presents the identity certificate and accepts a cloud only
//! if its chain ends at the provisioned trust anchor **and** its certificate CN is `uuid:<sid>`.
//!
//! Files in the state directory (all PEM; the key is written with mode 0600):
//! - `identity.key`: the device's ECDSA P-256 key (PKCS#8), created on first start
//!   ([`ensure_identity_key`]). It never leaves the device: `ocf-agent csr` prints a CSR for it.
//! - `identity.crt`: the identity certificate chain (leaf first) the cloud's CA issued for that
//!   CSR (CN `uuid:<di>`, EKUs serverAuth, clientAuth, 1.3.6.1.4.1.44924.1.6).
//! - `cloud-ca.pem`: the cloud trust anchor(s).
//!
//! Normally the identity certificate and the cloud trust anchors come from `/oic/sec/cred`
//! (provisioned by the Mediator, see [`crate::security`]); `identity.crt` and `cloud-ca.pem`
//! are the interim files of the development mode (`--insecure-dev`). Either is read at every
//! connect, so new ones take effect at the next connection without a restart.
//!
//! rustls is used with the *ring* provider only (§8.4, DESIGN.md §3): TLS 1.3, and TLS 1.2 with
//! ECDHE-ECDSA AES-128-GCM among the suites plgd hub and iotivity-lite offer (§8.1). webpki only
//! matches SANs against the server name, while the OCF identity is in the CN, so
//! [`cloud_verifier`] validates the chain for server-auth usage against the anchors, skips
//! hostname matching as iotivity-lite and plgd do (§8.3), and checks the CN itself.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use ocf::x509;
use ocf_rustls::ServerVerifier;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, OtherError, RootCertStore};

use crate::state::atomic_write;

/// The device's private key.
pub const IDENTITY_KEY: &str = "identity.key";
/// The device's identity certificate chain.
pub const IDENTITY_CERT: &str = "identity.crt";
/// The cloud trust anchor(s).
pub const CLOUD_CA: &str = "cloud-ca.pem";

/// The crypto provider of the cloud link: *ring*, TLS 1.3 suites first, then the TLS 1.2
/// ECDHE suites with AES-128-GCM leading (OCF-PROTOCOL.md §8.1: what plgd and iotivity-lite
/// offer). No CBC suites: rustls has none, and hub negotiates GCM or TLS 1.3 anyway.
pub fn provider() -> Arc<CryptoProvider> {
    use ring::cipher_suite::*;
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        key_provider: &EcdsaKeys,
        ..ring::default_provider()
    })
}

/// Loads only ECDSA keys: OCF certificates are ECDSA (P-256), so the device never signs with
/// RSA, and leaving RSA signing out keeps its big-integer code out of the binary. RSA
/// signatures of peers are still verified.
#[derive(Debug)]
struct EcdsaKeys;

impl rustls::crypto::KeyProvider for EcdsaKeys {
    fn load_private_key(
        &self,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
        ring::sign::any_ecdsa_type(&key)
    }
}

/// Loads the identity key, creating it (ECDSA P-256, PKCS#8 PEM, mode 0600) if it is missing.
/// Returns the key and whether it was created.
pub fn ensure_identity_key(dir: &Path) -> Result<(KeyPair, bool), String> {
    let path = dir.join(IDENTITY_KEY);
    if path.exists() {
        return Ok((load_identity_key(&path)?, false));
    }
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("cannot generate the identity key: {e}"))?;
    atomic_write(&path, key.serialize_pem().as_bytes())
        .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
    Ok((key, true))
}

/// Reads an ECDSA P-256 private key (PEM); the error names the file, never its content.
pub fn load_identity_key(path: &Path) -> Result<KeyPair, String> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let key = KeyPair::from_pem(&pem)
        .map_err(|e| format!("{}: not a usable private key: {e}", path.display()))?;
    if !key.is_compatible(&PKCS_ECDSA_P256_SHA256) {
        return Err(format!("{}: not an ECDSA P-256 key", path.display()));
    }
    Ok(key)
}

/// A PKCS#10 CSR (PEM) for `key` with subject CN `uuid:<di>` (OCF-PROTOCOL.md §8.2). The CA
/// decides the EKUs; the request carries only the subject and the public key.
pub fn csr_pem(key: &KeyPair, di: &str) -> Result<String, String> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| format!("CSR: {e}"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("uuid:{di}"));
    params.distinguished_name = dn;
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(|e| format!("CSR: {e}"))
}

/// What the device presents to the cloud and what it trusts: the identity certificate chain
/// (leaf first), its private key, and the trust anchors for the cloud's chain.
pub struct CloudCredentials {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub anchors: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for CloudCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudCredentials")
            .field("chain", &self.chain.len())
            .field("key", &"<redacted>")
            .field("anchors", &self.anchors.len())
            .finish()
    }
}

/// The identity key as rustls wants it (PKCS#8 DER).
pub fn private_key_der(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(key.serialize_der().into())
}

/// Replaces the identity key with a new one (factory reset, OCF-PROTOCOL.md §9: the key pair is
/// regenerated), written atomically with mode 0600.
pub fn regenerate_identity_key(dir: &Path) -> Result<KeyPair, String> {
    let path = dir.join(IDENTITY_KEY);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("cannot generate the identity key: {e}"))?;
    atomic_write(&path, key.serialize_pem().as_bytes())
        .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
    Ok(key)
}

/// The credentials in the interim files of the state directory (`identity.crt`,
/// `identity.key`, `cloud-ca.pem`); only used in the development mode.
pub fn file_credentials(dir: &Path) -> Result<CloudCredentials, String> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let chain = x509::certificates_from_pem(&read(IDENTITY_CERT)?)
        .map_err(|e| format!("{IDENTITY_CERT}: {e}"))?;
    let key = x509::private_key_from_pem(read(IDENTITY_KEY)?.as_bytes())
        .map_err(|e| format!("{IDENTITY_KEY}: {e}"))?;
    Ok(CloudCredentials {
        chain,
        key,
        anchors: file_anchors(dir)?,
    })
}

/// The cloud trust anchors of the interim file `cloud-ca.pem` (development mode only).
pub fn file_anchors(dir: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let path = dir.join(CLOUD_CA);
    let pem = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    x509::certificates_from_pem(&pem).map_err(|e| format!("{CLOUD_CA}: {e}"))
}

/// The client configuration for a cloud with UUID `sid`, from the files in `dir`.
#[cfg(test)]
pub fn client_config(dir: &Path, sid: &str) -> Result<Arc<ClientConfig>, String> {
    client_config_from(file_credentials(dir)?, sid)
}

/// The client configuration for a cloud with UUID `sid`: mutual TLS with `creds.chain` and
/// `creds.key`, the cloud verified by [`cloud_verifier`] against `creds.anchors`.
pub fn client_config_from(creds: CloudCredentials, sid: &str) -> Result<Arc<ClientConfig>, String> {
    if creds.chain.is_empty() {
        return Err("no identity certificate".into());
    }
    let mut roots = RootCertStore::empty();
    for anchor in creds.anchors {
        roots
            .add(anchor)
            .map_err(|e| format!("unusable trust anchor: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no trust anchor for the cloud".into());
    }
    let provider = provider();
    let verifier = cloud_verifier(Arc::new(roots), sid, &provider);
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(creds.chain, creds.key)
        .map_err(|e| format!("identity certificate and key: {e}"))?;
    Ok(Arc::new(config))
}

/// Whether a client's chain (leaf first) validates for client authentication against one of
/// `anchors` (DER). No anchors, or anything malformed, is `false`.
pub fn chain_verifies(chain: &[CertificateDer<'_>], anchors: &[CertificateDer<'static>]) -> bool {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return false;
    };
    let mut roots = rustls::RootCertStore::empty();
    for a in anchors {
        // An anchor webpki cannot use is skipped, not fatal.
        let _ = roots.add(a.clone());
    }
    if roots.is_empty() {
        return false;
    }
    let Ok(verifier) =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
    else {
        return false;
    };
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .is_ok()
}

/// The TLS server name for a `cis` host: an IP literal as such (no SNI is sent for it), else a
/// DNS name. Neither is matched against the certificate (see [`cloud_verifier`]).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_owned()).map_err(|_| format!("{host:?} is not a valid host name"))
}

/// The cloud's certificate check (OCF-PROTOCOL.md §8.3, §8.4): its chain validates for server
/// authentication against the trust anchors, and its leaf's subject CN is `uuid:<sid>`. The
/// host name is not matched (iotivity-lite and plgd do not either). The handshake signature is
/// checked by [`ServerVerifier`] around it.
pub fn cloud_verifier(
    roots: Arc<RootCertStore>,
    sid: &str,
    provider: &CryptoProvider,
) -> ServerVerifier {
    let algorithms = provider.signature_verification_algorithms.all;
    let what = format!("cloud uuid:{sid}, {} trust anchors", roots.len());
    let sid = sid.to_owned();
    ServerVerifier::checked(
        provider,
        what,
        Box::new(move |end_entity, intermediates, now| {
            let cert = ParsedCertificate::try_from(end_entity)?;
            // The one X.509 reader names the cloud and dates it; webpki validates the chain.
            let leaf = x509::Certificate::from_der(end_entity)
                .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
            verify_server_cert_signed_by_trust_anchor(
                &cert,
                &roots,
                intermediates,
                now,
                algorithms,
            )
            .map_err(|e| not_valid_yet_context(e, &leaf, now))?;
            match leaf.subject_cn() {
                Some(cn) if x509::cn_is_uuid(cn, &sid) => Ok(()),
                _ => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(WrongCloudIdentity(format!(
                        "the cloud certificate's CN is {} instead of uuid:{sid}",
                        if leaf.subject_cns.is_empty() {
                            "missing".to_owned()
                        } else {
                            leaf.subject_cns.join(", ")
                        },
                    )))),
                ))),
            }
        }),
    )
}

/// The CN check failed.
#[derive(Debug)]
struct WrongCloudIdentity(String);

impl fmt::Display for WrongCloudIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WrongCloudIdentity {}

/// A TLS handshake failed because the peer's certificate is not valid yet by our clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotValidYet {
    /// The certificate's notBefore, seconds since the Unix epoch, when rustls reports it.
    pub not_before: Option<u64>,
    /// The time it was checked against (the system clock), likewise.
    pub now: Option<u64>,
}

impl NotValidYet {
    /// The one log line for it: the clock, not the cloud, is the likely culprit.
    pub fn clock_message(&self, whose: &str) -> String {
        let now = self.now.or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs())
        });
        let until = match self.not_before {
            Some(t) => format!("is not valid until {}", utc(t)),
            None => "is not valid yet".to_owned(),
        };
        let clock = match now {
            Some(t) => format!("the system clock ({})", utc(t)),
            None => "the system clock".to_owned(),
        };
        format!(
            "{whose} certificate {until}; {clock} is probably behind: no time sync yet? retrying"
        )
    }
}

/// Whether a TLS connect failed on a certificate that is not valid yet (RFC 5280 §4.1.2.5:
/// the time is before notBefore). tokio-rustls reports rustls's error inside the `io::Error`.
pub fn not_valid_yet(error: &std::io::Error) -> Option<NotValidYet> {
    let inner = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    match inner {
        rustls::Error::InvalidCertificate(CertificateError::NotValidYet) => Some(NotValidYet {
            not_before: None,
            now: None,
        }),
        rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext {
            time,
            not_before,
        }) => Some(NotValidYet {
            not_before: Some(not_before.as_secs()),
            now: Some(time.as_secs()),
        }),
        _ => None,
    }
}

/// A leaf that is not valid yet by `now` (RFC 5280 §4.1.2.5) gets its notBefore into the error,
/// so that the cloud link can tell a clock that is behind from a bad certificate.
fn not_valid_yet_context(
    e: rustls::Error,
    leaf: &x509::Certificate,
    now: UnixTime,
) -> rustls::Error {
    let at = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    match (&e, leaf.validity_at(at)) {
        (
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
            ),
            x509::Validity::NotYetValid { not_before },
        ) => rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext {
            time: now,
            not_before: UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                u64::try_from(not_before).unwrap_or(0),
            )),
        }),
        _ => e,
    }
}

/// `secs` since the Unix epoch as an RFC 3339 UTC time (`1970-01-01T00:00:00Z`), without a
/// date crate: the civil-from-days algorithm of H. Hinnant, "chrono-Compatible Low-Level Date
/// Algorithms".
pub fn utc(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Days since 0000-03-01; u64 covers every epoch second.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyUsagePurpose,
        SanType,
    };
    use rustls::server::WebPkiClientVerifier;
    use rustls::ServerConfig;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub const SID: &str = "5a3d0b1c-9e8f-4a7b-8c6d-5e4f3a2b1c0d";
    pub const DI: &str = "c0ffee00-0000-4000-8000-000000000001";

    /// A test PKI: a CA, a cloud server certificate, the device's key and certificate.
    pub struct Pki {
        pub ca_pem: String,
        pub ca: CertifiedIssuer<'static, KeyPair>,
        pub server_chain: Vec<CertificateDer<'static>>,
        pub server_key: PrivateKeyDer<'static>,
    }

    pub fn ca() -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "test cloud CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        CertifiedIssuer::self_signed(
            params,
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap(),
        )
        .unwrap()
    }

    pub fn leaf(cn: &str, ca: &Issuer<'_, KeyPair>, key: &KeyPair) -> rcgen::Certificate {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 4, 1, 44924, 1, 6]),
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.signed_by(key, ca).unwrap()
    }

    pub fn pki(server_cn: &str) -> Pki {
        let ca = ca();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = leaf(server_cn, &ca, &key);
        Pki {
            ca_pem: ca.pem(),
            server_chain: vec![cert.der().clone()],
            server_key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            ca,
        }
    }

    fn state_dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("ocf-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        crate::state::ensure_dir(&d).unwrap();
        d
    }

    /// Writes identity.key/.crt (signed by `pki.ca`) and cloud-ca.pem into a new state dir.
    fn provisioned_dir(tag: &str, pki: &Pki) -> std::path::PathBuf {
        let dir = state_dir(tag);
        let (key, created) = ensure_identity_key(&dir).unwrap();
        assert!(created);
        let cert = leaf(&format!("uuid:{DI}"), &pki.ca, &key);
        std::fs::write(dir.join(IDENTITY_CERT), cert.pem()).unwrap();
        std::fs::write(dir.join(CLOUD_CA), &pki.ca_pem).unwrap();
        dir
    }

    #[test]
    fn identity_key_is_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = state_dir("key");
        let (a, created) = ensure_identity_key(&dir).unwrap();
        assert!(created);
        let (b, created) = ensure_identity_key(&dir).unwrap();
        assert!(!created);
        assert_eq!(a.public_key_raw(), b.public_key_raw());
        let mode = std::fs::metadata(dir.join(IDENTITY_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(dir.join(IDENTITY_KEY)).unwrap();
        assert!(
            text.starts_with("-----BEGIN PRIVATE KEY-----"),
            "PKCS#8 PEM"
        );
        std::fs::write(dir.join(IDENTITY_KEY), "garbage").unwrap();
        assert!(ensure_identity_key(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn csr_has_the_device_cn() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = csr_pem(&key, DI).unwrap();
        assert!(
            csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"),
            "{csr}"
        );
        let csr = x509::Csr::from_pem(&csr).unwrap();
        assert_eq!(csr.subject_cns, [format!("uuid:{DI}")]);
        assert_eq!(
            csr.spki_der,
            rcgen::PublicKeyData::subject_public_key_info(&key)
        );
    }

    /// A TLS handshake over an in-memory pipe against a server requiring a client certificate.
    async fn handshake(
        dir: &Path,
        sid: &str,
        server: &Pki,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> Result<(), String> {
        let client = client_config(dir, sid)?;
        let mut roots = RootCertStore::empty();
        roots.add(server.ca.der().clone()).unwrap();
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .unwrap();
        let server_config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(server.server_chain.clone(), server.server_key.clone_key())
            .unwrap();
        let (a, b) = tokio::io::duplex(16 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        let server_task = async move {
            let mut s = acceptor.accept(b).await.map_err(|e| e.to_string())?;
            let (_, conn) = s.get_ref();
            let peer = conn.peer_certificates().map(|c| c.len()).unwrap_or(0);
            let suite = conn.negotiated_cipher_suite().map(|s| s.suite());
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            s.write_all(&buf).await.map_err(|e| e.to_string())?;
            s.flush().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((peer, suite))
        };
        let client_task = async move {
            let connector = tokio_rustls::TlsConnector::from(client);
            let mut c = connector
                .connect(server_name("127.0.0.1").unwrap(), a)
                .await
                .map_err(|e| e.to_string())?;
            c.write_all(b"ping").await.map_err(|e| e.to_string())?;
            c.flush().await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 4];
            c.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            assert_eq!(&buf, b"ping");
            Ok::<_, String>(())
        };
        let (s, c) = tokio::join!(server_task, client_task);
        c?;
        let (peer_certs, suite) = s?;
        assert_eq!(peer_certs, 1, "client certificate presented");
        if version == &rustls::version::TLS12 {
            assert_eq!(
                suite,
                Some(rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
            );
        }
        Ok(())
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn mutual_tls_13_and_12_with_the_right_sid() {
        let server = pki(&format!("uuid:{SID}"));
        let dir = provisioned_dir("ok", &server);
        rt().block_on(async {
            handshake(&dir, SID, &server, &rustls::version::TLS13)
                .await
                .unwrap();
            handshake(&dir, SID, &server, &rustls::version::TLS12)
                .await
                .unwrap();
            // Upper-case sid in the configuration still matches.
            handshake(&dir, &SID.to_uppercase(), &server, &rustls::version::TLS13)
                .await
                .unwrap();
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wrong_sid_is_refused() {
        let server = pki(&format!("uuid:{SID}"));
        let dir = provisioned_dir("sid", &server);
        let other = "00000000-0000-4000-8000-000000000009";
        let e = rt()
            .block_on(handshake(&dir, other, &server, &rustls::version::TLS13))
            .unwrap_err();
        assert!(
            e.contains("instead of uuid:00000000-0000-4000-8000-000000000009"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cn_that_is_not_a_uuid_is_refused() {
        let server = pki("cloud.example");
        let dir = provisioned_dir("cn", &server);
        let e = rt()
            .block_on(handshake(&dir, SID, &server, &rustls::version::TLS12))
            .unwrap_err();
        assert!(e.contains("CN"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn untrusted_chain_is_refused() {
        let server = pki(&format!("uuid:{SID}"));
        let dir = provisioned_dir("chain", &server);
        // Another CA with the same name as the trust anchor.
        std::fs::write(dir.join(CLOUD_CA), ca().pem()).unwrap();
        let e = rt()
            .block_on(handshake(&dir, SID, &server, &rustls::version::TLS13))
            .unwrap_err();
        assert!(e.to_lowercase().contains("certificate"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The client side's error of a handshake with a cloud presenting `server`.
    async fn client_error(dir: &Path, server: &Pki) -> std::io::Error {
        let client = client_config(dir, SID).unwrap();
        let server_config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(server.server_chain.clone(), server.server_key.clone_key())
            .unwrap();
        let (a, b) = tokio::io::duplex(16 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        let connector = tokio_rustls::TlsConnector::from(client);
        let (_, c) = tokio::join!(
            acceptor.accept(b),
            connector.connect(server_name("127.0.0.1").unwrap(), a)
        );
        match c {
            Ok(_) => panic!("the handshake must fail"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_cloud_certificate_not_valid_yet_is_told_apart() {
        // notBefore 2200-01-01: not valid yet whatever this machine's clock says.
        let issuer = ca();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("uuid:{SID}"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = rcgen::date_time_ymd(2200, 1, 1);
        params.not_after = rcgen::date_time_ymd(2201, 1, 1);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let server = Pki {
            ca_pem: issuer.pem(),
            server_chain: vec![cert.der().clone()],
            server_key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            ca: issuer,
        };
        let dir = provisioned_dir("not-yet", &server);
        let e = rt().block_on(client_error(&dir, &server));
        let found = not_valid_yet(&e).unwrap_or_else(|| panic!("not classified: {e}"));
        assert_eq!(found.not_before, Some(7_258_118_400), "{e}");
        let now = found.now.expect("rustls gives the time it checked against");
        let message = found.clock_message("the cloud's");
        assert!(
            message.starts_with(
                "the cloud's certificate is not valid until 2200-01-01T00:00:00Z; the system clock ("
            ) && message.contains(&utc(now))
                && message.ends_with("is probably behind: no time sync yet? retrying"),
            "{message}"
        );
        std::fs::remove_dir_all(&dir).unwrap();

        // Any other certificate failure is not a clock problem.
        let server = pki(&format!("uuid:{SID}"));
        let dir = provisioned_dir("not-yet-other", &server);
        std::fs::write(dir.join(CLOUD_CA), ca().pem()).unwrap();
        let e = rt().block_on(client_error(&dir, &server));
        assert_eq!(not_valid_yet(&e), None, "{e}");
        assert_eq!(
            not_valid_yet(&std::io::Error::other("connection refused")),
            None
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let bare = NotValidYet {
            not_before: None,
            now: None,
        };
        assert!(bare
            .clock_message("the cloud's")
            .contains("is not valid yet; the system clock ("));
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_735_689_599), "2024-12-31T23:59:59Z");
        assert_eq!(utc(7_258_118_400), "2200-01-01T00:00:00Z");
        // No panic at the end of the range.
        assert!(utc(u64::MAX).ends_with('Z'));
    }

    #[test]
    fn missing_files_are_reported_by_name() {
        let dir = state_dir("missing");
        ensure_identity_key(&dir).unwrap();
        let e = client_config(&dir, SID).unwrap_err();
        assert!(e.contains(IDENTITY_CERT), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn server_names() {
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("::1"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(
            server_name("cloud.example"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(server_name("bad host").is_err());
    }
}
