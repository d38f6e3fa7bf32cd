//! Payloads of the Device-to-Cloud exchange and of the CoAPCloudConf resource, with their CBOR
//! (and JSON) encoding.
//!
//! Every type here is both `Serialize` and `Deserialize`, so the device (which sends requests and
//! decodes responses) and the development cloud (which does the opposite) share one definition.
//!
//! Decoding is lenient and strict at the same time: unknown keys are ignored (plgd hub and
//! iotivity-lite add `rt`, `devicetype`, `granttype`, `n`, per-link `di`, ...; OCF-PROTOCOL.md §5),
//! but a missing or mistyped required key is an error that names the key, never a panic.
//!
//! Secrets (`at`, access and refresh tokens) are held in [`Secret`], whose `Debug` is redacted, so
//! no `{:?}` of any type in this module can leak one into a log (DESIGN.md §4).

use std::fmt;

use coap_lite::option_value::OptionValueU16;
use coap_lite::{CoapOption, Packet};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// CoAP Content-Format `application/vnd.ocf+cbor` (OCF-PROTOCOL.md §2.5).
pub const CF_OCF_CBOR: u16 = 10000;
/// CoAP Content-Format `application/cbor`.
pub const CF_CBOR: u16 = 60;
/// CoAP Content-Format `application/json`.
pub const CF_JSON: u16 = 50;

// ---------------------------------------------------------------------------------------------
// Secret
// ---------------------------------------------------------------------------------------------

/// A secret text value: the CoAPCloudConf `at`, an access token or a refresh token.
///
/// Serialises as a plain text string (it has to go on the wire and into the state file), but its
/// `Debug` never shows the value, only whether it is empty.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for putting it on the wire. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `true` when no secret is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("Secret(\"\")")
        } else {
            f.write_str("Secret(<redacted>)")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors and codec helpers
// ---------------------------------------------------------------------------------------------

/// Why a payload could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadError {
    /// The body is not valid CBOR for the expected type (the message names the key or type).
    Cbor(String),
    /// The body is not valid JSON for the expected type.
    Json(String),
    /// The value could not be encoded.
    Encode(String),
    /// The body decoded but a required value is unusable.
    Invalid {
        /// The offending key.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The body's Content-Format is neither CBOR nor JSON.
    UnsupportedContentFormat(u16),
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cbor(msg) => write!(f, "invalid CBOR payload: {msg}"),
            Self::Json(msg) => write!(f, "invalid JSON payload: {msg}"),
            Self::Encode(msg) => write!(f, "cannot encode payload: {msg}"),
            Self::Invalid { field, reason } => write!(f, "invalid `{field}`: {reason}"),
            Self::UnsupportedContentFormat(cf) => write!(f, "unsupported content-format {cf}"),
        }
    }
}

impl std::error::Error for PayloadError {}

/// Encodes a value as CBOR (a map with text keys for every struct in this module; floats as
/// doubles, see [`crate::model::cbor`]).
pub fn to_cbor<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, PayloadError> {
    crate::model::cbor::to_vec(value).map_err(PayloadError::Encode)
}

/// Decodes a CBOR value. Unknown map keys are ignored; missing required keys are reported by
/// name. Never panics, whatever the input.
pub fn from_cbor<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PayloadError> {
    // The same rule as every local request body: no tags, no `undefined` (model::cbor).
    crate::model::cbor::check_ocf_item(bytes).map_err(PayloadError::Cbor)?;
    ciborium::from_reader(bytes).map_err(|e| {
        PayloadError::Cbor(match e {
            ciborium::de::Error::Io(e) => format!("truncated input ({e})"),
            ciborium::de::Error::Syntax(at) => format!("syntax error at byte {at}"),
            ciborium::de::Error::Semantic(_, msg) => msg,
            ciborium::de::Error::RecursionLimitExceeded => "nested too deeply".to_owned(),
        })
    })
}

/// The raw Content-Format number of a packet, if it carries one.
pub fn content_format(packet: &Packet) -> Option<u16> {
    packet
        .get_first_option_as::<OptionValueU16>(CoapOption::ContentFormat)
        .and_then(Result::ok)
        .map(|v| v.0)
}

