//! The cloud's certificates (rcgen): its own CA, its server certificate with CN `uuid:<sid>`,
//! identity certificates signed from device CSRs, and the checks plgd hub makes on a device
//! certificate (OCF-PROTOCOL.md §8).
//!
//! Files in the data directory, all mode 0600, created on first start and reused afterwards:
//! `sid`, `ca.key`, `ca.crt`, `server.key`, `server.crt`.

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use ocf::x509::{self, Certificate, Csr, EKU_CLIENT_AUTH, EKU_OCF_IDENTITY, EKU_SERVER_AUTH};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use time::OffsetDateTime;

/// The OCF identity EKU, 1.3.6.1.4.1.44924.1.6.
pub const OCF_IDENTITY_EKU: &[u64] = &[1, 3, 6, 1, 4, 1, 44924, 1, 6];

/// Validity of an identity certificate issued from a CSR.
pub const DEVICE_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// The cloud's key material.
pub struct Pki {
    /// The cloud's UUID.
    pub sid: String,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The CA certificate, DER.
    pub ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    /// The server certificate chain (leaf, CA).
    pub server_chain: Vec<CertificateDer<'static>>,
    server_key_pem: String,
}

impl Pki {
    /// Loads the key material from `dir`, creating what is missing. `sid` is used only when no
    /// `sid` file exists yet; a different one stored already is an error.
    pub fn load_or_create(dir: &Path, sid: Option<&str>) -> Result<Pki, String> {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let sid_path = dir.join("sid");
        let stored_sid = match fs::read_to_string(&sid_path) {
            Ok(s) => Some(s.trim().to_ascii_lowercase()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("cannot read {}: {e}", sid_path.display())),
        };
        let sid = match (stored_sid, sid) {
            (Some(stored), Some(wanted)) if !stored.eq_ignore_ascii_case(wanted) => {
                return Err(format!(
                    "--sid {wanted} differs from the sid {stored} stored in {}",
                    dir.display()
                ))
            }
            (Some(stored), _) => stored,
            (None, wanted) => {
                let sid = match wanted {
                    Some(s) => s.to_ascii_lowercase(),
                    None => uuid::Uuid::new_v4().to_string(),
                };
                write_private(&sid_path, sid.as_bytes())?;
                sid
            }
        };
        if !ocf::cloud::payload::is_uuid(&sid) {
            return Err(format!("sid {sid:?} is not a UUID"));
        }

        let (ca_key_path, ca_crt_path) = (dir.join("ca.key"), dir.join("ca.crt"));
        let (ca_key, ca_pem) = if ca_key_path.exists() && ca_crt_path.exists() {
            let key_pem = read(&ca_key_path)?;
            let key = KeyPair::from_pem(&key_pem).map_err(|e| format!("ca.key: {e}"))?;
            (key, read(&ca_crt_path)?)
        } else {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|e| format!("cannot generate the CA key: {e}"))?;
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::OrganizationName, "ocf-dev-cloud");
            dn.push(DnType::CommonName, format!("ocf-dev-cloud CA {sid}"));
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let now = OffsetDateTime::now_utc();
            params.not_before = now - Duration::from_secs(3600);
            params.not_after = now + Duration::from_secs(20 * 365 * 24 * 3600);
            params.serial_number = Some(random_serial()?);
            let cert = params
                .self_signed(&key)
                .map_err(|e| format!("cannot create the CA certificate: {e}"))?;
            write_private(&ca_key_path, key.serialize_pem().as_bytes())?;
            write_private(&ca_crt_path, cert.pem().as_bytes())?;
            // A new CA invalidates any server certificate left over.
            let _ = fs::remove_file(dir.join("server.crt"));
            (key, cert.pem())
        };
        let ca_der = x509::certificates_from_pem(&ca_pem)
            .map_err(|e| format!("ca.crt: {e}"))?
            .remove(0);
        let issuer =
            Issuer::from_ca_cert_der(&ca_der, ca_key).map_err(|e| format!("ca.crt: {e}"))?;

        let (srv_key_path, srv_crt_path) = (dir.join("server.key"), dir.join("server.crt"));
        let existing = if srv_key_path.exists() && srv_crt_path.exists() {
            let crt = read(&srv_crt_path)?;
            let der = x509::certificates_from_pem(&crt)
                .map_err(|e| format!("server.crt: {e}"))?
                .remove(0);
            let cn_ok =
                common_name(&der).is_some_and(|cn| cn.eq_ignore_ascii_case(&format!("uuid:{sid}")));
            cn_ok.then_some((read(&srv_key_path)?, der))
        } else {
            None
        };
        let (server_key_pem, server_der) = match existing {
            Some(v) => v,
            None => {
                let now = OffsetDateTime::now_utc();
                let (key_pem, cert) =
                    server_certificate(&sid, &issuer, now - Duration::from_secs(3600))?;
                write_private(&srv_key_path, key_pem.as_bytes())?;
                write_private(&srv_crt_path, cert.pem().as_bytes())?;
                (key_pem, cert.der().clone())
            }
        };
        Ok(Pki {
            sid,
            ca_pem,
            ca_der: ca_der.clone(),
            issuer,
            server_chain: vec![server_der, ca_der],
            server_key_pem,
        })
    }

    /// For tests of devices whose clock is behind: replaces (in memory only; the files keep
    /// the normal one) the server certificate with a new one whose validity starts `offset`
    /// from now.
    pub fn with_server_not_before(mut self, offset: Duration) -> Result<Pki, String> {
        let not_before = OffsetDateTime::now_utc() + offset;
        let (key_pem, cert) = server_certificate(&self.sid, &self.issuer, not_before)?;
        self.server_chain[0] = cert.der().clone();
        self.server_key_pem = key_pem;
        Ok(self)
    }

    /// The server's private key.
    pub fn server_key(&self) -> Result<PrivateKeyDer<'static>, String> {
        x509::private_key_from_pem(self.server_key_pem.as_bytes())
            .map_err(|e| format!("server.key: {e}"))
    }

    /// Signs a PKCS#10 CSR (PEM) into an identity certificate (PEM): the CSR's signature must
    /// verify and its subject CN be `uuid:<UUID>`; the certificate copies that CN and gets EKUs
    /// serverAuth, clientAuth and 1.3.6.1.4.1.44924.1.6, KeyUsage digitalSignature and
    /// keyAgreement, and one year of validity. Extensions requested in the CSR are ignored.
    pub fn sign_csr(&self, csr_pem: &str) -> Result<String, String> {
        let csr = Csr::from_pem(csr_pem).map_err(|e| format!("certificate request: {e}"))?;
        let cn = csr
            .subject_cn()
            .ok_or("the certificate request has no single subject CN")?;
        if csr.cn_uuid().is_none() {
            return Err("the subject CN must be uuid:<UUID>".into());
        }
        // rcgen checks the request's signature (RFC 2986 §4.2: proof of possession) and hands
        // out its public key for signing.
        let key = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(
            csr.der.as_slice(),
        ))
        .map_err(|e| format!("the certificate request's signature does not verify: {e}"))?
        .public_key;

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::Other(OCF_IDENTITY_EKU.to_vec()),
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyAgreement,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(3600);
        params.not_after = now + DEVICE_CERT_VALIDITY;
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| format!("cannot sign: {e}"))?;
        Ok(cert.pem())
    }
}

