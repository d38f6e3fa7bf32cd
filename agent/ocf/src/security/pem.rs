//! PEM certificates (RFC 7468) and the two facts the security core reads from a certificate:
//! the subject CN and a fingerprint of the public key.
//!
//! This is deliberately not an X.509 implementation: it checks that a `publicdata` blob consists
//! of `CERTIFICATE` blocks whose base64 decodes to one DER `SEQUENCE` each, and walks a
//! certificate's DER just far enough to find `subject` and `subjectPublicKeyInfo`. Chain
//! validation, signatures, validity and extensions are the daemon's business (rustls/webpki).
//! Every function is total on hostile input: bad bytes give an error, never a panic.

use std::fmt;

use sha2::{Digest, Sha256};

/// Largest PEM text accepted in one credential.
pub const MAX_PEM_LEN: usize = 32 * 1024;
/// Most certificates in one credential (a leaf plus intermediates, or a CA bundle).
pub const MAX_CERTS: usize = 8;

const BEGIN_CERT: &str = "-----BEGIN CERTIFICATE-----";
const END_CERT: &str = "-----END CERTIFICATE-----";

/// Why a PEM text or a certificate could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemError(pub String);

impl fmt::Display for PemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PemError {}

fn err(msg: impl Into<String>) -> PemError {
    PemError(msg.into())
}

/// The DER certificates of a PEM text made only of `CERTIFICATE` blocks (blank lines between
/// them are fine; any other text, any other block type such as a private key, PEM headers or
/// bad base64 is refused).
pub fn parse_certificates(pem: &str) -> Result<Vec<Vec<u8>>, PemError> {
    if pem.len() > MAX_PEM_LEN {
        return Err(err(format!("PEM text longer than {MAX_PEM_LEN} bytes")));
    }
    let mut certs = Vec::new();
    let mut body: Option<String> = None;
    for (n, raw) in pem.lines().enumerate() {
        let line = raw.trim();
        let lineno = n + 1;
        match body.as_mut() {
            None => {
                if line.is_empty() {
                    continue;
                }
                if line == BEGIN_CERT {
                    if certs.len() == MAX_CERTS {
                        return Err(err(format!("more than {MAX_CERTS} certificates")));
                    }
                    body = Some(String::new());
                } else if let Some(label) = line
                    .strip_prefix("-----BEGIN ")
                    .and_then(|l| l.strip_suffix("-----"))
                {
                    let label: String = label.chars().take(40).collect();
                    return Err(err(format!(
                        "line {lineno}: PEM block of type {label:?}; only CERTIFICATE is accepted"
                    )));
                } else {
                    return Err(err(format!("line {lineno}: text outside a PEM block")));
                }
            }
            Some(b64) => {
                if line == END_CERT {
                    let der = base64_decode(b64)
                        .map_err(|e| err(format!("certificate {}: {e}", certs.len() + 1)))?;
                    check_der_sequence(&der)
                        .map_err(|e| err(format!("certificate {}: {e}", certs.len() + 1)))?;
                    certs.push(der);
                    body = None;
                } else if line.starts_with("-----") {
                    return Err(err(format!("line {lineno}: unexpected PEM boundary")));
                } else if line.contains(':') {
                    return Err(err(format!("line {lineno}: PEM headers are not accepted")));
                } else {
                    b64.push_str(line);
                }
            }
        }
    }
    if body.is_some() {
        return Err(err("PEM block without its END line"));
    }
    if certs.is_empty() {
        return Err(err("no CERTIFICATE block"));
    }
    Ok(certs)
}

/// Standard base64 (RFC 4648 §4) with padding, no whitespace.
fn base64_decode(s: &str) -> Result<Vec<u8>, PemError> {
    let bytes = s.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return Err(err("base64 length is not a multiple of 4"));
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let chunks = bytes.len() / 4;
    for (i, chunk) in bytes.chunks_exact(4).enumerate() {
        let last = i + 1 == chunks;
        let mut vals = [0u8; 4];
        let mut pad = 0;
        for (j, &c) in chunk.iter().enumerate() {
            vals[j] = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                b'=' if last && j >= 2 => {
                    pad += 1;
                    0
                }
                _ => return Err(err("invalid base64")),
            };
            if pad > 0 && c != b'=' {
                return Err(err("invalid base64 padding"));
            }
        }
        let n = (u32::from(vals[0]) << 18)
            | (u32::from(vals[1]) << 12)
            | (u32::from(vals[2]) << 6)
            | u32::from(vals[3]);
        let [_, a, b, c] = n.to_be_bytes();
        out.push(a);
        if pad < 2 {
            out.push(b);
        }
        if pad < 1 {
            out.push(c);
        }
    }
    Ok(out)
}

