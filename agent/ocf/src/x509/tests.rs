//! Tests of the PEM / X.509 reader: the openssl-made fixtures below pin the results against a
//! second implementation; rcgen makes the rest (chains, validity windows, CSRs).

use super::*;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, PKCS_ECDSA_P256_SHA256,
};

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

const UUID: &str = "11111111-2222-3333-4444-555555555555";

fn key() -> KeyPair {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap()
}

fn params(cns: &[&str]) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "ocf");
    for cn in cns {
        dn.push(DnType::CommonName, *cn);
    }
    p.distinguished_name = dn;
    p
}

fn ca_params() -> CertificateParams {
    let mut p = params(&["test ca"]);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p
}

#[test]
fn pem_with_several_certificates_keeps_their_order() {
    let certs = certificates_from_pem(&format!("{OWNER_CERT}\n{CA_CERT}")).unwrap();
    assert_eq!(certs.len(), 2);
    let cns: Vec<_> = certs
        .iter()
        .map(|c| Certificate::from_der(c).unwrap().subject.subject_cns)
        .collect();
    assert_eq!(
        cns,
        [vec![format!("uuid:{UUID}")], vec!["ocf test ca".to_owned()]]
    );
    let too_many = OWNER_CERT.repeat(MAX_CERTS + 1);
    assert!(certificates_from_pem(&too_many)
        .unwrap_err()
        .0
        .contains("more than"));
    let too_long = format!("{}{OWNER_CERT}", " ".repeat(MAX_PEM_LEN));
    assert!(certificates_from_pem(&too_long).is_err());
}

#[test]
fn pem_ignores_text_between_blocks_and_crlf() {
    // RFC 7468 §2: explanatory text around the blocks is allowed (as `openssl x509 -text` writes).
    let junk = format!("subject=CN = x\n{OWNER_CERT}some text\n\n{CA_CERT}trailer");
    assert_eq!(certificates_from_pem(&junk).unwrap().len(), 2);
    let crlf = format!("{OWNER_CERT}{CA_CERT}").replace('\n', "\r\n");
    assert_eq!(certificates_from_pem(&crlf).unwrap().len(), 2);
}

#[test]
fn a_bundle_skips_other_blocks_and_has_no_limit() {
    let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    let bundle = format!("{key}{}", CA_CERT.repeat(MAX_CERTS * 2));
    assert_eq!(
        certificate_bundle_from_pem(bundle.as_bytes())
            .unwrap()
            .len(),
        MAX_CERTS * 2
    );
    assert_eq!(certificate_bundle_from_pem(b"").unwrap().len(), 0);
    let bang = CA_CERT.replacen("MIIB", "MI!B", 1);
    assert!(certificate_bundle_from_pem(bang.as_bytes()).is_err());
}

#[test]
fn malformed_pem_is_refused() {
    assert_eq!(
        certificates_from_pem("").unwrap_err().0,
        "no CERTIFICATE block"
    );
    assert!(certificates_from_pem("hello").is_err());
    let unterminated = OWNER_CERT.replace("-----END CERTIFICATE-----", "");
    assert!(certificates_from_pem(&unterminated)
        .unwrap_err()
        .0
        .contains("END"));
    let bad_begin = OWNER_CERT.replace("-----BEGIN CERTIFICATE-----", "-----BEGIN CERTIFICATE--");
    assert!(certificates_from_pem(&bad_begin).is_err());
    // Bad base64: a character outside the alphabet, a PEM header line, bad padding.
    let bang = OWNER_CERT.replacen("MIIB", "MI!B", 1);
    assert!(certificates_from_pem(&bang)
        .unwrap_err()
        .0
        .contains("base64"));
    let header = OWNER_CERT.replacen('\n', "\nProc-Type: 4,ENCRYPTED\n", 1);
    assert!(certificates_from_pem(&header).is_err());
    let padding = "-----BEGIN CERTIFICATE-----\nZg=a\n-----END CERTIFICATE-----\n";
    assert!(certificates_from_pem(padding).is_err());
}