impl Pki {
    /// A certificate for the HTTPS API listener, made afresh at every start and kept in memory
    /// only (the CA in `ca.crt` is what clients trust): SANs for loopback, for `listen` unless
    /// it is a wildcard address, and for each of `names` (an IP address or a DNS name), as
    /// RFC 9110 §4.3.4 has clients check the host of the URL against them. EKU serverAuth;
    /// valid for a year. Returns (chain: leaf and CA, key).
    pub fn https_certificate(
        &self,
        listen: IpAddr,
        names: &[String],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| format!("cannot generate the HTTPS key: {e}"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "ocf-dev-cloud");
        dn.push(
            DnType::CommonName,
            format!("ocf-dev-cloud API {}", self.sid),
        );
        params.distinguished_name = dn;
        let mut ips = vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ];
        let mut dns = vec!["localhost".to_string()];
        if !listen.is_unspecified() {
            ips.push(listen);
        }
        for name in names {
            match name
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<IpAddr>()
            {
                Ok(ip) => ips.push(ip),
                Err(_) => dns.push(name.to_ascii_lowercase()),
            }
        }
        ips.sort();
        ips.dedup();
        dns.sort();
        dns.dedup();
        params.subject_alt_names = ips.into_iter().map(SanType::IpAddress).collect();
        for name in dns {
            let ia5 = name
                .as_str()
                .try_into()
                .map_err(|e| format!("--https-name {name:?}: {e}"))?;
            params.subject_alt_names.push(SanType::DnsName(ia5));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(3600);
        params.not_after = now + Duration::from_secs(365 * 24 * 3600);
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| format!("cannot create the HTTPS certificate: {e}"))?;
        let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        Ok((vec![cert.der().clone(), self.ca_der.clone()], key))
    }
}