/// One DER TLV: (tag, content, the whole element, the rest).
type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// Reads one DER element (definite lengths of up to 4 bytes).
fn tlv(input: &[u8]) -> Result<Tlv<'_>, PemError> {
    let (&tag, rest) = input.split_first().ok_or_else(|| err("DER: truncated"))?;
    let (&first, mut rest) = rest.split_first().ok_or_else(|| err("DER: truncated"))?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err(err("DER: bad length"));
        }
        let (len_bytes, r) = rest.split_at(n);
        rest = r;
        len_bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    if rest.len() < len {
        return Err(err("DER: truncated"));
    }
    let header = input.len() - rest.len();
    let (content, after) = rest.split_at(len);
    Ok((tag, content, &input[..header + len], after))
}

fn check_der_sequence(der: &[u8]) -> Result<(), PemError> {
    let (tag, _, _, rest) = tlv(der)?;
    if tag != 0x30 {
        return Err(err("not a DER SEQUENCE"));
    }
    if !rest.is_empty() {
        return Err(err("trailing bytes after the DER certificate"));
    }
    Ok(())
}

/// What the security core needs to know about a certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject's common name (the last CN in the subject), if it is a text string.
    pub subject_cn: Option<String>,
    /// SHA-256 over the DER `SubjectPublicKeyInfo`: identifies the key, survives re-issuing.
    pub spki_sha256: [u8; 32],
}

impl fmt::Debug for CertInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertInfo")
            .field("subject_cn", &self.subject_cn)
            .field("spki_sha256", &hex(&self.spki_sha256))
            .finish()
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the subject CN and the public key fingerprint of a DER X.509 certificate
/// (RFC 5280 §4.1: `tbsCertificate` = `[0]` version?, serial, signature, issuer, validity,
/// subject, subjectPublicKeyInfo, ...).
pub fn certificate_info(der: &[u8]) -> Result<CertInfo, PemError> {
    let (tag, cert, _, _) = tlv(der)?;
    if tag != 0x30 {
        return Err(err("certificate is not a SEQUENCE"));
    }
    let (tag, tbs, _, _) = tlv(cert)?;
    if tag != 0x30 {
        return Err(err("tbsCertificate is not a SEQUENCE"));
    }
    let mut rest = tbs;
    let (tag, _, _, r) = tlv(rest)?;
    if tag == 0xa0 {
        rest = r; // explicit version
    }
    let mut fields = Vec::with_capacity(5);
    for _ in 0..5 {
        // serialNumber, signature, issuer, validity, subject
        let (tag, content, _, r) = tlv(rest)?;
        fields.push((tag, content));
        rest = r;
    }
    let (subject_tag, subject) = fields[4];
    if fields[0].0 != 0x02 || subject_tag != 0x30 {
        return Err(err("certificate fields are not in X.509 order"));
    }
    let (tag, _, spki, _) = tlv(rest)?;
    if tag != 0x30 {
        return Err(err("subjectPublicKeyInfo is not a SEQUENCE"));
    }
    Ok(CertInfo {
        subject_cn: common_name(subject)?,
        spki_sha256: Sha256::digest(spki).into(),
    })
}