#[test]
fn non_certificate_blocks_are_refused() {
    let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    let e = certificates_from_pem(key).unwrap_err();
    assert!(e.0.contains("PRIVATE KEY"), "{e}");
    assert!(certificates_from_pem(&format!("{OWNER_CERT}{key}")).is_err());
    let csr = params(&["x"])
        .serialize_request(&key_pair())
        .unwrap()
        .pem()
        .unwrap();
    let e = certificates_from_pem(&csr).unwrap_err();
    assert!(e.0.contains("CERTIFICATE REQUEST"), "{e}");
}

fn key_pair() -> KeyPair {
    key()
}

#[test]
fn truncated_or_non_certificate_der_is_refused() {
    // Valid base64, but not a certificate.
    let not_der = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    assert!(certificates_from_pem(not_der)
        .unwrap_err()
        .0
        .contains("certificate 1"));
    let der = certificates_from_pem(OWNER_CERT).unwrap().remove(0);
    // Every truncation is an error, never a panic; so are trailing bytes.
    for n in 0..der.len() {
        assert!(Certificate::from_der(&der[..n]).is_err(), "{n}");
    }
    let mut long = der.to_vec();
    long.push(0);
    assert!(Certificate::from_der(&long).is_err());
}

#[test]
fn certificate_fields() {
    let der = certificates_from_pem(OWNER_CERT).unwrap().remove(0);
    let cert = Certificate::from_der(&der).unwrap();
    assert_eq!(cert.subject_cn(), Some(format!("uuid:{UUID}").as_str()));
    assert_eq!(cert.cn_uuid().as_deref(), Some(UUID));
    assert_eq!(hex(&cert.spki_sha256()), OWNER_SPKI_SHA256);
    // openssl's -days 36500 from 2026-11-25T01:27:23Z.
    assert_eq!(cert.not_before, 1_795_570_043);
    assert!(cert.is_ca, "openssl req -x509 sets cA");
    assert_eq!(cert.ext_key_usage, None);
    let ca = Certificate::from_der(&certificates_from_pem(CA_CERT).unwrap()[0]).unwrap();
    assert_eq!(ca.subject_cn(), Some("ocf test ca"));
    assert_eq!(ca.cn_uuid(), None);
}

#[test]
fn cn_uuid_extraction() {
    let k = key();
    let upper = format!("UUID:{}", UUID.to_uppercase());
    for (cns, want) in [
        (vec![upper.as_str()], Some(UUID)),
        (vec!["uuid:"], None),
        (vec![UUID], None),
        (vec!["uuid:not-a-uuid"], None),
        (vec!["uu\u{e9}d:x"], None),
        (vec![], None),
    ] {
        let cert = params(&cns).self_signed(&k).unwrap();
        let parsed = Certificate::from_der(cert.der()).unwrap();
        assert_eq!(parsed.cn_uuid().as_deref(), want, "{cns:?}");
        let csr = params(&cns).serialize_request(&k).unwrap();
        let parsed = Csr::from_der(csr.der()).unwrap();
        assert_eq!(parsed.cn_uuid().as_deref(), want, "{cns:?}");
    }
    // Two CNs (the second under rcgen's custom type, same OID 2.5.4.3): ambiguous, so no
    // identity at all.
    let mut two = params(&[&format!("uuid:{UUID}")]);
    two.distinguished_name.push(
        DnType::CustomDnType(vec![2, 5, 4, 3]),
        "uuid:aaaaaaaa-1111-2222-3333-444444444444",
    );
    let parsed = Certificate::from_der(two.self_signed(&k).unwrap().der()).unwrap();
    assert_eq!(parsed.subject_cns.len(), 2);
    assert_eq!((parsed.subject_cn(), parsed.cn_uuid()), (None, None));
    assert!(cn_is_uuid(&upper, UUID));
    assert!(cn_is_uuid(&format!("uuid:{UUID}"), &UUID.to_uppercase()));
    assert!(!cn_is_uuid("uuid:", UUID));
    assert!(!cn_is_uuid(UUID, UUID));
    assert!(!cn_is_uuid(
        "uuid:11111111-2222-3333-4444-555555555556",
        UUID
    ));
}

