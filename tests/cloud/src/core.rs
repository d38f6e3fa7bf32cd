//! The device-facing request logic of the cloud, over a [`Store`] and with no sockets: sign-up,
//! sign-in and sign-out, token refresh, RD publish and unpublish, deregistration and the
//! cloud-side `/oic/res` (OCF-PROTOCOL.md §5, §10; behaviour of plgd hub's coap-gateway).
//!
//! [`Core::handle`] takes one parsed request, the TLS identity of the connection and its session,
//! and returns the response, what changed for the connection ([`Effect`]) and whether the
//! connection must be closed. The connection task applies the effect; nothing here does I/O
//! other than the store.

use ciborium::Value;
use coap_lite::ResponseType;
use ocf::cloud::payload::{
    self, RdLink, Secret, SessionRequest, SignUpRequest, SignUpResponse, TokenRefreshRequest,
    TokenRefreshResponse, CF_CBOR, CF_JSON, CF_OCF_CBOR,
};
use ocf::resource::{Method, Request, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::store::{self, CodeUse, LinkRow, Store, StoreError, TokenRow};

/// `/oic/sec/account` (sign-up, deregistration).
pub const URI_ACCOUNT: &str = "/oic/sec/account";
/// `/oic/sec/session` (sign-in, sign-out).
pub const URI_SESSION: &str = "/oic/sec/session";
/// `/oic/sec/tokenrefresh`.
pub const URI_TOKEN_REFRESH: &str = "/oic/sec/tokenrefresh";
/// `/oic/rd` (publish, unpublish).
pub const URI_RD: &str = "/oic/rd";
/// `/oic/res` (the cloud-side discovery for OCF clients).
pub const URI_RES: &str = "/oic/res";

/// Policy of the cloud.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// The Authorisation Provider name devices must send as `authprovider` (if they send one).
    pub apn: String,
    /// Access-token lifetime in seconds; 0 = permanent (`expiresin` -1).
    pub token_lifetime_secs: u64,
    /// Tests only: the `expiresin` answered at sign-up, sign-in and refresh instead of the
    /// tokens' real lifetime.
    pub answer_expiresin: Option<i64>,
    /// How long an authorisation code stays usable.
    pub authcode_lifetime_ms: u64,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            apn: "plgd".into(),
            token_lifetime_secs: 3600,
            answer_expiresin: None,
            authcode_lifetime_ms: 24 * 3600 * 1000,
        }
    }
}

/// A signed-in session on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The device id.
    pub di: String,
    /// Its owner.
    pub uid: String,
}

/// What a handled request changes for the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Nothing.
    None,
    /// The connection is now signed in as this session.
    SignedIn(Session),
    /// The connection signed out.
    SignedOut,
    /// Links were published (all hrefs of the request).
    Published(Vec<String>),
    /// Links were unpublished.
    Unpublished(Vec<String>),
    /// The device was deregistered: its records are gone.
    Deregistered(String),
}

/// The result of handling one device request.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The response to send.
    pub response: Response,
    /// What changed for the connection.
    pub effect: Effect,
    /// Close the connection after sending the response.
    pub close: bool,
    /// The device the request was about, when known (for the request log).
    pub di: Option<String>,
}

/// A refusal: a CoAP error code with a diagnostic.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The CoAP code.
    pub code: ResponseType,
    /// The diagnostic text (never a secret).
    pub diagnostic: String,
}

impl Refusal {
    fn new(code: ResponseType, diagnostic: impl Into<String>) -> Refusal {
        Refusal {
            code,
            diagnostic: diagnostic.into(),
        }
    }

    fn bad_request(diagnostic: impl Into<String>) -> Refusal {
        Refusal::new(ResponseType::BadRequest, diagnostic)
    }

    fn unauthorized(diagnostic: impl Into<String>) -> Refusal {
        Refusal::new(ResponseType::Unauthorized, diagnostic)
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        tracing::error!("{e}");
        Refusal::new(ResponseType::InternalServerError, "storage error")
    }
}

