//! The one PEM / X.509 reader of the project: the agent, the Mediator and the dev cloud read
//! certificates, CSRs and keys through it.
//!
//! - PEM (RFC 7468) through `rustls-pki-types`: explanatory text around the blocks is ignored
//!   (§2), CRLF is fine, bad base64 is an error.
//! - Certificates (RFC 5280) and CSRs (PKCS#10, RFC 2986) through `x509-parser`: the subject
//!   CN, the SubjectPublicKeyInfo, the validity window, basicConstraints and the EKUs.
//!
//! Chain validation and signatures stay with rustls/webpki in the daemons; this module only
//! answers "what does this certificate say". Everything is total on hostile input: bad bytes
//! give an [`Error`], never a panic, and no error repeats key material.

use std::fmt;

use rustls_pki_types::pem::{self, PemObject, SectionKind};
pub use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate, X509CertificationRequest, X509Name};

/// Largest PEM text accepted as one credential.
pub const MAX_PEM_LEN: usize = 32 * 1024;
/// Most certificates in one credential (a leaf plus intermediates, or a CA bundle).
pub const MAX_CERTS: usize = 8;

/// EKU id-kp-serverAuth (RFC 5280 §4.2.1.12).
pub const EKU_SERVER_AUTH: &str = "1.3.6.1.5.5.7.3.1";
/// EKU id-kp-clientAuth (RFC 5280 §4.2.1.12).
pub const EKU_CLIENT_AUTH: &str = "1.3.6.1.5.5.7.3.2";
/// The OCF identity EKU (OCF-PROTOCOL.md §8.2).
pub const EKU_OCF_IDENTITY: &str = "1.3.6.1.4.1.44924.1.6";

/// Why a PEM text, a certificate or a CSR could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

fn err(msg: impl Into<String>) -> Error {
    Error(msg.into())
}

/// A PEM error in words; never the offending line (it may be part of a key).
fn pem_error(e: &pem::Error) -> Error {
    err(match e {
        pem::Error::MissingSectionEnd { .. } => "PEM block without its END line",
        pem::Error::IllegalSectionStart { .. } => "malformed PEM BEGIN line",
        pem::Error::Base64Decode(_) => "invalid base64 in a PEM block",
        pem::Error::NoItemsFound => "no PEM block of the expected type",
        pem::Error::SectionTooLarge => "PEM block too large",
        _ => "unreadable PEM",
    })
}

fn label(kind: SectionKind) -> &'static str {
    match kind {
        SectionKind::Certificate => "CERTIFICATE",
        SectionKind::PublicKey => "PUBLIC KEY",
        SectionKind::RsaPrivateKey => "RSA PRIVATE KEY",
        SectionKind::PrivateKey => "PRIVATE KEY",
        SectionKind::EcPrivateKey => "EC PRIVATE KEY",
        SectionKind::Crl => "X509 CRL",
        SectionKind::Csr => "CERTIFICATE REQUEST",
        _ => "other",
    }
}

/// The DER certificates of a PEM text (in order, leaf first for a chain). Every block must be a
/// `CERTIFICATE` holding a readable X.509 certificate: any other known block, such as a private
/// key pasted into public data, is refused. Text between blocks is ignored (RFC 7468 §2).
pub fn certificates_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    if pem.len() > MAX_PEM_LEN {
        return Err(err(format!("PEM text longer than {MAX_PEM_LEN} bytes")));
    }
    let mut certs = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem.as_bytes()) {
        let (kind, der) = section.map_err(|e| pem_error(&e))?;
        if kind != SectionKind::Certificate {
            return Err(err(format!(
                "PEM block of type {}; only CERTIFICATE is accepted",
                label(kind)
            )));
        }
        if certs.len() == MAX_CERTS {
            return Err(err(format!("more than {MAX_CERTS} certificates")));
        }
        Certificate::from_der(&der)
            .map_err(|e| err(format!("certificate {}: {e}", certs.len() + 1)))?;
        certs.push(CertificateDer::from(der));
    }
    if certs.is_empty() {
        return Err(err("no CERTIFICATE block"));
    }
    Ok(certs)
}

/// The certificates of a trust bundle file (such as a system CA bundle): no size limit, other
/// blocks skipped, the DER not inspected (the TLS library judges each anchor).
pub fn certificate_bundle_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(&e))
}

/// The first private key of a PEM text (PKCS#8, SEC 1 or PKCS#1). The error never quotes it.
pub fn private_key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| pem_error(&e))
}

/// Who a certificate or a CSR names, and its key; both [`Certificate`] and [`Csr`] dereference
/// to it.
#[derive(Clone, PartialEq, Eq)]
pub struct Subject {
    /// Every commonName of the subject that is text, in order.
    pub subject_cns: Vec<String>,
    /// The DER SubjectPublicKeyInfo.
    pub spki_der: Vec<u8>,
}

impl Subject {
    fn new(name: &X509Name<'_>, spki: &[u8]) -> Subject {
        Subject {
            // A CN value of another ASN.1 type than text is skipped rather than guessed at.
            subject_cns: name
                .iter_common_name()
                .filter_map(|atv| atv.as_str().ok())
                .map(str::to_owned)
                .collect(),
            spki_der: spki.to_vec(),
        }
    }

    /// The subject's CN if it has exactly one: two would make the identity ambiguous.
    pub fn subject_cn(&self) -> Option<&str> {
        match self.subject_cns.as_slice() {
            [cn] => Some(cn),
            _ => None,
        }
    }

