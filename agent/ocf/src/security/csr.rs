//! `/oic/sec/csr` (rt `oic.r.csr`): the device's certificate signing request.
//!
//! GET → `{"csr": "-----BEGIN CERTIFICATE REQUEST-----…", "encoding": "oic.sec.encoding.pem"}`
//! (OCF-PROTOCOL.md §8.5 step 1; DER is not offered, as in iotivity-lite). The request itself
//! (PKCS#10 for the device's P-256 key, CN `uuid:<di>`) is made by the daemon with rcgen through
//! [`CsrSource`]; nothing cryptographic happens here. POST → 4.05.

use crate::resource::{Backend, Props, ResourceError, Value};

/// The only encoding offered.
pub const ENCODING_PEM: &str = "oic.sec.encoding.pem";
const PEM_HEADER: &str = "-----BEGIN CERTIFICATE REQUEST-----";

/// Makes the CSR (implemented by the daemon, which holds the key).
pub trait CsrSource {
    /// A PEM `CERTIFICATE REQUEST` for the device's key with subject CN `uuid:<di>`.
    fn csr_pem(&mut self) -> Result<String, ResourceError>;
}

impl<F> CsrSource for F
where
    F: FnMut() -> Result<String, ResourceError>,
{
    fn csr_pem(&mut self) -> Result<String, ResourceError> {
        self()
    }
}

/// The `/oic/sec/csr` backend. Access (owner only) is the ACL's business.
pub struct CsrBackend {
    source: Box<dyn CsrSource>,
}

impl CsrBackend {
    pub fn new(source: Box<dyn CsrSource>) -> CsrBackend {
        CsrBackend { source }
    }
}

impl std::fmt::Debug for CsrBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CsrBackend")
    }
}

/// The representation of a CSR.
pub fn representation(csr_pem: &str) -> Props {
    let mut p = Props::new();
    p.insert("csr".into(), Value::Text(csr_pem.to_owned()));
    p.insert("encoding".into(), Value::Text(ENCODING_PEM.to_owned()));
    p
}

impl Backend for CsrBackend {
    fn retrieve(&mut self) -> Result<Props, ResourceError> {
        let pem = self.source.csr_pem()?;
        if !pem.trim_start().starts_with(PEM_HEADER) {
            return Err(ResourceError::Internal(
                "the CSR source did not produce a PEM certificate request".into(),
            ));
        }
        Ok(representation(&pem))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_is_served_in_pem_and_cannot_be_written() {
        let pem = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n";
        let mut b = CsrBackend::new(Box::new(move || Ok(pem.to_string())));
        let p = b.retrieve().unwrap();
        assert_eq!(p["csr"], Value::Text(pem.into()));
        assert_eq!(p["encoding"], Value::Text("oic.sec.encoding.pem".into()));
        assert_eq!(
            b.update(&Props::new()),
            Err(ResourceError::MethodNotAllowed)
        );

        let mut wrong = CsrBackend::new(Box::new(|| Ok("-----BEGIN PRIVATE KEY-----".to_string())));
        assert!(matches!(wrong.retrieve(), Err(ResourceError::Internal(_))));
        let mut failing = CsrBackend::new(Box::new(|| {
            Err(ResourceError::Unavailable("no key".into()))
        }));
        assert!(matches!(
            failing.retrieve(),
            Err(ResourceError::Unavailable(_))
        ));
    }
}