/// Tokens handed to a device.
#[derive(Debug, Clone)]
pub struct IssuedTokens {
    /// Access token.
    pub access: Secret,
    /// Refresh token.
    pub refresh: Secret,
    /// `expiresin` as sent: seconds, or -1 for permanent.
    pub expiresin: i64,
}

/// The cloud's device-facing logic.
pub struct Core {
    /// The state.
    pub store: Store,
    /// The policy.
    pub cfg: CoreConfig,
}

type Handled = Result<(Response, Effect, bool), Refusal>;

impl Core {
    /// A core over `store` with policy `cfg`.
    pub fn new(store: Store, cfg: CoreConfig) -> Core {
        Core { store, cfg }
    }

    /// Issues a fresh single-use authorisation code for `user` (created if new).
    pub fn issue_authcode(&self, user: &str, now_ms: u64) -> Result<String, StoreError> {
        let code = random_hex(16).map_err(StoreError)?;
        self.store.ensure_user(user, now_ms)?;
        self.store.insert_authcode(
            &store::digest(&code),
            user,
            now_ms,
            self.cfg.authcode_lifetime_ms,
        )?;
        Ok(code)
    }

    /// Handles one request received from a device (or an OCF client) on a connection whose TLS
    /// identity is `peer_di` (`None` on the plain listener) and whose session is `session`.
    pub fn handle(
        &self,
        peer_di: Option<&str>,
        session: Option<&Session>,
        req: &Request,
        now_ms: u64,
    ) -> Outcome {
        let path = req.path.as_str();
        let before_sign_in = matches!(path, URI_ACCOUNT | URI_SESSION | URI_TOKEN_REFRESH);
        let mut di = session
            .map(|s| s.di.clone())
            .or_else(|| peer_di.map(str::to_owned));
        if session.is_none() && !before_sign_in {
            // hub's coap-gateway: anything else before a sign-in is refused and the connection
            // closed (OCF-PROTOCOL.md §5).
            return Outcome {
                response: Response::error(ResponseType::Unauthorized, "sign in first"),
                effect: Effect::None,
                close: true,
                di,
            };
        }
        let result = match (req.method, path) {
            (Method::Post, URI_ACCOUNT) => self.sign_up(peer_di, req, now_ms, &mut di),
            (Method::Delete, URI_ACCOUNT) => self.deregister(peer_di, session, req, &mut di),
            (Method::Post, URI_SESSION) => self.session(peer_di, session, req, now_ms, &mut di),
            (Method::Post, URI_TOKEN_REFRESH) => self.refresh(peer_di, req, now_ms, &mut di),
            (Method::Post, URI_RD) => self.publish(session, req),
            (Method::Delete, URI_RD) => self.unpublish(session, req),
            (Method::Get, URI_RD) => rd_baseline(),
            (Method::Get, URI_RES) => self.discovery(session, req),
            (_, URI_ACCOUNT | URI_SESSION | URI_TOKEN_REFRESH | URI_RD | URI_RES) => Err(
                Refusal::new(ResponseType::MethodNotAllowed, "method not allowed"),
            ),
            _ => Err(Refusal::new(ResponseType::NotFound, "no such resource")),
        };
        match result {
            Ok((response, effect, close)) => Outcome {
                response,
                effect,
                close,
                di,
            },
            Err(r) => Outcome {
                response: Response::error(r.code, &r.diagnostic),
                effect: Effect::None,
                close: false,
                di,
            },
        }
    }

    fn check_apn(&self, apn: Option<&str>) -> Result<(), Refusal> {
        match apn {
            Some(a) if !a.is_empty() && a != self.cfg.apn => {
                Err(Refusal::unauthorized("unknown authorisation provider"))
            }
            _ => Ok(()),
        }
    }