/// Decodes a packet's body by its Content-Format: 10000, 60 or none → CBOR; 50 → JSON
/// (OCF-PROTOCOL.md §2.5, §6.4).
pub fn decode_body<T: DeserializeOwned>(packet: &Packet) -> Result<T, PayloadError> {
    match content_format(packet) {
        None | Some(CF_OCF_CBOR) | Some(CF_CBOR) => from_cbor(&packet.payload),
        Some(CF_JSON) => {
            serde_json::from_slice(&packet.payload).map_err(|e| PayloadError::Json(e.to_string()))
        }
        Some(other) => Err(PayloadError::UnsupportedContentFormat(other)),
    }
}

fn require_non_empty(value: &str, field: &'static str) -> Result<(), PayloadError> {
    if value.is_empty() {
        Err(PayloadError::Invalid {
            field,
            reason: "must be a non-empty text string",
        })
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// CoAPCloudConf (OCF-PROTOCOL.md §4)
// ---------------------------------------------------------------------------------------------

/// The provisioning status `cps` of CoAPCloudConf (OCF-PROTOCOL.md §4; `deregistering` is the
/// iotivity-lite / plgd extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cps {
    /// No usable configuration.
    #[default]
    Uninitialized,
    /// Configured, sign-up not yet attempted.
    ReadyToRegister,
    /// Sign-up in progress (including transport retries).
    Registering,
    /// Signed up (the device holds cloud tokens).
    Registered,
    /// A failure; `clec` says which.
    Failed,
    /// `DELETE /oic/sec/account` in progress.
    Deregistering,
}

impl Cps {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uninitialized => "uninitialized",
            Self::ReadyToRegister => "readytoregister",
            Self::Registering => "registering",
            Self::Registered => "registered",
            Self::Failed => "failed",
            Self::Deregistering => "deregistering",
        }
    }
}

impl fmt::Display for Cps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The last error code `clec` of CoAPCloudConf (OCF-PROTOCOL.md §4; 4 is iotivity-lite's
/// "unauthorized").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Clec {
    /// 0: no error (also while transport retries are still going on, §12 iotivity-lite#35/#47).
    #[default]
    Ok,
    /// 1: an error response from the cloud.
    CloudError,
    /// 2: failed to connect (or the connection died: keepalive lost).
    ConnectFailed,
    /// 3: failed to refresh the access token.
    RefreshFailed,
    /// 4: unauthorized (4.01 on sign-in or refresh).
    Unauthorized,
    /// Any other value (5-254 reserved, 255 unknown).
    Other(u8),
}

impl Clec {
    /// The wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::CloudError => 1,
            Self::ConnectFailed => 2,
            Self::RefreshFailed => 3,
            Self::Unauthorized => 4,
            Self::Other(n) => n,
        }
    }
}

impl From<u8> for Clec {
    fn from(n: u8) -> Self {
        match n {
            0 => Self::Ok,
            1 => Self::CloudError,
            2 => Self::ConnectFailed,
            3 => Self::RefreshFailed,
            4 => Self::Unauthorized,
            n => Self::Other(n),
        }
    }
}

impl Serialize for Clec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.as_u8())
    }
}

impl<'de> Deserialize<'de> for Clec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u8::deserialize(d).map(Self::from)
    }
}

/// One entry of the `x.org.iotivity.servers` vendor extension: an alternative cloud endpoint
/// (OCF-PROTOCOL.md §4, §7.1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudServer {
    /// The endpoint URI, like `cis`.
    pub uri: String,
    /// The cloud's UUID, like `sid`.
    pub id: String,
}

/// The writable part of CoAPCloudConf as stored by the device: `cis`, `sid`, `apn`, `at` and
/// `x.org.iotivity.servers` (OCF-PROTOCOL.md §4). Also decodes an update body (extra keys such as
/// `rt`, `if`, `n` are ignored; rejecting a body with `cps` is up to the resource).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudConf {
    /// Cloud URL (`coaps+tcp://host:port`); `""` is the deregistration trigger.
    pub cis: String,
    /// The OCF Cloud's UUID.
    #[serde(default)]
    pub sid: String,
    /// Authorisation Provider name; empty = none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub apn: String,
    /// Access token or authorisation code for the sign-up; write-only, single-use in plgd.
    #[serde(default, skip_serializing_if = "Secret::is_empty")]
    pub at: Secret,
    /// Alternative clouds.
    #[serde(
        rename = "x.org.iotivity.servers",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub servers: Vec<CloudServer>,
}

