//! `/oic/sec/cred` (rt `oic.r.cred`): the credential store.
//!
//! Two kinds of credentials exist on this device:
//!
//! - certificates (`credtype` 8, asymmetric signing key with certificate), public part only:
//!   the device's private key stays in the daemon's state directory and is never a credential;
//! - symmetric pair-wise keys (`credtype` 1, PSKs): the key a DTLS-PSK peer (the owner after a
//!   DTLS ownership transfer) authenticates with, see [`super::dtls_keys::psk_for_identity`].
//!
//! - **POST** `{"creds":[…], "rowneruuid"?}` adds credentials (OCF-PROTOCOL.md §8.5). Each
//!   entry has `credtype` (required) and optionally `credid` (an existing id replaces that
//!   credential).
//!   - `credtype` 8: `credusage` (required; `oic.sec.cred.trustca`, `oic.sec.cred.cert`,
//!     `oic.sec.cred.mfgtrustca`, `oic.sec.cred.mfgcert`), `subjectuuid` (required; a UUID or
//!     `*` for trust anchors, and the device's own `di` for `cert` / `mfgcert`), `publicdata`
//!     `{"encoding":"oic.sec.encoding.pem","data":"-----BEGIN CERTIFICATE-----…"}` (required;
//!     only `CERTIFICATE` blocks, see [`crate::x509`]). `privatedata` is refused: a
//!     certificate's private key never comes over the network.
//!   - `credtype` 1: `subjectuuid` (required; the peer's UUID) and `privatedata`
//!     `{"encoding":"oic.sec.encoding.raw","data":h'…'}` or `{"encoding":
//!     "oic.sec.encoding.base64","data":"…"}` (required; a 16- or 32-byte key, OCF Security
//!     Specification §13.3.3.1). No `credusage`, no `publicdata`. An empty key (iotivity-lite's
//!     "derive the owner PSK from this session") is refused for now.
//!
//!   Role certificates, `optionaldata` and other keys are refused. The whole body is checked
//!   before anything is stored; any fault → 4.00 naming it.
//! - **GET** shows `creds` (with `credid`, `subjectuuid`, `credtype`, and `credusage` and
//!   `publicdata` for certificates) and `rowneruuid`. `privatedata` is never shown: no GET ever
//!   returns a key. PSKs are kept only in the state file (mode 0600).
//! - **DELETE** `?credid=<n>` removes one credential; without a query, all of them (OCF
//!   semantics) — see [`CredStore::delete`].

use std::fmt;

use serde::{Deserialize, Serialize};

use super::util::{
    as_array, as_text, as_uint, bad, echo, map, only_keys, only_props, parse_uuid, text, text_map,
    uint, wipe, NIL_UUID,
};
use crate::resource::{Props, ResourceError, Value};
use crate::x509::{self, CertificateDer};

/// `credtype` 1: symmetric pair-wise key (PSK).
pub const CREDTYPE_SYMMETRIC_PAIR_WISE: u8 = 1;
/// `credtype` 8: asymmetric signing key with certificate.
pub const CREDTYPE_SIGNED_ASYMMETRIC: u8 = 8;
/// The only `publicdata.encoding` accepted.
pub const ENCODING_PEM: &str = "oic.sec.encoding.pem";
/// `privatedata.encoding` of a key given as a byte string.
pub const ENCODING_RAW: &str = "oic.sec.encoding.raw";
/// `privatedata.encoding` of a key given as base64 text (RFC 4648 §4, padded).
pub const ENCODING_BASE64: &str = "oic.sec.encoding.base64";
/// The PSK lengths accepted (OCF Security Specification §13.3.3.1: 128 or 256 bits).
pub const PSK_LENGTHS: [usize; 2] = [16, 32];
/// Most credentials the store holds.
pub const MAX_CREDS: usize = 16;
/// Largest `credid`.
pub const MAX_CREDID: u32 = 0xFFFF;

/// `credusage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CredUsage {
    /// `oic.sec.cred.trustca`: a trust anchor (the cloud CA, an owner CA).
    TrustCa,
    /// `oic.sec.cred.cert`: the device's identity certificate (chain).
    Cert,
    /// `oic.sec.cred.mfgtrustca`: a manufacturer trust anchor.
    MfgTrustCa,
    /// `oic.sec.cred.mfgcert`: the device's manufacturer certificate (chain).
    MfgCert,
}