    fn issue_tokens(&self, di: &str, uid: &str, now_ms: u64) -> Result<IssuedTokens, Refusal> {
        let access = random_hex(32)
            .map_err(|_| Refusal::new(ResponseType::InternalServerError, "no randomness"))?;
        let refresh = random_hex(32)
            .map_err(|_| Refusal::new(ResponseType::InternalServerError, "no randomness"))?;
        let lifetime = self.cfg.token_lifetime_secs;
        let (expires_ms, expiresin) = if lifetime == 0 {
            (None, -1)
        } else {
            (
                Some(now_ms.saturating_add(lifetime.saturating_mul(1000))),
                i64::try_from(lifetime).unwrap_or(i64::MAX),
            )
        };
        self.store.set_tokens(&TokenRow {
            di: di.to_owned(),
            uid: uid.to_owned(),
            access_hash: store::digest(&access),
            refresh_hash: store::digest(&refresh),
            access_expires_ms: expires_ms,
        })?;
        Ok(IssuedTokens {
            access: Secret::new(access),
            refresh: Secret::new(refresh),
            expiresin: self.cfg.answer_expiresin.unwrap_or(expiresin),
        })
    }

    /// POST /oic/sec/account (OCF-PROTOCOL.md §5.1).
    fn sign_up(
        &self,
        peer_di: Option<&str>,
        req: &Request,
        now_ms: u64,
        log_di: &mut Option<String>,
    ) -> Handled {
        let body: SignUpRequest = decode(req)?;
        *log_di = Some(body.di.clone());
        if body.di.is_empty() {
            return Err(Refusal::bad_request("`di` is required"));
        }
        if body.accesstoken.is_empty() {
            return Err(Refusal::bad_request("`accesstoken` is required"));
        }
        self.check_apn(body.authprovider.as_deref())?;
        check_identity(peer_di, &body.di)?;
        let di = canonical(&body.di, peer_di);
        let user =
            match self
                .store
                .use_authcode(&store::digest(body.accesstoken.expose()), &di, now_ms)?
            {
                CodeUse::Consumed(user) => {
                    // A new registration: whatever was published before is stale.
                    self.store.delete_links(&di, &[])?;
                    user
                }
                CodeUse::Repeated(user) => user,
                CodeUse::Invalid => {
                    return Err(Refusal::unauthorized(
                        "invalid, expired or already used authorisation code",
                    ))
                }
            };
        self.store.upsert_device(&di, &user, now_ms)?;
        let t = self.issue_tokens(&di, &user, now_ms)?;
        let resp = SignUpResponse {
            accesstoken: t.access,
            refreshtoken: t.refresh,
            uid: user,
            expiresin: t.expiresin,
            redirecturi: Some(String::new()),
        };
        Ok((
            cbor_response(ResponseType::Changed, &resp)?,
            Effect::None,
            false,
        ))
    }

    /// POST /oic/sec/session (OCF-PROTOCOL.md §5.2).
    fn session(
        &self,
        peer_di: Option<&str>,
        session: Option<&Session>,
        req: &Request,
        now_ms: u64,
        log_di: &mut Option<String>,
    ) -> Handled {
        let body: SessionBody = decode(req)?;
        if !body.login {
            // Sign-out: hub fills missing fields from the session and answers {}.
            let di = body
                .di
                .filter(|d| !d.is_empty())
                .or_else(|| session.map(|s| s.di.clone()))
                .or_else(|| peer_di.map(str::to_owned));
            if let Some(di) = &di {
                check_identity(peer_di, di)?;
                *log_di = Some(di.clone());
            }
            return Ok((
                cbor_response(ResponseType::Changed, &serde_json::json!({}))?,
                Effect::SignedOut,
                false,
            ));
        }
        let full: SessionRequest = decode(req)?;
        *log_di = Some(full.di.clone());
        if full.di.is_empty() || full.uid.is_empty() || full.accesstoken.is_empty() {
            return Err(Refusal::bad_request(
                "`uid`, `di` and `accesstoken` are required",
            ));
        }
        check_identity(peer_di, &full.di)?;
        let di = canonical(&full.di, peer_di);
        let Some(tokens) = self.store.tokens(&di)? else {
            return Err(Refusal::unauthorized("device not registered"));
        };
        if tokens.uid != full.uid {
            return Err(Refusal::unauthorized("`uid` does not own this device"));
        }
        if !constant_time_eq(
            &tokens.access_hash,
            &store::digest(full.accesstoken.expose()),
        ) {
            return Err(Refusal::unauthorized("invalid access token"));
        }
        let expiresin = match tokens.access_expires_ms {
            None => -1,
            Some(exp) if exp <= now_ms => {
                return Err(Refusal::unauthorized("access token expired"));
            }
            Some(exp) => i64::try_from((exp - now_ms).div_ceil(1000)).unwrap_or(i64::MAX),
        };
        let expiresin = self.cfg.answer_expiresin.unwrap_or(expiresin);
        let resp = payload::SignInResponse { expiresin };
        Ok((
            cbor_response(ResponseType::Changed, &resp)?,
            Effect::SignedIn(Session {
                di,
                uid: tokens.uid,
            }),
            false,
        ))
    }