    /// The UUID of a CN `uuid:<uuid>` (OCF-PROTOCOL.md §8.2), lower case.
    pub fn cn_uuid(&self) -> Option<String> {
        self.subject_cn().and_then(uuid_from_cn)
    }

    /// SHA-256 over the DER SubjectPublicKeyInfo: identifies the key, survives re-issuing.
    pub fn spki_sha256(&self) -> [u8; 32] {
        Sha256::digest(&self.spki_der).into()
    }
}

impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subject")
            .field("subject_cns", &self.subject_cns)
            .field("spki_sha256", &hex(&self.spki_sha256()))
            .finish()
    }
}

/// What the project reads from a certificate (RFC 5280 §4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub subject: Subject,
    /// notBefore and notAfter, seconds since the Unix epoch (RFC 5280 §4.1.2.5).
    pub not_before: i64,
    pub not_after: i64,
    /// basicConstraints cA (RFC 5280 §4.2.1.9).
    pub is_ca: bool,
    /// The extended key usages as dotted OIDs; `None` without the extension (§4.2.1.12).
    pub ext_key_usage: Option<Vec<String>>,
}

/// Where a time stands against a certificate's validity window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// Before notBefore: on a device without a real-time clock, usually a clock behind.
    NotYetValid {
        not_before: i64,
    },
    Valid,
    /// After notAfter.
    Expired {
        not_after: i64,
    },
}

impl Certificate {
    /// Reads a DER certificate; trailing bytes are an error.
    pub fn from_der(der: &[u8]) -> Result<Certificate, Error> {
        let (rest, cert) = X509Certificate::from_der(der)
            .map_err(|e| err(format!("not an X.509 certificate: {e}")))?;
        if !rest.is_empty() {
            return Err(err("trailing bytes after the certificate"));
        }
        let ext_key_usage = cert
            .extended_key_usage()
            .map_err(|e| err(format!("malformed extended key usage: {e}")))?
            .map(|eku| {
                let eku = eku.value;
                let mut oids = Vec::new();
                if eku.server_auth {
                    oids.push(EKU_SERVER_AUTH.to_owned());
                }
                if eku.client_auth {
                    oids.push(EKU_CLIENT_AUTH.to_owned());
                }
                oids.extend(eku.other.iter().map(|o| o.to_id_string()));
                oids
            });
        let is_ca = cert
            .basic_constraints()
            .map_err(|e| err(format!("malformed basic constraints: {e}")))?
            .is_some_and(|bc| bc.value.ca);
        let validity = cert.validity();
        Ok(Certificate {
            subject: Subject::new(cert.subject(), cert.public_key().raw),
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            is_ca,
            ext_key_usage,
        })
    }

    /// Where `now` (seconds since the Unix epoch) stands against notBefore..=notAfter
    /// (RFC 5280 §4.1.2.5: both ends are inside).
    pub fn validity_at(&self, now: i64) -> Validity {
        if now < self.not_before {
            Validity::NotYetValid {
                not_before: self.not_before,
            }
        } else if now > self.not_after {
            Validity::Expired {
                not_after: self.not_after,
            }
        } else {
            Validity::Valid
        }
    }

    /// Whether the EKU extension lists `oid`.
    pub fn has_ext_key_usage(&self, oid: &str) -> bool {
        self.ext_key_usage
            .as_deref()
            .is_some_and(|ekus| ekus.iter().any(|e| e == oid))
    }
}

impl std::ops::Deref for Certificate {
    type Target = Subject;

    fn deref(&self) -> &Subject {
        &self.subject
    }
}

/// What the project reads from a PKCS#10 request (RFC 2986 §4.1): subject and key. The
/// signature is not checked here (the CA that signs it does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Csr {
    /// The DER request.
    pub der: Vec<u8>,
    pub subject: Subject,
}

impl std::ops::Deref for Csr {
    type Target = Subject;

    fn deref(&self) -> &Subject {
        &self.subject
    }
}

impl Csr {
    /// Reads a DER request; trailing bytes are an error.
    pub fn from_der(der: &[u8]) -> Result<Csr, Error> {
        let (rest, csr) = X509CertificationRequest::from_der(der)
            .map_err(|e| err(format!("not a PKCS#10 certificate request: {e}")))?;
        if !rest.is_empty() {
            return Err(err("trailing bytes after the certificate request"));
        }
        let info = &csr.certification_request_info;
        Ok(Csr {
            der: der.to_vec(),
            subject: Subject::new(&info.subject, info.subject_pki.raw),
        })
    }

    /// Reads the first `CERTIFICATE REQUEST` block of a PEM text.
    pub fn from_pem(pem: &str) -> Result<Csr, Error> {
        let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| pem_error(&e))?;
        Csr::from_der(der.as_ref())
    }
}

/// The UUID in a CN of the form `uuid:<uuid>` (OCF-PROTOCOL.md §8.2; the prefix matched
/// case-insensitively as plgd does), lower case.
pub fn uuid_from_cn(cn: &str) -> Option<String> {
    let prefix = cn.get(..5)?;
    let rest = cn.get(5..)?;
    (prefix.eq_ignore_ascii_case("uuid:") && crate::model::is_uuid(rest))
        .then(|| rest.to_ascii_lowercase())
}

/// Whether `cn` is `uuid:<uuid>` for this `uuid` (both compared ignoring case).
pub fn cn_is_uuid(cn: &str, uuid: &str) -> bool {
    uuid_from_cn(cn).is_some_and(|u| u.eq_ignore_ascii_case(uuid))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub(crate) mod tests;