impl CredUsage {
    pub const ALL: [CredUsage; 4] = [
        CredUsage::TrustCa,
        CredUsage::Cert,
        CredUsage::MfgTrustCa,
        CredUsage::MfgCert,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CredUsage::TrustCa => "oic.sec.cred.trustca",
            CredUsage::Cert => "oic.sec.cred.cert",
            CredUsage::MfgTrustCa => "oic.sec.cred.mfgtrustca",
            CredUsage::MfgCert => "oic.sec.cred.mfgcert",
        }
    }

    pub fn parse(s: &str) -> Option<CredUsage> {
        CredUsage::ALL.into_iter().find(|u| u.as_str() == s)
    }

    /// A trust anchor (for verifying peers) rather than one of the device's own certificates.
    pub fn is_trust_anchor(self) -> bool {
        matches!(self, CredUsage::TrustCa | CredUsage::MfgTrustCa)
    }
}

/// A pre-shared key. Its `Debug` shows only the length; dropping it wipes the bytes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Psk(Vec<u8>);

impl Psk {
    /// A key of one of the [`PSK_LENGTHS`].
    pub fn new(key: &[u8]) -> Result<Psk, ResourceError> {
        if PSK_LENGTHS.contains(&key.len()) {
            Ok(Psk(key.to_vec()))
        } else {
            Err(bad(format!(
                "a PSK must be 16 or 32 bytes long, this one has {}",
                key.len()
            )))
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Psk(<{} bytes>)", self.0.len())
    }
}

impl Drop for Psk {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// One credential: a certificate's public data, or a PSK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cred {
    pub credid: u32,
    /// A UUID (lower case) or `*`.
    pub subjectuuid: String,
    pub credtype: u8,
    /// `None` for a PSK.
    pub credusage: Option<CredUsage>,
    /// The certificate(s), PEM, as validated on the way in; empty for a PSK.
    #[serde(default)]
    pub publicdata_pem: String,
    /// The key of a PSK (`credtype` 1). Persisted, never shown by a GET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psk: Option<Psk>,
}

impl Cred {
    /// The DER certificates of `publicdata` (leaf first for `cert`, as provisioned).
    pub fn certificates_der(&self) -> Vec<CertificateDer<'static>> {
        x509::certificates_from_pem(&self.publicdata_pem).unwrap_or_default()
    }

    /// The GET form: never `privatedata`.
    fn to_value(&self) -> Value {
        let mut entries = vec![
            ("credid", uint(self.credid.into())),
            ("subjectuuid", text(&self.subjectuuid)),
            ("credtype", uint(self.credtype.into())),
        ];
        if let Some(usage) = self.credusage {
            entries.push(("credusage", text(usage.as_str())));
            entries.push((
                "publicdata",
                map(vec![
                    ("encoding", text(ENCODING_PEM)),
                    ("data", text(&self.publicdata_pem)),
                ]),
            ));
        }
        map(entries)
    }
}

/// A credential as sent by a client, validated, before it has an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCred {
    pub credid: Option<u32>,
    pub subjectuuid: String,
    /// `None` for a PSK.
    pub credusage: Option<CredUsage>,
    pub publicdata_pem: String,
    pub psk: Option<Psk>,
    /// A PSK sent with an empty key: the owner PSK, to be derived from the ownership transfer
    /// session ([`CredStore::apply_update_deriving`]).
    pub derive_owner_psk: bool,
}

impl NewCred {
    /// A PSK (`credtype` 1) for peer `subjectuuid`.
    pub fn psk(
        credid: Option<u32>,
        subjectuuid: &str,
        key: &[u8],
    ) -> Result<NewCred, ResourceError> {
        check_credid(credid)?;
        Ok(NewCred {
            credid,
            subjectuuid: parse_uuid(subjectuuid, "subjectuuid")?,
            credusage: None,
            publicdata_pem: String::new(),
            psk: Some(Psk::new(key)?),
            derive_owner_psk: false,
        })
    }

    /// A certificate credential; validates the fields (see the module docs). `di` is the
    /// device's own UUID.
    pub fn new(
        credid: Option<u32>,
        subjectuuid: &str,
        credusage: CredUsage,
        publicdata_pem: &str,
        di: &str,
    ) -> Result<NewCred, ResourceError> {
        check_credid(credid)?;
        let subjectuuid = if credusage.is_trust_anchor() && subjectuuid == "*" {
            "*".to_owned()
        } else {
            parse_uuid(subjectuuid, "subjectuuid")?
        };
        if !credusage.is_trust_anchor() && !subjectuuid.eq_ignore_ascii_case(di) {
            return Err(bad(format!(
                "a {} credential's `subjectuuid` must be this device's UUID {di}",
                credusage.as_str()
            )));
        }
        x509::certificates_from_pem(publicdata_pem)
            .map_err(|e| bad(format!("`publicdata.data`: {e}")))?;
        Ok(NewCred {
            credid,
            subjectuuid,
            credusage: Some(credusage),
            publicdata_pem: publicdata_pem.to_owned(),
            psk: None,
            derive_owner_psk: false,
        })
    }
}