    /// POST /oic/sec/tokenrefresh (OCF-PROTOCOL.md §5.3).
    fn refresh(
        &self,
        peer_di: Option<&str>,
        req: &Request,
        now_ms: u64,
        log_di: &mut Option<String>,
    ) -> Handled {
        let body: TokenRefreshRequest = decode(req)?;
        *log_di = Some(body.di.clone());
        if body.di.is_empty() || body.refreshtoken.is_empty() {
            return Err(Refusal::bad_request("`di` and `refreshtoken` are required"));
        }
        self.check_apn(body.authprovider.as_deref())?;
        check_identity(peer_di, &body.di)?;
        let di = canonical(&body.di, peer_di);
        let Some(tokens) = self.store.tokens(&di)? else {
            return Err(Refusal::unauthorized("device not registered"));
        };
        if !body.uid.is_empty() && body.uid != tokens.uid {
            return Err(Refusal::unauthorized("`uid` does not own this device"));
        }
        if !constant_time_eq(
            &tokens.refresh_hash,
            &store::digest(body.refreshtoken.expose()),
        ) {
            return Err(Refusal::unauthorized("invalid refresh token"));
        }
        let t = self.issue_tokens(&di, &tokens.uid, now_ms)?;
        let resp = TokenRefreshResponse {
            accesstoken: t.access,
            refreshtoken: t.refresh,
            expiresin: t.expiresin,
        };
        Ok((
            cbor_response(ResponseType::Changed, &resp)?,
            Effect::None,
            false,
        ))
    }

    /// DELETE /oic/sec/account?di=..&uid=..[&accesstoken=..] (OCF-PROTOCOL.md §5.4).
    fn deregister(
        &self,
        peer_di: Option<&str>,
        session: Option<&Session>,
        req: &Request,
        log_di: &mut Option<String>,
    ) -> Handled {
        let di = req
            .query_value("di")
            .filter(|d| !d.is_empty())
            .map(str::to_owned)
            .or_else(|| session.map(|s| s.di.clone()))
            .or_else(|| peer_di.map(str::to_owned))
            .ok_or_else(|| Refusal::bad_request("`di` is required"))?;
        *log_di = Some(di.clone());
        check_identity(peer_di, &di)?;
        let di = canonical(&di, peer_di);
        let signed_in = session.is_some_and(|s| s.di.eq_ignore_ascii_case(&di));
        let device = self.store.device(&di)?;
        if let (Some(uid), Some(device)) = (req.query_value("uid"), &device) {
            if !uid.is_empty() && uid != device.uid {
                return Err(Refusal::unauthorized("`uid` does not own this device"));
            }
        }
        if !signed_in {
            let token_ok = match (req.query_value("accesstoken"), self.store.tokens(&di)?) {
                (Some(at), Some(t)) => constant_time_eq(&t.access_hash, &store::digest(at)),
                _ => false,
            };
            if !token_ok {
                return Err(Refusal::unauthorized(
                    "sign in or give a valid `accesstoken` to deregister",
                ));
            }
        }
        self.store.delete_device(&di)?;
        Ok((
            Response::new(ResponseType::Deleted),
            Effect::Deregistered(di),
            true,
        ))
    }

