//! Checks on the device's CSR and on the certificate the cloud issues for it: the CSR's subject
//! must be CN `uuid:<di>` of the device being onboarded, and the certificate must be for the
//! same key and name. (PKCS#10, RFC 2986: `CertificationRequest` = SEQUENCE {
//! `certificationRequestInfo` SEQUENCE { version, subject Name, subjectPKInfo, [0] attributes },
//! signatureAlgorithm, signature }.)

use ocf::security::pem::{certificate_info, hex, parse_certificates};
use ocf::security::uuid_from_cn;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateSigningRequestDer;
use sha2::{Digest, Sha256};

/// What the Mediator needs to know about a CSR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrInfo {
    pub subject_cn: Option<String>,
    /// SHA-256 of the DER SubjectPublicKeyInfo, lower-case hex.
    pub spki_sha256: String,
}

type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// One DER element: (tag, content, whole element, rest).
fn tlv(input: &[u8]) -> Result<Tlv<'_>, String> {
    let (&tag, rest) = input.split_first().ok_or("DER: truncated")?;
    let (&first, mut rest) = rest.split_first().ok_or("DER: truncated")?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err("DER: bad length".into());
        }
        let (len_bytes, r) = rest.split_at(n);
        rest = r;
        len_bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    if rest.len() < len {
        return Err("DER: truncated".into());
    }
    let header = input.len() - rest.len();
    let (content, after) = rest.split_at(len);
    Ok((tag, content, &input[..header + len], after))
}

/// The last CN of an X.501 Name (content of the SEQUENCE).
fn common_name(mut name: &[u8]) -> Result<Option<String>, String> {
    const CN_OID: &[u8] = &[0x55, 0x04, 0x03];
    let mut cn = None;
    while !name.is_empty() {
        let (tag, set, _, rest) = tlv(name)?;
        name = rest;
        if tag != 0x31 {
            return Err("DER: a name component is not a SET".into());
        }
        let mut atvs = set;
        while !atvs.is_empty() {
            let (_, atv, _, r) = tlv(atvs)?;
            atvs = r;
            let (otag, oid, _, after) = tlv(atv)?;
            if otag == 0x06 && oid == CN_OID {
                let (vtag, value, _, _) = tlv(after)?;
                // UTF8String, PrintableString, IA5String, TeletexString.
                if matches!(vtag, 0x0c | 0x13 | 0x16 | 0x14) {
                    cn = Some(String::from_utf8_lossy(value).into_owned());
                }
            }
        }
    }
    Ok(cn)
}

/// Reads the subject CN and key fingerprint of a PEM CSR.
pub fn csr_info(pem: &str) -> Result<CsrInfo, String> {
    let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("not a PEM certificate request: {e}"))?;
    let (tag, req, _, _) = tlv(der.as_ref())?;
    if tag != 0x30 {
        return Err("CSR: not a SEQUENCE".into());
    }
    let (tag, info, _, _) = tlv(req)?;
    if tag != 0x30 {
        return Err("CSR: certificationRequestInfo is not a SEQUENCE".into());
    }
    let (tag, _, _, rest) = tlv(info)?;
    if tag != 0x02 {
        return Err("CSR: no version".into());
    }
    let (tag, subject, _, rest) = tlv(rest)?;
    if tag != 0x30 {
        return Err("CSR: the subject is not a Name".into());
    }
    let (tag, _, spki, _) = tlv(rest)?;
    if tag != 0x30 {
        return Err("CSR: no SubjectPublicKeyInfo".into());
    }
    Ok(CsrInfo {
        subject_cn: common_name(subject)?,
        spki_sha256: hex(&Sha256::digest(spki)),
    })
}

/// Checks that the device's CSR is for `di` (CN `uuid:<di>`); returns its info.
pub fn check_csr(pem: &str, di: &str) -> Result<CsrInfo, String> {
    let info = csr_info(pem)?;
    match info.subject_cn.as_deref().and_then(uuid_from_cn) {
        Some(u) if u.eq_ignore_ascii_case(di) => Ok(info),
        _ => Err(format!(
            "the device's CSR is for {:?}, not uuid:{di}",
            info.subject_cn.as_deref().unwrap_or("(no CN)")
        )),
    }
}

/// Checks that the certificate the cloud issued is for the CSR's key and for `di`.
pub fn check_issued(cert_pem: &str, csr: &CsrInfo, di: &str) -> Result<(), String> {
    let der = parse_certificates(cert_pem)
        .map_err(|e| format!("the cloud's certificate: {e}"))?
        .into_iter()
        .next()
        .ok_or("the cloud sent no certificate")?;
    let info = certificate_info(&der).map_err(|e| format!("the cloud's certificate: {e}"))?;
    if hex(&info.spki_sha256) != csr.spki_sha256 {
        return Err("the cloud's certificate is not for the device's key".into());
    }
    match info.subject_cn.as_deref().and_then(uuid_from_cn) {
        Some(u) if u.eq_ignore_ascii_case(di) => Ok(()),
        _ => Err(format!(
            "the cloud's certificate has CN {:?}, not uuid:{di}",
            info.subject_cn
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};

    const DI: &str = "aaaaaaaa-1111-2222-3333-444444444444";

    fn params(cn: &str) -> CertificateParams {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "ocf");
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p
    }

    #[test]
    fn csr_subject_and_key_are_checked() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = params(&format!("uuid:{DI}"))
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let info = check_csr(&csr, &DI.to_uppercase()).unwrap();
        assert_eq!(
            info.subject_cn.as_deref(),
            Some(format!("uuid:{DI}").as_str())
        );

        let other = "bbbbbbbb-1111-2222-3333-444444444444";
        assert!(check_csr(&csr, other).unwrap_err().contains("not uuid:"));
        let no_uuid = params("device")
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        assert!(check_csr(&no_uuid, DI).is_err());
        assert!(csr_info(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
        )
        .is_err());
        assert!(csr_info("hello").is_err());

        // A certificate for the same key and name passes; another key or name does not.
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca_params = params("ca");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let cert = params(&format!("uuid:{DI}"))
            .signed_by(&key, &issuer)
            .unwrap()
            .pem();
        check_issued(&cert, &info, DI).unwrap();
        let other_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let wrong_key = params(&format!("uuid:{DI}"))
            .signed_by(&other_key, &issuer)
            .unwrap()
            .pem();
        assert!(check_issued(&wrong_key, &info, DI)
            .unwrap_err()
            .contains("key"));
        let wrong_name = params(&format!("uuid:{other}"))
            .signed_by(&key, &issuer)
            .unwrap()
            .pem();
        assert!(check_issued(&wrong_name, &info, DI)
            .unwrap_err()
            .contains("CN"));
    }
}