/// Why a CoAPCloudConf update is refused (answered 4.00 by the resource, OCF-PROTOCOL.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfError {
    /// A non-empty `cis` came without a non-empty `at`.
    MissingAt,
    /// A non-empty `cis` came without `sid`, or `sid` is not a UUID.
    InvalidSid,
    /// An `x.org.iotivity.servers` entry has an empty `uri` or an `id` that is not a UUID.
    InvalidServer,
    /// The device is `registering` or `registered`: only `{"cis":""}` is accepted then.
    Busy(Cps),
}

impl fmt::Display for ConfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingAt => f.write_str("`at` must be a non-empty string when `cis` is set"),
            Self::InvalidSid => f.write_str("`sid` must be a UUID when `cis` is set"),
            Self::InvalidServer => {
                f.write_str("each `x.org.iotivity.servers` entry needs a `uri` and a UUID `id`")
            }
            Self::Busy(cps) => write!(
                f,
                "cps is `{cps}`: only {{\"cis\":\"\"}} (deregistration) is accepted"
            ),
        }
    }
}

impl std::error::Error for ConfError {}

impl CloudConf {
    /// `true` for the `{"cis":""}` deregistration trigger (OCF-PROTOCOL.md §4).
    pub fn is_deregistration(&self) -> bool {
        self.cis.is_empty()
    }

    /// Update rule 3 of OCF-PROTOCOL.md §4: either `cis == ""`, or `at` non-empty and `sid` a
    /// UUID. The state-dependent rule 1 is checked by [`super::CloudSession::configure`].
    pub fn validate(&self) -> Result<(), ConfError> {
        if self.is_deregistration() {
            return Ok(());
        }
        if self.at.is_empty() {
            return Err(ConfError::MissingAt);
        }
        if !is_uuid(&self.sid) {
            return Err(ConfError::InvalidSid);
        }
        if self
            .servers
            .iter()
            .any(|s| s.uri.is_empty() || !is_uuid(&s.id))
        {
            return Err(ConfError::InvalidServer);
        }
        Ok(())
    }
}

pub use crate::model::is_uuid;

// ---------------------------------------------------------------------------------------------
// /oic/sec/account (OCF-PROTOCOL.md §5.1)
// ---------------------------------------------------------------------------------------------

/// The `devicetype` value iotivity-lite sends in the sign-up (OCF-PROTOCOL.md §5.1, §7.6).
pub const DEVICE_TYPE_DEVICE: &str = "device";

/// Sign-up request body: POST `/oic/sec/account`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignUpRequest {
    /// Device UUID.
    pub di: String,
    /// The `at` of CoAPCloudConf (in plgd an OAuth2 authorisation code; hub also accepts the
    /// legacy key `authcode`).
    #[serde(alias = "authcode")]
    pub accesstoken: Secret,
    /// The `apn`; omitted when empty, as iotivity-lite does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authprovider: Option<String>,
    /// iotivity-lite extra: `uid`, only when already known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// iotivity-lite extra: `"device"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devicetype: Option<String>,
}

/// Sign-up 2.04 response body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignUpResponse {
    /// Access token for sign-in.
    pub accesstoken: Secret,
    /// Refresh token.
    pub refreshtoken: Secret,
    /// User id. Any text: hub puts the JWT `sub` claim here, so it is not checked as a UUID.
    pub uid: String,
    /// Token lifetime in seconds; `<= 0` = never expires (hub sends -1).
    pub expiresin: i64,
    /// Alternative cloud URI to use from now on; hub always sends `""`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirecturi: Option<String>,
}

impl SignUpResponse {
    /// Decodes and checks the body the way iotivity-lite counts a sign-up as successful:
    /// `accesstoken`, `refreshtoken` and `uid` non-empty text, `expiresin` an integer.
    pub fn decode(packet: &Packet) -> Result<Self, PayloadError> {
        let r: Self = decode_body(packet)?;
        require_non_empty(r.accesstoken.expose(), "accesstoken")?;
        require_non_empty(r.refreshtoken.expose(), "refreshtoken")?;
        require_non_empty(&r.uid, "uid")?;
        Ok(r)
    }
}