    /// POST /oic/rd (OCF-PROTOCOL.md §5.5).
    fn publish(&self, session: Option<&Session>, req: &Request) -> Handled {
        let Some(session) = session else {
            return Err(Refusal::unauthorized("sign in first"));
        };
        let body: PublishBody = decode(req)?;
        let Some(di) = body.di.filter(|d| !d.is_empty()) else {
            return Err(Refusal::bad_request("`di` is required"));
        };
        if !di.eq_ignore_ascii_case(&session.di) {
            return Err(Refusal::unauthorized("`di` is not the signed-in device"));
        }
        let ttl = body.ttl.or(body.lt).unwrap_or(0);
        if ttl < 0 {
            return Err(Refusal::bad_request("`ttl` must not be negative"));
        }
        let links = body.links.unwrap_or_default();
        if links.is_empty() {
            return Err(Refusal::bad_request("`links` must not be empty"));
        }
        let mut rows = Vec::with_capacity(links.len());
        let mut out = Vec::with_capacity(links.len());
        for (i, raw) in links.into_iter().enumerate() {
            let mut link: RdLink = raw
                .deserialized()
                .map_err(|e| Refusal::bad_request(format!("link {i}: {e}")))?;
            if link.href.is_empty() {
                return Err(Refusal::bad_request(format!("link {i}: empty `href`")));
            }
            let ins = i64::from(crc32(link.href.as_bytes()));
            link.ins = Some(ins);
            link.di = Some(session.di.clone());
            let json = serde_json::to_value(&link)
                .map_err(|e| Refusal::bad_request(format!("link {i}: {e}")))?;
            rows.push(LinkRow {
                href: link.href.clone(),
                ins,
                link: json,
            });
            out.push(link);
        }
        self.store.upsert_links(&session.di, &rows)?;
        if let Some(n) = body.n.filter(|n| !n.is_empty()) {
            self.store.set_name(&session.di, &n)?;
        }
        let resp = PublishResponse {
            di: session.di.clone(),
            ttl,
            links: out,
        };
        let hrefs = rows.into_iter().map(|r| r.href).collect();
        Ok((
            cbor_response(ResponseType::Changed, &resp)?,
            Effect::Published(hrefs),
            false,
        ))
    }

    /// DELETE /oic/rd?di=..&ins=.. (OCF-PROTOCOL.md §5.6).
    fn unpublish(&self, session: Option<&Session>, req: &Request) -> Handled {
        let Some(session) = session else {
            return Err(Refusal::unauthorized("sign in first"));
        };
        if let Some(di) = req.query_value("di") {
            if !di.eq_ignore_ascii_case(&session.di) {
                return Err(Refusal::bad_request("`di` is not the signed-in device"));
            }
        }
        let mut ins = Vec::new();
        for (k, v) in &req.query {
            if k == "ins" {
                ins.push(
                    v.parse::<i64>()
                        .map_err(|_| Refusal::bad_request("`ins` must be an integer"))?,
                );
            }
        }
        let removed = self.store.delete_links(&session.di, &ins)?;
        if !ins.is_empty() && removed.is_empty() {
            return Err(Refusal::bad_request("no link matched `ins`"));
        }
        Ok((
            Response::new(ResponseType::Deleted),
            Effect::Unpublished(removed),
            false,
        ))
    }