/// The last CN (OID 2.5.4.3) of a Name's RDN sequence.
fn common_name(mut rdns: &[u8]) -> Result<Option<String>, PemError> {
    const CN_OID: &[u8] = &[0x55, 0x04, 0x03];
    let mut cn = None;
    while !rdns.is_empty() {
        let (tag, mut set, _, r) = tlv(rdns)?;
        rdns = r;
        if tag != 0x31 {
            return Err(err("subject RDN is not a SET"));
        }
        while !set.is_empty() {
            let (tag, atv, _, r) = tlv(set)?;
            set = r;
            if tag != 0x30 {
                return Err(err("subject attribute is not a SEQUENCE"));
            }
            let (tag, oid, _, r) = tlv(atv)?;
            if tag != 0x06 || oid != CN_OID {
                continue;
            }
            let (tag, value, _, _) = tlv(r)?;
            // UTF8String, PrintableString, IA5String.
            if matches!(tag, 0x0c | 0x13 | 0x16) {
                cn = std::str::from_utf8(value).ok().map(str::to_owned);
            }
        }
    }
    Ok(cn)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Test certificates made with `openssl req -x509 -newkey ec -pkeyopt
    /// ec_paramgen_curve:P-256 -nodes -days 36500 -subj …`: the owner's (subject
    /// `/O=test/CN=uuid:11111111-2222-3333-4444-555555555555`) and a CA (`/CN=ocf test ca`).
    pub(crate) const OWNER_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIB3TCCAYOgAwIBAgIUansaSw6FohhLXS30oHuUnH1oN1cwCgYIKoZIzj0EAwIw
QzENMAsGA1UECgwEdGVzdDEyMDAGA1UEAwwpdXVpZDoxMTExMTExMS0yMjIyLTMz
MzMtNDQ0NC01NTU1NTU1NTU1NTUwIBcNMjYxMTI1MDEyNzIzWhgPMjEyNjExMDEw
MTI3MjNaMEMxDTALBgNVBAoMBHRlc3QxMjAwBgNVBAMMKXV1aWQ6MTExMTExMTEt
MjIyMi0zMzMzLTQ0NDQtNTU1NTU1NTU1NTU1MFkwEwYHKoZIzj0CAQYIKoZIzj0D
AQcDQgAEzpltbv4eiIE772wq2bmpplSFIAttJmn2dgeixCM3r168HB99Jq3cjfDX
wmG2UffVJklWkfTm3MlJwF7kXSye8KNTMFEwHQYDVR0OBBYEFHF07zTCEGDV/KWz
9bOgJ5I2HapBMB8GA1UdIwQYMBaAFHF07zTCEGDV/KWz9bOgJ5I2HapBMA8GA1Ud
EwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIgTqH2bXl7Robcz9F7lsTtG8do
Sdw0xjW0exGu3kuvy7UCIQCeUY2RD82li+gDTKZ88JHs6FHN6BXuebEGZkf0KZNB
jQ==
-----END CERTIFICATE-----
";
    pub(crate) const CA_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBgjCCASmgAwIBAgIUA1IIZ0lhXCjdWcN1ivjwtkCFohgwCgYIKoZIzj0EAwIw
FjEUMBIGA1UEAwwLb2NmIHRlc3QgY2EwIBcNMjYxMTI1MDEyNzIzWhgPMjEyNjEx
MDEwMTI3MjNaMBYxFDASBgNVBAMMC29jZiB0ZXN0IGNhMFkwEwYHKoZIzj0CAQYI
KoZIzj0DAQcDQgAEUSfLgFOgj/SLuGR1sTJ9hugk6U5AaixHam19efRJFyWg9Y5o
tOZHW15R9OWkGwK2+J1Rd8JlK3pUuwJ7cLdCJ6NTMFEwHQYDVR0OBBYEFI1Kr5ie
2210vdNEUvpVeFNMkxJhMB8GA1UdIwQYMBaAFI1Kr5ie2210vdNEUvpVeFNMkxJh
MA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDRwAwRAIgcJX+ZW5DnP+Qwp7a
gbR6MWgRiZz2Ct41/vNG/EL9uLMCIGFyh/NJEarCRdekxLA3x8JtWFyh9YC1ZevJ
UXGL9+dD
-----END CERTIFICATE-----
";
    /// `openssl x509 -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum` of OWNER_CERT.
    pub(crate) const OWNER_SPKI_SHA256: &str =
        "d1384231a3912f5ef27ce3854b6849ca7d526cbfe7fa416ff5d5ce0c5d2868a6";

    #[test]
    fn base64_round_trips_known_vectors() {
        // RFC 4648 §10.
        for (plain, enc) in [
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_decode(enc).unwrap(), plain.as_bytes());
        }
        for bad in ["", "Zg=", "Z===", "Zg=a", "Zm9v!A==", "=Zm9", "Zg==Zg=="] {
            assert!(base64_decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pem_accepts_certificates_only() {
        let certs = parse_certificates(OWNER_CERT).unwrap();
        assert_eq!(certs.len(), 1);
        let two = format!("{OWNER_CERT}\n{OWNER_CERT}");
        assert_eq!(parse_certificates(&two).unwrap().len(), 2);
        let crlf = OWNER_CERT.replace('\n', "\r\n");
        assert_eq!(parse_certificates(&crlf).unwrap().len(), 1);

        let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let e = parse_certificates(key).unwrap_err();
        assert!(e.0.contains("PRIVATE KEY"), "{e}");
        let mixed = format!("{OWNER_CERT}{key}");
        assert!(parse_certificates(&mixed).is_err());
        assert!(parse_certificates("").is_err());
        assert!(parse_certificates("hello").is_err());
        let unterminated = OWNER_CERT.replace(END_CERT, "");
        assert!(parse_certificates(&unterminated).is_err());
        let not_der = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(parse_certificates(not_der).is_err());
        let too_many = OWNER_CERT.repeat(MAX_CERTS + 1);
        assert!(parse_certificates(&too_many).is_err());
    }

    #[test]
    fn certificate_info_reads_cn_and_key() {
        let der = &parse_certificates(OWNER_CERT).unwrap()[0];
        let info = certificate_info(der).unwrap();
        assert_eq!(
            info.subject_cn.as_deref(),
            Some("uuid:11111111-2222-3333-4444-555555555555")
        );
        assert_eq!(hex(&info.spki_sha256), OWNER_SPKI_SHA256);
        let ca = certificate_info(&parse_certificates(CA_CERT).unwrap()[0]).unwrap();
        assert_eq!(ca.subject_cn.as_deref(), Some("ocf test ca"));
        // Every truncation is an error, never a panic.
        for n in 0..der.len() {
            let _ = certificate_info(&der[..n]);
        }
    }

    #[test]
    fn hostile_bytes_never_panic() {
        let mut seed = 0x1234_5678_u32;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as u8
                })
                .collect();
            let _ = certificate_info(&bytes);
            let _ = tlv(&bytes);
        }
        let _ = certificate_info(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]);
    }
}