fn check_credid(credid: Option<u32>) -> Result<(), ResourceError> {
    if credid.is_some_and(|id| id == 0 || id > MAX_CREDID) {
        return Err(bad(format!("`credid` must be between 1 and {MAX_CREDID}")));
    }
    Ok(())
}

/// Makes an owner PSK from its `subjectuuid` and the `rowneruuid` of the same body.
pub type DeriveOwnerPsk<'a> = dyn Fn(&str, Option<&str>) -> Result<Vec<u8>, ResourceError> + 'a;

/// The credential store.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CredStore {
    /// Oldest first; a replaced credential moves to the end.
    creds: Vec<Cred>,
    /// `rowneruuid`.
    pub rowneruuid: String,
}

impl CredStore {
    /// An empty store.
    pub fn new() -> CredStore {
        CredStore {
            creds: Vec::new(),
            rowneruuid: NIL_UUID.to_owned(),
        }
    }

    pub fn creds(&self) -> &[Cred] {
        &self.creds
    }

    pub fn get(&self, credid: u32) -> Option<&Cred> {
        self.creds.iter().find(|c| c.credid == credid)
    }

    /// Adds (or, with an existing `credid`, replaces) a credential; returns its id.
    pub fn add(&mut self, new: NewCred) -> Result<u32, ResourceError> {
        let replacing = new.credid.is_some_and(|id| self.get(id).is_some());
        if !replacing && self.creds.len() >= MAX_CREDS {
            return Err(bad(format!(
                "the credential store is full ({MAX_CREDS} entries)"
            )));
        }
        let credid = match new.credid {
            Some(id) => id,
            None => self.next_id()?,
        };
        self.creds.retain(|c| c.credid != credid);
        let credtype = if new.psk.is_some() {
            CREDTYPE_SYMMETRIC_PAIR_WISE
        } else {
            CREDTYPE_SIGNED_ASYMMETRIC
        };
        self.creds.push(Cred {
            credid,
            subjectuuid: new.subjectuuid,
            credtype,
            credusage: new.credusage,
            publicdata_pem: new.publicdata_pem,
            psk: new.psk,
        });
        Ok(credid)
    }

    fn next_id(&self) -> Result<u32, ResourceError> {
        let max = self.creds.iter().map(|c| c.credid).max().unwrap_or(0);
        if max < MAX_CREDID {
            return Ok(max + 1);
        }
        (1..=MAX_CREDID)
            .find(|id| self.get(*id).is_none())
            .ok_or_else(|| bad("no free credid"))
    }

    /// Removes one credential; whether it existed.
    pub fn remove(&mut self, credid: u32) -> bool {
        let before = self.creds.len();
        self.creds.retain(|c| c.credid != credid);
        self.creds.len() != before
    }

    /// Removes every credential.
    pub fn clear(&mut self) {
        self.creds.clear();
    }