#[test]
fn validity_window() {
    let mut p = params(&["x"]);
    p.not_before = rcgen::date_time_ymd(2200, 1, 1);
    p.not_after = rcgen::date_time_ymd(2201, 1, 1);
    let cert = Certificate::from_der(p.self_signed(&key()).unwrap().der()).unwrap();
    assert_eq!(cert.not_before, 7_258_118_400);
    // A device whose clock is behind sees "not valid yet", with the start to tell it by.
    assert_eq!(
        cert.validity_at(1_700_000_000),
        Validity::NotYetValid {
            not_before: 7_258_118_400
        }
    );
    assert_eq!(cert.validity_at(7_258_118_400), Validity::Valid);
    assert_eq!(cert.validity_at(cert.not_after), Validity::Valid);
    assert_eq!(
        cert.validity_at(cert.not_after + 1),
        Validity::Expired {
            not_after: cert.not_after
        }
    );
    let mut p = params(&["x"]);
    p.not_before = rcgen::date_time_ymd(2000, 1, 1);
    p.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let expired = Certificate::from_der(p.self_signed(&key()).unwrap().der()).unwrap();
    assert!(matches!(
        expired.validity_at(1_700_000_000),
        Validity::Expired { .. }
    ));
}

#[test]
fn chain_with_basic_constraints_and_ekus() {
    let ca_key = key();
    let ca = ca_params().self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params(), &ca_key);
    let mut leaf = params(&[&format!("uuid:{UUID}")]);
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 4, 1, 44924, 1, 6]),
    ];
    let leaf = leaf.signed_by(&key(), &issuer).unwrap();
    let chain = certificates_from_pem(&format!("{}{}", leaf.pem(), ca.pem())).unwrap();
    assert_eq!(chain[0].as_ref(), leaf.der().as_ref());
    assert_eq!(chain[1].as_ref(), ca.der().as_ref());
    let leaf = Certificate::from_der(&chain[0]).unwrap();
    let ca = Certificate::from_der(&chain[1]).unwrap();
    assert!(!leaf.is_ca && ca.is_ca);
    for eku in [EKU_SERVER_AUTH, EKU_CLIENT_AUTH, EKU_OCF_IDENTITY] {
        assert!(leaf.has_ext_key_usage(eku), "{eku}");
    }
    assert!(!ca.has_ext_key_usage(EKU_SERVER_AUTH));
}

#[test]
fn csr_subject_and_key() {
    let k = key();
    let pem = params(&[&format!("uuid:{UUID}")])
        .serialize_request(&k)
        .unwrap()
        .pem()
        .unwrap();
    let csr = Csr::from_pem(&pem).unwrap();
    assert_eq!(csr.cn_uuid().as_deref(), Some(UUID));
    // The same key in a certificate has the same fingerprint.
    let cert = params(&["x"]).self_signed(&k).unwrap();
    assert_eq!(
        Certificate::from_der(cert.der()).unwrap().spki_sha256(),
        csr.spki_sha256()
    );
    assert!(Csr::from_pem("hello").is_err());
    assert!(
        Csr::from_pem(OWNER_CERT).is_err(),
        "a certificate is no CSR"
    );
    let bad = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
    assert!(Csr::from_pem(bad).is_err());
    for n in 0..csr.der.len() {
        assert!(Csr::from_der(&csr.der[..n]).is_err(), "{n}");
    }
}

#[test]
fn private_keys_are_read_without_echo() {
    let k = key();
    assert!(private_key_from_pem(k.serialize_pem().as_bytes()).is_ok());
    let broken = k.serialize_pem().replacen("M", "!", 1);
    let e = private_key_from_pem(broken.as_bytes()).unwrap_err();
    assert!(!e.0.contains("BEGIN") && !e.0.contains('!'), "{e}");
    assert!(private_key_from_pem(OWNER_CERT.as_bytes()).is_err());
}

proptest::proptest! {
    #[test]
    fn hostile_bytes_never_panic(mut bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
        let _ = Certificate::from_der(&bytes);
        let _ = Csr::from_der(&bytes);
        if let Some(b) = bytes.first_mut() {
            *b = 0x30;
        }
        let _ = Certificate::from_der(&bytes);
        let _ = certificates_from_pem(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn corrupted_certificates_never_panic() {
    let _ = Certificate::from_der(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]);
    // Every corruption of a real certificate.
    let der = certificates_from_pem(OWNER_CERT).unwrap().remove(0);
    for i in 0..der.len() {
        let mut bad = der.to_vec();
        bad[i] ^= 0xff;
        let _ = Certificate::from_der(&bad);
    }
}