    /// GET /oic/res on the cloud: the links of every device the signed-in user owns, each
    /// anchored `ocf://<di>` (hub style). Filters `di=` and `rt=` are honoured.
    fn discovery(&self, session: Option<&Session>, req: &Request) -> Handled {
        let Some(session) = session else {
            return Err(Refusal::unauthorized("sign in first"));
        };
        let di_filter: Vec<&str> = query_values(req, "di");
        let rt_filter: Vec<&str> = query_values(req, "rt");
        let mut links = Vec::new();
        for device in self.store.devices_of(&session.uid)? {
            if !di_filter.is_empty()
                && !di_filter.iter().any(|d| d.eq_ignore_ascii_case(&device.di))
            {
                continue;
            }
            for row in self.store.links(&device.di)? {
                let mut link = row.link;
                if !rt_filter.is_empty() {
                    let has = link["rt"].as_array().is_some_and(|rts| {
                        rts.iter()
                            .any(|r| rt_filter.contains(&r.as_str().unwrap_or("")))
                    });
                    if !has {
                        continue;
                    }
                }
                if let Some(obj) = link.as_object_mut() {
                    obj.insert(
                        "anchor".into(),
                        serde_json::Value::String(format!("ocf://{}", device.di)),
                    );
                    obj.insert("di".into(), serde_json::Value::String(device.di.clone()));
                }
                links.push(link);
            }
        }
        Ok((
            cbor_response(ResponseType::Content, &links)?,
            Effect::None,
            false,
        ))
    }
}

fn query_values<'a>(req: &'a Request, key: &str) -> Vec<&'a str> {
    req.query
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn rd_baseline() -> Handled {
    Ok((
        cbor_response(
            ResponseType::Content,
            &serde_json::json!({"rt": ["oic.wk.rd"], "if": ["oic.if.baseline"], "sel": 0}),
        )?,
        Effect::None,
        false,
    ))
}

/// The `di` of a body must be the one of the certificate (when there is one): 4.01 otherwise.
fn check_identity(peer_di: Option<&str>, di: &str) -> Result<(), Refusal> {
    match peer_di {
        Some(p) if !p.eq_ignore_ascii_case(di) => Err(Refusal::unauthorized(
            "device id does not match the certificate",
        )),
        _ => Ok(()),
    }
}

/// The spelling of a device id used for the records: the certificate's when there is one.
fn canonical(di: &str, peer_di: Option<&str>) -> String {
    peer_di.unwrap_or(di).to_ascii_lowercase()
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Sign-in/out body: only `login` is required for a sign-out.
#[derive(Deserialize)]
struct SessionBody {
    #[serde(default)]
    di: Option<String>,
    login: bool,
}

/// Publish body, decoded leniently so that each rule gives its own answer.
#[derive(Deserialize)]
struct PublishBody {
    #[serde(default)]
    di: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    ttl: Option<i64>,
    #[serde(default)]
    lt: Option<i64>,
    #[serde(default)]
    links: Option<Vec<Value>>,
}

#[derive(Serialize)]
struct PublishResponse {
    di: String,
    ttl: i64,
    links: Vec<RdLink>,
}

/// Decodes a request body by its Content-Format (10000, 60, none: CBOR; 50: JSON).
fn decode<T: DeserializeOwned>(req: &Request) -> Result<T, Refusal> {
    match req.content_format {
        None | Some(CF_OCF_CBOR) | Some(CF_CBOR) => {
            payload::from_cbor(&req.payload).map_err(|e| Refusal::bad_request(e.to_string()))
        }
        Some(CF_JSON) => {
            serde_json::from_slice(&req.payload).map_err(|e| Refusal::bad_request(e.to_string()))
        }
        Some(cf) => Err(Refusal::new(
            ResponseType::UnsupportedContentFormat,
            format!("unsupported content-format {cf}"),
        )),
    }
}

/// A response with a CBOR body (Content-Format 10000).
pub fn cbor_response<T: Serialize + ?Sized>(
    code: ResponseType,
    body: &T,
) -> Result<Response, Refusal> {
    let payload = payload::to_cbor(body)
        .map_err(|e| Refusal::new(ResponseType::InternalServerError, e.to_string()))?;
    Ok(Response {
        payload,
        content_format: Some(CF_OCF_CBOR),
        ..Response::new(code)
    })
}

/// `n` random bytes as hex.
pub fn random_hex(n: usize) -> Result<String, String> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| format!("no randomness: {e}"))?;
    Ok(store::hex(&buf))
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), as hub computes `ins` from the href.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