/// A new server key (PEM) and certificate: CN `uuid:<sid>`, SANs for loopback, EKUs
/// serverAuth and clientAuth, valid for ten years from `not_before`.
fn server_certificate(
    sid: &str,
    issuer: &Issuer<'static, KeyPair>,
    not_before: OffsetDateTime,
) -> Result<(String, rcgen::Certificate), String> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("cannot generate the server key: {e}"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("uuid:{sid}"));
    params.distinguished_name = dn;
    params.subject_alt_names = vec![
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        SanType::DnsName(
            "localhost"
                .try_into()
                .map_err(|e| format!("SAN localhost: {e}"))?,
        ),
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyAgreement,
    ];
    params.not_before = not_before;
    params.not_after = not_before + Duration::from_secs(10 * 365 * 24 * 3600);
    params.serial_number = Some(random_serial()?);
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, issuer)
        .map_err(|e| format!("cannot create the server certificate: {e}"))?;
    Ok((key.serialize_pem(), cert))
}

/// What hub checks in a device certificate after the chain has been validated
/// (OCF-PROTOCOL.md §8.2): EKUs serverAuth, clientAuth and 1.3.6.1.4.1.44924.1.6, and subject
/// CN `uuid:<di>`. Returns the `di` (lower case).
pub fn device_id_from_cert(der: &[u8]) -> Result<String, String> {
    let cert = Certificate::from_der(der).map_err(|e| format!("malformed certificate: {e}"))?;
    if cert.ext_key_usage.is_none() {
        return Err("the certificate has no extended key usage".into());
    }
    if !cert.has_ext_key_usage(EKU_SERVER_AUTH) || !cert.has_ext_key_usage(EKU_CLIENT_AUTH) {
        return Err("the certificate lacks EKU serverAuth or clientAuth".into());
    }
    if !cert.has_ext_key_usage(EKU_OCF_IDENTITY) {
        return Err(format!("the certificate lacks EKU {EKU_OCF_IDENTITY}"));
    }
    if cert.subject_cn().is_none() {
        return Err("the certificate has no single subject CN".into());
    }
    cert.cn_uuid()
        .ok_or_else(|| "the subject CN is not uuid:<di>".into())
}

/// The subject CN of a certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    Certificate::from_der(der)
        .ok()?
        .subject_cn()
        .map(str::to_owned)
}

