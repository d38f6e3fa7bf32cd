//! Checks on the device's CSR and on the certificate the cloud issues for it: the CSR's subject
//! must be CN `uuid:<di>` of the device being onboarded, and the certificate must be for the
//! same key and name. Both are read through [`ocf::x509`] (PKCS#10 is RFC 2986).

use ocf::x509::{self, Certificate, Csr};

/// What the Mediator needs to know about a CSR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrInfo {
    pub subject_cn: Option<String>,
    /// SHA-256 of the DER SubjectPublicKeyInfo, lower-case hex.
    pub spki_sha256: String,
}

/// Reads the subject CN and key fingerprint of a PEM CSR.
pub fn csr_info(pem: &str) -> Result<CsrInfo, String> {
    let csr = Csr::from_pem(pem).map_err(|e| format!("the device's CSR: {e}"))?;
    Ok(CsrInfo {
        subject_cn: csr.subject_cn().map(str::to_owned),
        spki_sha256: x509::hex(&csr.spki_sha256()),
    })
}

/// Checks that the device's CSR is for `di` (CN `uuid:<di>`); returns its info.
pub fn check_csr(pem: &str, di: &str) -> Result<CsrInfo, String> {
    let info = csr_info(pem)?;
    match info.subject_cn.as_deref().and_then(x509::uuid_from_cn) {
        Some(u) if u.eq_ignore_ascii_case(di) => Ok(info),
        _ => Err(format!(
            "the device's CSR is for {:?}, not uuid:{di}",
            info.subject_cn.as_deref().unwrap_or("(no CN)")
        )),
    }
}

/// Checks that the certificate the cloud issued is for the CSR's key and for `di`.
pub fn check_issued(cert_pem: &str, csr: &CsrInfo, di: &str) -> Result<(), String> {
    let der = x509::certificates_from_pem(cert_pem)
        .map_err(|e| format!("the cloud's certificate: {e}"))?
        .remove(0);
    let info = Certificate::from_der(&der).map_err(|e| format!("the cloud's certificate: {e}"))?;
    if x509::hex(&info.spki_sha256()) != csr.spki_sha256 {
        return Err("the cloud's certificate is not for the device's key".into());
    }
    match info.cn_uuid() {
        Some(u) if u.eq_ignore_ascii_case(di) => Ok(()),
        _ => Err(format!(
            "the cloud's certificate has CN {:?}, not uuid:{di}",
            info.subject_cns
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