// ---------------------------------------------------------------------------------------------
// /oic/sec/session (OCF-PROTOCOL.md §5.2)
// ---------------------------------------------------------------------------------------------

/// Sign-in (`login: true`) and sign-out (`login: false`) body: POST `/oic/sec/session`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRequest {
    /// User id from the sign-up.
    pub uid: String,
    /// Device UUID.
    pub di: String,
    /// Current access token.
    pub accesstoken: Secret,
    /// `true` to sign in, `false` to sign out.
    pub login: bool,
}

/// Sign-in 2.04 response body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignInResponse {
    /// Remaining token lifetime in seconds; `<= 0` = never expires.
    pub expiresin: i64,
}

impl SignInResponse {
    /// Decodes the body (`expiresin` required).
    pub fn decode(packet: &Packet) -> Result<Self, PayloadError> {
        decode_body(packet)
    }
}

// ---------------------------------------------------------------------------------------------
// /oic/sec/tokenrefresh (OCF-PROTOCOL.md §5.3)
// ---------------------------------------------------------------------------------------------

/// The `granttype` value iotivity-lite sends (OCF-PROTOCOL.md §5.3).
pub const GRANT_TYPE_REFRESH_TOKEN: &str = "refresh_token";

/// Token refresh body: POST `/oic/sec/tokenrefresh`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRefreshRequest {
    /// User id.
    pub uid: String,
    /// Device UUID.
    pub di: String,
    /// Current refresh token.
    pub refreshtoken: Secret,
    /// iotivity-lite extra: the `apn`, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authprovider: Option<String>,
    /// iotivity-lite extra: `"refresh_token"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granttype: Option<String>,
}

/// Token refresh 2.04 response body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRefreshResponse {
    /// New access token.
    pub accesstoken: Secret,
    /// New refresh token.
    pub refreshtoken: Secret,
    /// Lifetime in seconds; `<= 0` = never expires.
    pub expiresin: i64,
}

impl TokenRefreshResponse {
    /// Decodes and checks the body: iotivity-lite requires a non-empty new refresh token; an
    /// empty access token would be useless too.
    pub fn decode(packet: &Packet) -> Result<Self, PayloadError> {
        let r: Self = decode_body(packet)?;
        require_non_empty(r.accesstoken.expose(), "accesstoken")?;
        require_non_empty(r.refreshtoken.expose(), "refreshtoken")?;
        Ok(r)
    }
}

// ---------------------------------------------------------------------------------------------
// /oic/rd (OCF-PROTOCOL.md §5.5, §5.6)
// ---------------------------------------------------------------------------------------------

/// Link relation `hosts`, the default of a published link.
pub const REL_HOSTS: &str = "hosts";

/// `p` of a link: the policy bitmask (1 discoverable, 2 observable).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkPolicy {
    /// Bitmask: 1 discoverable, 2 observable.
    pub bm: u32,
}

/// One endpoint of a link's `eps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Endpoint locator, e.g. `coaps+tcp://[fe80::1]:5684`.
    pub ep: String,
    /// Priority (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pri: Option<u32>,
}

/// A link as published to the cloud Resource Directory (OCF-PROTOCOL.md §5.5).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RdLink {
    /// Device-local href, e.g. `/light/1`.
    pub href: String,
    /// Resource types (iotivity-lite sends all of them).
    pub rt: Vec<String>,
    /// Interfaces.
    #[serde(rename = "if")]
    pub ifs: Vec<String>,
    /// Link relation; `"hosts"` when empty on the wire. A text string on the wire when it has one
    /// value, an array otherwise (OCF allows both).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "one_or_many::serialize",
        deserialize_with = "one_or_many::deserialize"
    )]
    pub rel: Vec<String>,
    /// Policy (`bm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<LinkPolicy>,
    /// Anchor, e.g. `ocf://<di>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<String>,
    /// Endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps: Option<Vec<Endpoint>>,
    /// RD instance id; assigned by the RD (hub: CRC-32 of the href, so decode as i64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ins: Option<i64>,
    /// Device id; hub adds it to each link of its response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub di: Option<String>,
}

/// RD publish body: POST `/oic/rd?rt=oic.wk.rdpub`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RdPublishRequest {
    /// Device UUID.
    pub di: String,
    /// Device name (iotivity-lite extra).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// Seconds to keep the entry; 0 = unlimited (iotivity-lite#51/#53).
    pub ttl: i64,
    /// The links.
    pub links: Vec<RdLink>,
}