    /// Trust anchors (`trustca`) for verifying peer `subject` (e.g. the cloud's `sid`): those
    /// provisioned for that subject or for `*`.
    pub fn trust_anchors_for<'a>(
        &'a self,
        subject: &'a str,
    ) -> impl Iterator<Item = &'a Cred> + 'a {
        self.creds.iter().filter(move |c| {
            c.credusage == Some(CredUsage::TrustCa)
                && (c.subjectuuid == "*" || c.subjectuuid.eq_ignore_ascii_case(subject))
        })
    }

    /// Every trust anchor (`trustca` and `mfgtrustca`), for a verifier that accepts any of them.
    pub fn trust_anchors(&self) -> impl Iterator<Item = &Cred> {
        self.creds
            .iter()
            .filter(|c| c.credusage.is_some_and(CredUsage::is_trust_anchor))
    }

    /// The key of the newest PSK credential for peer `subject` (a lower-case UUID).
    pub fn psk_for(&self, subject: &str) -> Option<&[u8]> {
        self.creds
            .iter()
            .rev()
            .filter(|c| c.subjectuuid == subject)
            .find_map(|c| c.psk.as_ref())
            .map(Psk::as_bytes)
    }

    /// The device's identity certificate chain for `di`: the newest `cert`, else the newest
    /// `mfgcert` (OCF-PROTOCOL.md §8.2: IL falls back to the manufacturer certificate).
    pub fn identity_chain(&self, di: &str) -> Option<&Cred> {
        let newest = |usage: CredUsage| {
            self.creds
                .iter()
                .rev()
                .find(|c| c.credusage == Some(usage) && c.subjectuuid.eq_ignore_ascii_case(di))
        };
        newest(CredUsage::Cert).or_else(|| newest(CredUsage::MfgCert))
    }

    /// Validates a POST body completely and returns the credentials and `rowneruuid` in it.
    pub fn parse_update(
        props: &Props,
        di: &str,
    ) -> Result<(Vec<NewCred>, Option<String>), ResourceError> {
        only_props(props, &["creds", "rowneruuid"], "/oic/sec/cred")?;
        let rowner = match props.get("rowneruuid") {
            Some(v) => Some(parse_uuid(as_text(v, "rowneruuid")?, "rowneruuid")?),
            None => None,
        };
        let items = match props.get("creds") {
            Some(v) => as_array(v, "creds")?,
            None if rowner.is_some() => &[],
            None => return Err(bad("`creds` is required")),
        };
        if items.len() > MAX_CREDS {
            return Err(bad(format!(
                "more than {MAX_CREDS} credentials in one update"
            )));
        }
        let creds = items
            .iter()
            .enumerate()
            .map(|(i, v)| parse_cred(v, di).map_err(|e| prefix(e, i)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((creds, rowner))
    }

    /// Applies a POST body: all of it or, on any fault, nothing. Returns the ids stored. A PSK
    /// with an empty key is refused: only an ownership transfer session can derive one
    /// ([`CredStore::apply_update_deriving`]).
    pub fn apply_update(&mut self, props: &Props, di: &str) -> Result<Vec<u32>, ResourceError> {
        self.apply_update_deriving(props, di, &|_, _| {
            Err(bad(
                "an empty `privatedata.data` (derive the owner PSK) is only accepted on the \
                 DTLS session of an ownership transfer; send the key",
            ))
        })
    }

    /// [`CredStore::apply_update`], with `derive(subjectuuid, rowneruuid of the body)` making
    /// the key of each PSK sent with an empty one.
    pub fn apply_update_deriving(
        &mut self,
        props: &Props,
        di: &str,
        derive: &DeriveOwnerPsk<'_>,
    ) -> Result<Vec<u32>, ResourceError> {
        let (creds, rowner) = CredStore::parse_update(props, di)?;
        let mut next = self.clone();
        let mut ids = Vec::with_capacity(creds.len());
        for (i, mut c) in creds.into_iter().enumerate() {
            if c.derive_owner_psk {
                let mut key =
                    derive(&c.subjectuuid, rowner.as_deref()).map_err(|e| prefix(e, i))?;
                let psk = Psk::new(&key);
                wipe(&mut key);
                c.psk = Some(psk?);
                c.derive_owner_psk = false;
            }
            ids.push(next.add(c)?);
        }
        if let Some(r) = rowner {
            next.rowneruuid = r;
        }
        *self = next;
        Ok(ids)
    }

    /// DELETE with the request's query: `credid=<n>` removes that credential (unknown id →
    /// `Ok(0)`, answered 4.04 by the caller), no query removes all. Other queries → 4.00.
    /// Returns how many were removed.
    pub fn delete(&mut self, query: &[(String, String)]) -> Result<usize, ResourceError> {
        match query {
            [] => {
                let n = self.creds.len();
                self.clear();
                Ok(n)
            }
            [(k, v)] if k == "credid" => {
                let id: u32 = v
                    .parse()
                    .map_err(|_| bad(format!("`credid` must be a number, got {:?}", echo(v))))?;
                Ok(usize::from(self.remove(id)))
            }
            _ => Err(bad("DELETE /oic/sec/cred takes `?credid=<n>` or no query")),
        }
    }

    /// The properties for GET (never `privatedata`).
    pub fn representation(&self) -> Props {
        let mut p = Props::new();
        p.insert(
            "creds".into(),
            Value::Array(self.creds.iter().map(Cred::to_value).collect()),
        );
        p.insert("rowneruuid".into(), text(&self.rowneruuid));
        p
    }
}

fn prefix(e: ResourceError, i: usize) -> ResourceError {
    match e {
        ResourceError::BadRequest(s) => ResourceError::BadRequest(format!("creds[{i}]: {s}")),
        other => other,
    }
}

fn parse_cred(v: &Value, di: &str) -> Result<NewCred, ResourceError> {
    let entries = text_map(v, "cred")?;
    only_keys(
        entries.iter().map(|(k, _)| *k),
        &[
            "credid",
            "subjectuuid",
            "credtype",
            "credusage",
            "publicdata",
            "privatedata",
        ],
        "a credential",
    )?;
    let get = |key: &str| entries.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let credid = get("credid")
        .map(|v| as_uint(v, "credid", MAX_CREDID.into()))
        .transpose()?
        .map(|n| n as u32);
    let credtype = as_uint(
        get("credtype").ok_or_else(|| bad("`credtype` is required"))?,
        "credtype",
        255,
    )?;
    if credtype == u64::from(CREDTYPE_SYMMETRIC_PAIR_WISE) {
        return parse_psk(&get, credid);
    }
    if credtype != u64::from(CREDTYPE_SIGNED_ASYMMETRIC) {
        return Err(bad(format!(
            "`credtype` {credtype} is not supported; only 1 (symmetric pair-wise key) and 8 \
             (certificate) are"
        )));
    }
    if get("privatedata").is_some() {
        return Err(bad(
            "`privatedata` is not accepted for a certificate: its private key never comes \
             over the network",
        ));
    }
    let usage = as_text(
        get("credusage").ok_or_else(|| bad("`credusage` is required"))?,
        "credusage",
    )?;
    let credusage = CredUsage::parse(usage)
        .ok_or_else(|| bad(format!("`credusage` {:?} is not supported", echo(usage))))?;
    let subject = as_text(
        get("subjectuuid").ok_or_else(|| bad("`subjectuuid` is required"))?,
        "subjectuuid",
    )?;
    let publicdata = get("publicdata").ok_or_else(|| bad("`publicdata` is required"))?;
    let pd = text_map(publicdata, "publicdata")?;
    only_keys(
        pd.iter().map(|(k, _)| *k),
        &["encoding", "data"],
        "publicdata",
    )?;
    let pd_get = |key: &str| pd.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let encoding = as_text(
        pd_get("encoding").ok_or_else(|| bad("`publicdata.encoding` is required"))?,
        "publicdata.encoding",
    )?;
    if encoding != ENCODING_PEM {
        return Err(bad(format!(
            "`publicdata.encoding` {:?} is not supported; use {ENCODING_PEM}",
            echo(encoding)
        )));
    }
    let data = match pd_get("data") {
        Some(Value::Text(s)) => s.as_str(),
        // Some clients put PEM text into a byte string.
        Some(Value::Bytes(b)) => {
            std::str::from_utf8(b).map_err(|_| bad("`publicdata.data` is not UTF-8 PEM text"))?
        }
        Some(_) => return Err(bad("`publicdata.data` must be PEM text")),
        None => return Err(bad("`publicdata.data` is required")),
    };
    NewCred::new(credid, subject, credusage, data, di)
}

/// The rest of a `credtype` 1 entry: `subjectuuid` and `privatedata` only.
fn parse_psk<'a>(
    get: &impl Fn(&str) -> Option<&'a Value>,
    credid: Option<u32>,
) -> Result<NewCred, ResourceError> {
    for key in ["credusage", "publicdata"] {
        if get(key).is_some() {
            return Err(bad(format!(
                "`{key}` does not belong to a symmetric key (credtype 1)"
            )));
        }
    }
    let subject = as_text(
        get("subjectuuid").ok_or_else(|| bad("`subjectuuid` is required"))?,
        "subjectuuid",
    )?;
    let pd = text_map(
        get("privatedata").ok_or_else(|| bad("`privatedata` is required for credtype 1"))?,
        "privatedata",
    )?;
    only_keys(
        pd.iter().map(|(k, _)| *k),
        &["encoding", "data"],
        "privatedata",
    )?;
    let pd_get = |key: &str| pd.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let encoding = as_text(
        pd_get("encoding").ok_or_else(|| bad("`privatedata.encoding` is required"))?,
        "privatedata.encoding",
    )?;
    let data = pd_get("data").ok_or_else(|| bad("`privatedata.data` is required"))?;
    let mut key = match (encoding, data) {
        (ENCODING_RAW, Value::Bytes(b)) => b.clone(),
        (ENCODING_RAW, _) => {
            return Err(bad(format!(
                "`privatedata.data` must be a byte string with {ENCODING_RAW}"
            )))
        }
        (ENCODING_BASE64, Value::Text(t)) => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .map_err(|_| bad("`privatedata.data` is not valid base64"))?
        }
        (ENCODING_BASE64, _) => {
            return Err(bad(format!(
                "`privatedata.data` must be text with {ENCODING_BASE64}"
            )))
        }
        (other, _) => {
            return Err(bad(format!(
                "`privatedata.encoding` {:?} is not supported; use {ENCODING_RAW} or \
                 {ENCODING_BASE64}",
                echo(other)
            )))
        }
    };
    let derive_owner_psk = key.is_empty();
    let psk = if derive_owner_psk {
        None
    } else {
        let psk = Psk::new(&key).map_err(|e| match e {
            ResourceError::BadRequest(m) => bad(format!("`privatedata.data`: {m}")),
            other => other,
        });
        wipe(&mut key);
        Some(psk?)
    };
    check_credid(credid)?;
    Ok(NewCred {
        credid,
        subjectuuid: parse_uuid(subject, "subjectuuid")?,
        credusage: None,
        publicdata_pem: String::new(),
        psk,
        derive_owner_psk,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x509::tests::{CA_CERT, OWNER_CERT};

    const DI: &str = "aaaaaaaa-0000-0000-0000-000000000001";
    const SID: &str = "cccccccc-0000-0000-0000-000000000003";

    fn cred(subject: &str, usage: &str, pem: &str) -> Value {
        map(vec![
            ("credtype", uint(8)),
            ("subjectuuid", text(subject)),
            ("credusage", text(usage)),
            (
                "publicdata",
                map(vec![("encoding", text(ENCODING_PEM)), ("data", text(pem))]),
            ),
        ])
    }

    fn body(creds: Vec<Value>) -> Props {
        let mut p = Props::new();
        p.insert("creds".into(), Value::Array(creds));
        p
    }

    fn add(store: &mut CredStore, c: Value) -> Result<Vec<u32>, ResourceError> {
        store.apply_update(&body(vec![c]), DI)
    }

    #[test]
    fn add_identity_and_trust_anchor_then_find_them() {
        let mut s = CredStore::new();
        let ids = add(&mut s, cred(DI, "oic.sec.cred.cert", OWNER_CERT)).unwrap();
        assert_eq!(ids, vec![1]);
        let ids = add(&mut s, cred(SID, "oic.sec.cred.trustca", CA_CERT)).unwrap();
        assert_eq!(ids, vec![2]);
        add(&mut s, cred("*", "oic.sec.cred.trustca", CA_CERT)).unwrap();
        let other = "dddddddd-0000-0000-0000-000000000004";
        add(&mut s, cred(other, "oic.sec.cred.trustca", CA_CERT)).unwrap();

        assert_eq!(s.identity_chain(DI).map(|c| c.credid), Some(1));
        assert_eq!(s.identity_chain(DI).unwrap().certificates_der().len(), 1);
        let for_sid: Vec<u32> = s.trust_anchors_for(SID).map(|c| c.credid).collect();
        assert_eq!(for_sid, vec![2, 3]);
        assert_eq!(s.trust_anchors().count(), 3);

        // A newer identity certificate wins; the manufacturer one is only the fallback.
        add(&mut s, cred(DI, "oic.sec.cred.mfgcert", OWNER_CERT)).unwrap();
        assert_eq!(s.identity_chain(DI).map(|c| c.credid), Some(1));
        assert!(s.remove(1));
        assert_eq!(
            s.identity_chain(DI).and_then(|c| c.credusage),
            Some(CredUsage::MfgCert)
        );
    }

    #[test]
    fn get_never_shows_private_data_and_privatedata_is_refused() {
        let mut s = CredStore::new();
        let mut c = cred(DI, "oic.sec.cred.cert", OWNER_CERT);
        if let Value::Map(m) = &mut c {
            m.push((
                text("privatedata"),
                map(vec![
                    ("encoding", text("oic.sec.encoding.raw")),
                    ("data", text("SECRETKEY")),
                ]),
            ));
        }
        let e = add(&mut s, c).unwrap_err();
        assert!(
            matches!(&e, ResourceError::BadRequest(m) if m.contains("privatedata")),
            "{e:?}"
        );
        assert!(s.creds().is_empty());

        add(&mut s, cred(DI, "oic.sec.cred.cert", OWNER_CERT)).unwrap();
        let rep = s.representation();
        let bytes = crate::model::encode_payload(
            crate::model::ContentFormat::OcfCbor,
            &Value::Map(rep.into_iter().map(|(k, v)| (Value::Text(k), v)).collect()),
        )
        .unwrap();
        let hay = String::from_utf8_lossy(&bytes);
        assert!(!hay.contains("privatedata"));
        assert!(!hay.contains("SECRETKEY"));
        assert!(hay.contains("BEGIN CERTIFICATE"));
    }

    #[test]
    fn bad_bodies_are_refused_whole() {
        let mut s = CredStore::new();
        let key_pem = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        let cases: Vec<(Value, &str)> = vec![
            (cred(DI, "oic.sec.cred.cert", key_pem), "only CERTIFICATE"),
            (cred(DI, "oic.sec.cred.cert", "garbage"), "publicdata.data"),
            (
                cred(SID, "oic.sec.cred.cert", OWNER_CERT),
                "this device's UUID",
            ),
            (cred("not-a-uuid", "oic.sec.cred.trustca", CA_CERT), "UUID"),
            (cred("*", "oic.sec.cred.cert", OWNER_CERT), "UUID"),
            (cred(SID, "oic.sec.cred.rolecert", CA_CERT), "not supported"),
            (map(vec![("credtype", uint(2))]), "credtype"),
            (text("x"), "must be a map"),
        ];
        for (c, want) in cases {
            let e = s.apply_update(
                &body(vec![cred(SID, "oic.sec.cred.trustca", CA_CERT), c]),
                DI,
            );
            match e {
                Err(ResourceError::BadRequest(m)) => {
                    assert!(m.contains(want), "{m:?} lacks {want:?}");
                    assert!(m.starts_with("creds[1]"), "{m}");
                }
                other => panic!("expected 4.00, got {other:?}"),
            }
            assert!(s.creds().is_empty(), "nothing stored on a refused body");
        }
        let mut p = Props::new();
        p.insert("other".into(), uint(1));
        assert!(s.apply_update(&p, DI).is_err());
        assert!(s.apply_update(&Props::new(), DI).is_err());
        let mut c = cred(SID, "oic.sec.cred.trustca", CA_CERT);
        if let Value::Map(m) = &mut c {
            m[3].1 = map(vec![
                ("encoding", text("oic.sec.encoding.der")),
                ("data", text(CA_CERT)),
            ]);
        }
        assert!(add(&mut s, c).is_err());
    }

    const OWNER: &str = "bbbbbbbb-0000-0000-0000-000000000002";
    const KEY: [u8; 16] = *b"0123456789abcdef";

    fn psk_cred(subject: &str, encoding: &str, data: Value) -> Value {
        map(vec![
            ("credtype", uint(1)),
            ("subjectuuid", text(subject)),
            (
                "privatedata",
                map(vec![("encoding", text(encoding)), ("data", data)]),
            ),
        ])
    }

    fn cbor_text(s: &CredStore) -> Vec<u8> {
        let rep = s.representation();
        crate::model::encode_payload(
            crate::model::ContentFormat::OcfCbor,
            &Value::Map(rep.into_iter().map(|(k, v)| (Value::Text(k), v)).collect()),
        )
        .unwrap()
    }

    #[test]
    fn psk_is_stored_and_never_shown() {
        let mut s = CredStore::new();
        let ids = add(
            &mut s,
            psk_cred(OWNER, ENCODING_RAW, Value::Bytes(KEY.to_vec())),
        )
        .unwrap();
        assert_eq!(ids, vec![1]);
        let c = s.get(1).unwrap();
        assert_eq!(c.credtype, CREDTYPE_SYMMETRIC_PAIR_WISE);
        assert_eq!(c.credusage, None);
        assert_eq!(s.psk_for(OWNER), Some(&KEY[..]));
        // Not a certificate: neither an identity nor a trust anchor.
        assert_eq!(s.trust_anchors().count(), 0);
        assert!(s.identity_chain(OWNER).is_none());

        // base64 (RFC 4648, padded), upper-case subject, 32-byte key; replaces credid 1.
        let long = [0xA5u8; 32];
        let mut c = psk_cred(
            &OWNER.to_ascii_uppercase(),
            ENCODING_BASE64,
            text("paWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaU="),
        );
        if let Value::Map(m) = &mut c {
            m.push((text("credid"), uint(1)));
        }
        assert_eq!(add(&mut s, c).unwrap(), vec![1]);
        assert_eq!(s.psk_for(OWNER), Some(&long[..]));

        let bytes = cbor_text(&s);
        let hay = String::from_utf8_lossy(&bytes);
        assert!(!hay.contains("privatedata"), "{hay}");
        assert!(!hay.contains("paWlp"));
        assert!(!bytes.windows(8).any(|w| w == [0xA5; 8]));
        assert!(hay.contains(OWNER));
        assert!(!format!("{s:?}").contains("165, 165"), "Debug shows no key");

        // Persisted (the state file), with the key.
        let mut file = Vec::new();
        ciborium::ser::into_writer(&s, &mut file).unwrap();
        let back: CredStore = ciborium::de::from_reader(&file[..]).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.psk_for(OWNER), Some(&long[..]));
    }

    #[test]
    fn state_files_from_before_psks_still_load() {
        #[derive(Serialize)]
        struct OldCred {
            credid: u32,
            subjectuuid: String,
            credtype: u8,
            credusage: CredUsage,
            publicdata_pem: String,
        }
        #[derive(Serialize)]
        struct OldStore {
            creds: Vec<OldCred>,
            rowneruuid: String,
        }
        let old = OldStore {
            creds: vec![OldCred {
                credid: 3,
                subjectuuid: SID.into(),
                credtype: 8,
                credusage: CredUsage::TrustCa,
                publicdata_pem: CA_CERT.into(),
            }],
            rowneruuid: NIL_UUID.into(),
        };
        let mut file = Vec::new();
        ciborium::ser::into_writer(&old, &mut file).unwrap();
        let s: CredStore = ciborium::de::from_reader(&file[..]).unwrap();
        let c = s.get(3).unwrap();
        assert_eq!(c.credusage, Some(CredUsage::TrustCa));
        assert_eq!(c.psk, None);
        assert_eq!(s.trust_anchors_for(SID).count(), 1);
    }

    #[test]
    fn malformed_psk_bodies_are_refused_with_a_diagnostic() {
        let raw = |d: Value| psk_cred(OWNER, ENCODING_RAW, d);
        let with = |mut c: Value, k: &str, v: Value| {
            if let Value::Map(m) = &mut c {
                m.push((text(k), v));
            }
            c
        };
        let ok = raw(Value::Bytes(KEY.to_vec()));
        let cases: Vec<(Value, &str)> = vec![
            (raw(Value::Bytes(vec![1; 15])), "16 or 32 bytes"),
            (raw(Value::Bytes(vec![1; 64])), "16 or 32 bytes"),
            (raw(Value::Bytes(Vec::new())), "empty"),
            (raw(text("0123456789abcdef")), "byte string"),
            (
                psk_cred(OWNER, ENCODING_BASE64, text("not base64!")),
                "base64",
            ),
            (
                psk_cred(OWNER, ENCODING_BASE64, Value::Bytes(KEY.to_vec())),
                "must be text",
            ),
            (
                psk_cred(OWNER, ENCODING_PEM, Value::Bytes(KEY.to_vec())),
                "not supported",
            ),
            (
                psk_cred("*", ENCODING_RAW, Value::Bytes(KEY.to_vec())),
                "UUID",
            ),
            (
                with(ok.clone(), "credusage", text("oic.sec.cred.cert")),
                "credusage",
            ),
            (with(ok.clone(), "publicdata", map(vec![])), "publicdata"),
            (with(ok.clone(), "period", text("x")), "unknown property"),
            (
                map(vec![("credtype", uint(1)), ("subjectuuid", text(OWNER))]),
                "`privatedata` is required",
            ),
            (
                map(vec![
                    ("credtype", uint(1)),
                    ("subjectuuid", text(OWNER)),
                    ("privatedata", text("k")),
                ]),
                "must be a map",
            ),
            (
                map(vec![
                    ("credtype", uint(1)),
                    ("subjectuuid", text(OWNER)),
                    (
                        "privatedata",
                        map(vec![
                            ("encoding", text(ENCODING_RAW)),
                            ("data", Value::Bytes(KEY.to_vec())),
                            ("handle", uint(1)),
                        ]),
                    ),
                ]),
                "unknown property `handle`",
            ),
            (with(ok.clone(), "credid", uint(0)), "credid"),
        ];
        for (c, want) in cases {
            let mut s = CredStore::new();
            match s.apply_update(&body(vec![ok.clone(), c]), DI) {
                Err(ResourceError::BadRequest(m)) => {
                    assert!(m.contains(want), "{m:?} lacks {want:?}");
                    assert!(m.starts_with("creds[1]"), "{m}");
                    assert!(!m.contains("0123456789abcdef"), "no key in {m}");
                }
                other => panic!("expected 4.00 for {want:?}, got {other:?}"),
            }
            assert!(s.creds().is_empty(), "nothing stored on a refused body");
        }
    }

    #[test]
    fn credid_replaces_and_delete_removes() {
        let mut s = CredStore::new();
        add(&mut s, cred(SID, "oic.sec.cred.trustca", CA_CERT)).unwrap();
        add(&mut s, cred(DI, "oic.sec.cred.cert", OWNER_CERT)).unwrap();
        let mut c = cred("*", "oic.sec.cred.trustca", OWNER_CERT);
        if let Value::Map(m) = &mut c {
            m.push((text("credid"), uint(1)));
        }
        assert_eq!(add(&mut s, c).unwrap(), vec![1]);
        assert_eq!(s.creds().len(), 2);
        assert_eq!(s.get(1).unwrap().subjectuuid, "*");

        let q = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert_eq!(s.delete(&q("credid", "2")).unwrap(), 1);
        assert_eq!(s.delete(&q("credid", "2")).unwrap(), 0);
        assert!(s.delete(&q("credid", "x")).is_err());
        assert!(s.delete(&q("subjectuuid", SID)).is_err());
        assert_eq!(s.creds().len(), 1);
        assert_eq!(s.delete(&[]).unwrap(), 1);
        assert!(s.creds().is_empty());
    }

    #[test]
    fn the_store_is_bounded() {
        let mut s = CredStore::new();
        for _ in 0..MAX_CREDS {
            add(&mut s, cred("*", "oic.sec.cred.trustca", CA_CERT)).unwrap();
        }
        assert!(add(&mut s, cred("*", "oic.sec.cred.trustca", CA_CERT)).is_err());
        assert_eq!(s.creds().len(), MAX_CREDS);
    }
}