fn random_serial() -> Result<SerialNumber, String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    bytes[0] &= 0x7F;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn read(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Writes a file with mode 0600, atomically (temporary file, fsync, rename).
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let err = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(err)?;
        f.write_all(data).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        // Under the target directory (the test binary lives in target/<profile>/deps).
        let base = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("ocf-dev-cloud-tmp")))
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!(
            "ocf-dev-cloud-pki-{name}-{}-{}",
            std::process::id(),
            crate::core::random_hex(4).unwrap()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn csr(cn: &str) -> (KeyPair, String) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        (key, pem)
    }

    #[test]
    fn created_once_then_reused() {
        let dir = temp_dir("reuse");
        let sid = "11111111-2222-3333-4444-555555555555";
        let a = Pki::load_or_create(&dir, Some(sid)).unwrap();
        assert_eq!(a.sid, sid);
        assert_eq!(
            common_name(&a.server_chain[0]).unwrap(),
            format!("uuid:{sid}")
        );
        let parsed = Certificate::from_der(&a.server_chain[0]).unwrap();
        assert!(
            parsed.has_ext_key_usage(EKU_SERVER_AUTH) && parsed.has_ext_key_usage(EKU_CLIENT_AUTH)
        );
        // SANs and key usages are not read in production; x509-parser checks them here.
        let (_, srv) = x509_parser::parse_x509_certificate(&a.server_chain[0]).unwrap();
        let san = srv.subject_alternative_name().unwrap().unwrap().value;
        let names: Vec<String> = san.general_names.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            names,
            [
                "IPAddress(7f:00:00:01)",
                "IPAddress(00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:01)",
                "DNSName(localhost)"
            ]
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in ["sid", "ca.key", "ca.crt", "server.key", "server.crt"] {
                let mode = fs::metadata(dir.join(f)).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
        }
        let b = Pki::load_or_create(&dir, None).unwrap();
        assert_eq!(b.sid, sid);
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(a.server_chain, b.server_chain);
        assert!(Pki::load_or_create(&dir, Some("11111111-2222-3333-4444-000000000000")).is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_server_certificate_valid_from_later_is_in_memory_only() {
        let dir = temp_dir("later");
        let pki = Pki::load_or_create(&dir, None).unwrap();
        let stored = pki.server_chain[0].clone();
        let pki = pki
            .with_server_not_before(Duration::from_secs(3600))
            .unwrap();
        let cert = Certificate::from_der(&pki.server_chain[0]).unwrap();
        let starts = cert.not_before;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert!(
            (now + 3500..=now + 3700).contains(&starts),
            "{starts} vs {now}"
        );
        assert!(
            common_name(&pki.server_chain[0]).is_some_and(|cn| cn == format!("uuid:{}", pki.sid))
        );
        assert!(pki.server_key().is_ok());
        // The files keep the normal certificate.
        let again = Pki::load_or_create(&dir, None).unwrap();
        assert_eq!(again.server_chain[0], stored);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn csr_signing_sets_cn_and_ekus() {
        let dir = temp_dir("csr");
        let pki = Pki::load_or_create(&dir, None).unwrap();
        let di = "9f0a6b1e-3c2d-4e5f-8a9b-0c1d2e3f4a5b";
        let (_key, pem) = csr(&format!("uuid:{di}"));
        let cert_pem = pki.sign_csr(&pem).unwrap();
        let der = x509::certificates_from_pem(&cert_pem).unwrap().remove(0);
        assert_eq!(device_id_from_cert(&der).unwrap(), di);
        let parsed = Certificate::from_der(&der).unwrap();
        assert!(!parsed.is_ca);
        let days = (parsed.not_after - OffsetDateTime::now_utc().unix_timestamp()) / 86_400;
        assert!((364..=366).contains(&days), "{days}");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && ku.key_agreement());
        // Chained to the CA: its signature verifies with the CA key.
        let (_, ca) = x509_parser::parse_x509_certificate(&pki.ca_der).unwrap();
        cert.verify_signature(Some(ca.public_key())).unwrap();
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_csrs_are_refused() {
        let dir = temp_dir("bad");
        let pki = Pki::load_or_create(&dir, None).unwrap();
        for cn in ["device-1", "uuid:not-a-uuid", "uuid:"] {
            let (_k, pem) = csr(cn);
            assert!(pki.sign_csr(&pem).is_err(), "{cn}");
        }
        assert!(pki.sign_csr("garbage").is_err());
        assert!(pki
            .sign_csr(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
            )
            .is_err());
        // A tampered CSR: its signature no longer verifies.
        let (_k, pem) = csr("uuid:9f0a6b1e-3c2d-4e5f-8a9b-0c1d2e3f4a5b");
        let mut bytes = Csr::from_pem(&pem).unwrap().der;
        let pos = bytes.windows(4).position(|w| w == b"9f0a").unwrap();
        bytes[pos] = b'8';
        let tampered = pem_encode("CERTIFICATE REQUEST", &bytes);
        let err = pki.sign_csr(&tampered).unwrap_err();
        assert!(err.contains("signature"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn device_cert_checks() {
        let dir = temp_dir("leaf");
        let pki = Pki::load_or_create(&dir, None).unwrap();
        // The server certificate lacks the OCF EKU: not a device identity.
        assert!(device_id_from_cert(&pki.server_chain[0])
            .unwrap_err()
            .contains("44924"));
        assert!(device_id_from_cert(b"junk").is_err());
        // A CA-issued certificate with the EKUs but a CN that is not uuid:<di>.
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "device-1");
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::Other(OCF_IDENTITY_EKU.to_vec()),
        ];
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.signed_by(&key, &pki.issuer).unwrap();
        assert!(device_id_from_cert(cert.der())
            .unwrap_err()
            .contains("uuid:<di>"));
        let _ = fs::remove_dir_all(&dir);
    }

    fn pem_encode(label: &str, der: &[u8]) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let mut out = format!("-----BEGIN {label}-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap());
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }
}