/// A link of the RD publish response: only `href` and the assigned `ins` matter to the device;
/// everything else the RD echoes is ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedLink {
    /// Href as published.
    pub href: String,
    /// RD-assigned instance id (`None` if the RD did not assign one: such a link cannot be
    /// unpublished individually).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ins: Option<i64>,
}

/// RD publish 2.04 response body (`links` required).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RdPublishResponse {
    /// The published links with their `ins`.
    pub links: Vec<PublishedLink>,
}

impl RdPublishResponse {
    /// Decodes the body.
    pub fn decode(packet: &Packet) -> Result<Self, PayloadError> {
        decode_body(packet)
    }
}

/// Serde helper: a `Vec<String>` that is a text string on the wire when it has one element.
mod one_or_many {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
        match v {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coap_lite::{MessageClass, ResponseType};

    fn cbor(v: serde_json::Value) -> Vec<u8> {
        to_cbor(&v).unwrap()
    }

    fn response(body: Vec<u8>) -> Packet {
        let mut p = Packet::new();
        p.header.code = MessageClass::Response(ResponseType::Changed);
        p.add_option_as(CoapOption::ContentFormat, OptionValueU16(CF_OCF_CBOR));
        p.payload = body;
        p
    }

    #[test]
    fn secret_debug_is_redacted() {
        let conf = CloudConf {
            cis: "coaps+tcp://c:5684".into(),
            sid: "00000000-0000-0000-0000-000000000001".into(),
            apn: "plgd".into(),
            at: "sup3rs3cret".into(),
            servers: vec![],
        };
        let dbg = format!("{conf:?} {:?}", Secret::default());
        assert!(!dbg.contains("sup3rs3cret"), "{dbg}");
        assert!(dbg.contains("<redacted>"));
        assert!(dbg.contains("Secret(\"\")"));
    }

    #[test]
    fn conf_round_trip_uses_wire_keys() {
        let conf = CloudConf {
            cis: "coaps+tcp://c:5684".into(),
            sid: "00000000-0000-0000-0000-000000000001".into(),
            apn: "plgd".into(),
            at: "code".into(),
            servers: vec![CloudServer {
                uri: "coaps+tcp://d:5684".into(),
                id: "00000000-0000-0000-0000-000000000002".into(),
            }],
        };
        let bytes = to_cbor(&conf).unwrap();
        let v: serde_json::Value = from_cbor(&bytes).unwrap();
        assert_eq!(v["x.org.iotivity.servers"][0]["uri"], "coaps+tcp://d:5684");
        assert_eq!(v["at"], "code");
        assert_eq!(from_cbor::<CloudConf>(&bytes).unwrap(), conf);
    }

    #[test]
    fn conf_decodes_offboarding_body_and_ignores_extras() {
        let c: CloudConf = from_cbor(&cbor(serde_json::json!({"cis": ""}))).unwrap();
        assert!(c.is_deregistration());
        assert_eq!(c.validate(), Ok(()));
        let c: CloudConf = from_cbor(&cbor(serde_json::json!({
            "cis": "coap+tcp://127.0.0.1:5683", "sid": "00000000-0000-0000-0000-000000000001",
            "at": "test", "apn": "plgd", "rt": ["oic.r.coapcloudconf"], "n": "x"
        })))
        .unwrap();
        assert_eq!(c.validate(), Ok(()));
        let err = from_cbor::<CloudConf>(&cbor(serde_json::json!({"sid": "x"}))).unwrap_err();
        assert!(err.to_string().contains("cis"), "{err}");
    }

    #[test]
    fn conf_validation_rules() {
        let good = CloudConf {
            cis: "coaps+tcp://c".into(),
            sid: "987e6543-e21b-12d3-a456-426614174000".into(),
            at: "x".into(),
            ..Default::default()
        };
        assert_eq!(good.validate(), Ok(()));
        let mut c = good.clone();
        c.at = Secret::default();
        assert_eq!(c.validate(), Err(ConfError::MissingAt));
        let mut c = good.clone();
        c.sid = "not-a-uuid".into();
        assert_eq!(c.validate(), Err(ConfError::InvalidSid));
        let mut c = good.clone();
        c.sid = String::new();
        assert_eq!(c.validate(), Err(ConfError::InvalidSid));
        let mut c = good;
        c.servers.push(CloudServer {
            uri: "coaps+tcp://d".into(),
            id: "zz".into(),
        });
        assert_eq!(c.validate(), Err(ConfError::InvalidServer));
        assert!(is_uuid("987E6543-E21B-12D3-A456-426614174000"));
        assert!(!is_uuid("987e6543e21b12d3a456426614174000"));
    }

    #[test]
    fn sign_up_request_matches_reference_device() {
        let r = SignUpRequest {
            di: "d".into(),
            accesstoken: "test".into(),
            authprovider: Some("plgd".into()),
            uid: None,
            devicetype: Some(DEVICE_TYPE_DEVICE.into()),
        };
        let v: serde_json::Value = from_cbor(&to_cbor(&r).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"di":"d","accesstoken":"test","authprovider":"plgd","devicetype":"device"})
        );
        // The cloud side accepts the legacy `authcode` and a body without extras.
        let r: SignUpRequest =
            from_cbor(&cbor(serde_json::json!({"di":"d","authcode":"c"}))).unwrap();
        assert_eq!(r.accesstoken.expose(), "c");
    }

    #[test]
    fn sign_up_response_lenient_and_strict() {
        let ok = response(cbor(serde_json::json!({
            "accesstoken": "a", "refreshtoken": "r", "uid": "auth0|1234", "expiresin": -1,
            "redirecturi": "", "rt": ["oic.r.account"], "extra": {"nested": [1, 2]}
        })));
        let r = SignUpResponse::decode(&ok).unwrap();
        assert_eq!(r.uid, "auth0|1234");
        assert_eq!(r.expiresin, -1);
        assert_eq!(r.redirecturi.as_deref(), Some(""));

        let missing = response(cbor(
            serde_json::json!({"accesstoken": "a", "uid": "u", "expiresin": 3600}),
        ));
        let err = SignUpResponse::decode(&missing).unwrap_err();
        assert!(err.to_string().contains("refreshtoken"), "{err}");

        let empty = response(cbor(
            serde_json::json!({"accesstoken": "a", "refreshtoken": "", "uid": "u", "expiresin": 1}),
        ));
        assert_eq!(
            SignUpResponse::decode(&empty).unwrap_err(),
            PayloadError::Invalid {
                field: "refreshtoken",
                reason: "must be a non-empty text string"
            }
        );

        let wrong_type = response(cbor(serde_json::json!({
            "accesstoken": "a", "refreshtoken": "r", "uid": "u", "expiresin": "soon"
        })));
        assert!(SignUpResponse::decode(&wrong_type).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        let inputs: [&[u8]; 8] = [
            b"",
            b"\xff",
            b"\xa1",
            b"\xbf\x61a",
            b"\x9f\x9f\x9f\x9f",
            b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff",
            b"\xa1\x69expiresin\xfb\x7f\xf0\0\0\0\0\0\0",
            &[0x81; 1000],
        ];
        for i in inputs {
            let mut p = response(i.to_vec());
            assert!(SignUpResponse::decode(&p).is_err());
            assert!(SignInResponse::decode(&p).is_err());
            assert!(TokenRefreshResponse::decode(&p).is_err());
            assert!(RdPublishResponse::decode(&p).is_err());
            p.clear_option(CoapOption::ContentFormat);
            p.add_option_as(CoapOption::ContentFormat, OptionValueU16(CF_JSON));
            assert!(SignInResponse::decode(&p).is_err());
        }
    }

    #[test]
    fn long_tokens_decode() {
        let long = "x".repeat(10_000);
        let p = response(cbor(serde_json::json!({
            "accesstoken": long, "refreshtoken": "r", "expiresin": 5
        })));
        let r = TokenRefreshResponse::decode(&p).unwrap();
        assert_eq!(r.accesstoken.expose().len(), 10_000);
    }

    #[test]
    fn json_and_unknown_content_formats() {
        let mut p = Packet::new();
        p.add_option_as(CoapOption::ContentFormat, OptionValueU16(CF_JSON));
        p.payload = br#"{"expiresin": 3600, "rt": ["oic.r.session"]}"#.to_vec();
        assert_eq!(SignInResponse::decode(&p).unwrap().expiresin, 3600);
        let mut p = Packet::new();
        p.add_option_as(CoapOption::ContentFormat, OptionValueU16(0));
        p.payload = b"expiresin=1".to_vec();
        assert_eq!(
            SignInResponse::decode(&p).unwrap_err(),
            PayloadError::UnsupportedContentFormat(0)
        );
    }

    #[test]
    fn refresh_round_trip() {
        let req = TokenRefreshRequest {
            uid: "u".into(),
            di: "d".into(),
            refreshtoken: "r".into(),
            authprovider: Some("plgd".into()),
            granttype: Some(GRANT_TYPE_REFRESH_TOKEN.into()),
        };
        let v: serde_json::Value = from_cbor(&to_cbor(&req).unwrap()).unwrap();
        assert_eq!(v["granttype"], "refresh_token");
        assert_eq!(v["refreshtoken"], "r");
        let p = response(cbor(
            serde_json::json!({"accesstoken": "a", "refreshtoken": "", "expiresin": 5}),
        ));
        assert!(TokenRefreshResponse::decode(&p).is_err());
    }

    #[test]
    fn rd_publish_shapes() {
        let req = RdPublishRequest {
            di: "d".into(),
            n: Some("Pi".into()),
            ttl: 0,
            links: vec![RdLink {
                href: "/light/1".into(),
                rt: vec!["core.light".into()],
                ifs: vec!["oic.if.rw".into(), "oic.if.baseline".into()],
                rel: vec![REL_HOSTS.into()],
                p: Some(LinkPolicy { bm: 3 }),
                ..Default::default()
            }],
        };
        let v: serde_json::Value = from_cbor(&to_cbor(&req).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"di":"d","n":"Pi","ttl":0,"links":[{"href":"/light/1","rt":["core.light"],
                "if":["oic.if.rw","oic.if.baseline"],"rel":"hosts","p":{"bm":3}}]})
        );
        // rel as an array, extra keys, hub's CRC-32 ins up to u32::MAX.
        let link: RdLink = from_cbor(&cbor(serde_json::json!({
            "href": "/oic/res", "rt": ["oic.wk.res"], "if": ["oic.if.ll"], "rel": ["self"], "x": 1
        })))
        .unwrap();
        assert_eq!(link.rel, vec!["self".to_owned()]);
        let resp = response(cbor(serde_json::json!({"di": "d", "ttl": 0, "links": [
            {"href": "/light/1", "rt": ["core.light"], "if": ["oic.if.rw"], "ins": 4294967295u32, "di": "d"},
            {"href": "/p", "ins": 7}
        ]})));
        let r = RdPublishResponse::decode(&resp).unwrap();
        assert_eq!(r.links[0].ins, Some(4_294_967_295));
        assert_eq!(r.links[1].ins, Some(7));
        let bad = response(cbor(serde_json::json!({"di": "d"})));
        assert!(RdPublishResponse::decode(&bad)
            .unwrap_err()
            .to_string()
            .contains("links"));
    }

    #[test]
    fn cps_and_clec_wire_values() {
        assert_eq!(
            from_cbor::<serde_json::Value>(&to_cbor(&Cps::ReadyToRegister).unwrap()).unwrap(),
            "readytoregister"
        );
        assert_eq!(
            from_cbor::<Cps>(&cbor("deregistering".into())).unwrap(),
            Cps::Deregistering
        );
        for n in [0u8, 1, 2, 3, 4, 255] {
            assert_eq!(Clec::from(n).as_u8(), n);
            assert_eq!(
                from_cbor::<Clec>(&to_cbor(&Clec::from(n)).unwrap()).unwrap(),
                Clec::from(n)
            );
        }
    }

    #[test]
    fn tagged_cbor_from_the_cloud_is_refused() {
        // {"expiresin": 2(h'01')}: a bignum tag a plain decoder would take as the integer 1.
        let bytes = [
            0xa1, 0x69, b'e', b'x', b'p', b'i', b'r', b'e', b's', b'i', b'n', 0xc2, 0x41, 0x01,
        ];
        let e = from_cbor::<serde_json::Value>(&bytes).unwrap_err();
        assert!(e.to_string().contains("tag 2"), "{e}");
    }
}
