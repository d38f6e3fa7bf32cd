//! The client API, in the shape of plgd hub's HTTP gateway (its swagger and the gRPC gateway's
//! protos: paths, JSON field names in proto3 JSON form, status codes, the `google.rpc.Status`
//! error body), plus the parts of a plgd deployment a Mediator talks to: the certificate
//! authority's identity-CSR signing and an OAuth 2.0 authorisation server.
//!
//! | route | plgd counterpart |
//! |---|---|
//! | `GET /.well-known/hub-configuration` (public) | http-gateway, `HubConfigurationResponse` |
//! | `POST /oauth/token` (public, client credentials) | the OAuth server's token endpoint |
//! | `GET /authorize?response_type=code&client_id=…` | the OAuth server's authorize endpoint |
//! | `POST /api/v1/sign/identity-csr` | certificate-authority `SignIdentityCertificate` |
//! | `GET /api/v1/devices` | `GetDevices` (a stream of `{"result": Device}` lines) |
//! | `GET /api/v1/devices/{deviceId}` | `Device` |
//! | `GET /api/v1/devices/{deviceId}/resource-links` | `ResourceLinks` |
//! | `GET /api/v1/devices/{deviceId}/resources/{href}` | `{types, data: ResourceChanged}` from the shadow; `{data: ResourceRetrieved}` with `shadow=false`/`twin=false`/`resourceInterface` |
//! | `PUT /api/v1/devices/{deviceId}/resources/{href}` | `{data: ResourceUpdated}` |
//! | `GET /api/v1/ws/events` (WebSocket) | `SubscribeToEvents` ([`crate::ws`]) |
//! | `GET /dev-cloud/api/v1/log` | ours: the device-facing request log |
//! | `GET /`, `/console.js`, `/console.css` | ours: the web console ([`crate::console`]) |
//!
//! Every `/api/` route needs `Authorization: Bearer <token>`; tokens come from `/oauth/token`.

// A handler's early answer is a whole `Response`: boxing it would only move the allocation.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, LOCATION};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use coap_lite::option_value::OptionValueU32;
use coap_lite::{CoapOption, MessageClass, Packet, RequestType, ResponseType};
use ocf::model::{decode_payload, encode_payload, ContentFormat};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};

use crate::app::{code_string, now_ms, App, ForwardError};
use crate::device::rep_json;
use crate::store::{self, StoreError};

/// Longest request body accepted.
const MAX_BODY: usize = 256 * 1024;

/// How long a bearer token from `/oauth/token` is valid.
pub const API_TOKEN_LIFETIME_SECS: u64 = 24 * 3600;

/// The OAuth client id a Mediator asks for a device's authorisation code with (plgd's
/// `deviceOauthClient.clientId`).
pub const DEVICE_CLIENT_ID: &str = "ocf-device";

/// The OAuth client id of `/oauth/token` (client credentials; its secret is in
/// `DATA-DIR/client-secret`).
pub const API_CLIENT_ID: &str = "ocf-dev";

/// The user a token is for when `/oauth/token` names none.
pub const DEFAULT_USER: &str = "user";

/// gRPC status codes used in error bodies (google.rpc.Code).
pub mod grpc {
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

/// The router.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/.well-known/hub-configuration", get(hub_configuration))
        .route("/oauth/token", post(token))
        .route("/authorize", get(authorize))
        .route("/api/v1/sign/identity-csr", post(sign_identity_csr))
        .route("/api/v1/devices", get(devices))
        .route("/api/v1/devices/{device_id}", get(device))
        .route(
            "/api/v1/devices/{device_id}/resource-links",
            get(resource_links),
        )
        .route(
            "/api/v1/devices/{device_id}/resources/{*href}",
            get(get_resource).put(put_resource),
        )
        .route("/api/v1/ws/events", get(crate::ws::events))
        .route("/dev-cloud/api/v1/log", get(log))
        .route("/", get(crate::console::index))
        .route("/console.js", get(crate::console::script))
        .route("/console.css", get(crate::console::style))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

/// An error as plgd's gateways write it: `google.rpc.Status` in proto3 JSON.
pub fn status_error(status: StatusCode, code: i32, message: impl Into<String>) -> Response {
    let body = json!({ "code": code, "message": message.into(), "details": [] });
    (status, Json(body)).into_response()
}

fn storage_error(e: StoreError) -> Response {
    tracing::error!("{e}");
    status_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        grpc::INTERNAL,
        "storage error",
    )
}

async fn not_found() -> Response {
    status_error(StatusCode::NOT_FOUND, grpc::NOT_FOUND, "no such endpoint")
}

/// The bearer token of a request: `Authorization: Bearer …`, or for a WebSocket from a browser
/// (which cannot set headers) `Sec-WebSocket-Protocol: Bearer, …`, as plgd's WebSocket proxy
/// reads it.
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, token) = v.trim().split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned())
            .filter(|t| !t.is_empty());
    }
    let protocols = headers
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())?;
    let mut items = protocols.split(',').map(str::trim);
    (items.next()? == "Bearer")
        .then(|| items.next().map(str::to_owned))
        .flatten()
        .filter(|t| !t.is_empty())
}

/// The user a request's bearer token belongs to, or a 401 in plgd's shape.
pub fn authenticate(app: &App, headers: &HeaderMap) -> Result<String, Response> {
    let unauthenticated = |m: &str| {
        Err(status_error(
            StatusCode::UNAUTHORIZED,
            grpc::UNAUTHENTICATED,
            m,
        ))
    };
    let Some(token) = bearer(headers) else {
        return unauthenticated("missing bearer token (Authorization: Bearer <token>)");
    };
    match app
        .core
        .store
        .api_token_user(&store::digest(&token), now_ms())
    {
        Ok(Some(user)) => Ok(user),
        Ok(None) => unauthenticated("invalid or expired token"),
        Err(e) => Err(storage_error(e)),
    }
}

/// Which API listener a request came in on (an `Extension` the server adds to each): the
/// hub configuration names the services with its scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiListener {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The listener's own address.
    pub addr: std::net::SocketAddr,
}

/// `SCHEME://HOST` this request reached us at (the Host header, RFC 9110 §7.2), else the
/// listener's address; the scheme is the listener's (`http` when unknown).
fn base_url(app: &App, listener: Option<&ApiListener>, headers: &HeaderMap) -> String {
    let host = headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| listener.map_or(app.http_addr(), |l| l.addr).to_string());
    let scheme = listener.map_or("http", |l| l.scheme);
    format!("{scheme}://{host}")
}

async fn hub_configuration(
    State(app): State<Arc<App>>,
    listener: Option<axum::Extension<ApiListener>>,
    headers: HeaderMap,
) -> Response {
    let base = base_url(&app, listener.as_deref(), &headers);
    // proto3 JSON writes int64 as strings.
    Json(json!({
        "currentTime": (now_ms().saturating_mul(1_000_000)).to_string(),
        "jwtOwnerClaim": "sub",
        "jwtDeviceIdClaim": "",
        "id": app.pki.sid,
        "coapGateway": app.cis,
        "certificateAuthorities": app.pki.ca_pem,
        "authority": base,
        "defaultCommandTimeToLive": "0",
        "certificateAuthority": base,
        "httpGatewayAddress": base,
        "webOauthClient": {
            "clientId": API_CLIENT_ID,
            "audience": "",
            "scopes": [],
            "providerName": "",
        },
        "deviceOauthClient": {
            "clientId": DEVICE_CLIENT_ID,
            "audience": "",
            "scopes": ["offline_access"],
            "providerName": app.core.cfg.apn,
        },
        "buildInfo": {
            "version": env!("CARGO_PKG_VERSION"),
            "buildDate": "",
            "commitHash": "",
            "commitDate": "",
            "releaseUrl": "",
        },
    }))
    .into_response()
}

/// An OAuth 2.0 error (RFC 6749 §5.2).
fn oauth_error(status: StatusCode, error: &str, description: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error": error, "error_description": description.into() })),
    )
        .into_response()
}

/// RFC 3986 §2.3: everything but the unreserved characters is percent-encoded in a query value.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `application/x-www-form-urlencoded` pairs (RFC 6749 §4.4.2) as the WHATWG URL standard
/// parses them (§5.1): `+` is a space, then `%XX` is decoded; a `%` not followed by two hex
/// digits stays as it is. A name or value that is not UTF-8 is an error.
fn form_pairs(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the form is not UTF-8".to_owned())?;
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                percent_decode_str(&s.replace('+', " "))
                    .decode_utf8()
                    .map(|c| c.into_owned())
                    .map_err(|_| "the form is not UTF-8".to_owned())
            };
            Ok((dec(k)?, dec(v)?))
        })
        .collect()
}

/// A URL query's pairs (RFC 3986 §3.4): `%XX` decoded, `+` kept (OCF queries never use it for a
/// space), a malformed `%` kept as it is, bytes that are not UTF-8 replaced by U+FFFD.
fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
            (dec(k), dec(v))
        })
        .collect()
}

fn valid_user(user: &str) -> bool {
    !user.is_empty() && user.len() <= 128 && !user.chars().any(char::is_control)
}

/// Whether two secrets are equal; their digests are compared, so the time taken says nothing
/// about how much of the secret matched.
fn same_secret(a: &str, b: &str) -> bool {
    store::digest(a) == store::digest(b)
}

/// `POST /oauth/token`: client credentials grant (RFC 6749 §4.4) for the dev cloud's client;
/// `owner` (ours) names the user the token acts for, default [`DEFAULT_USER`].
async fn token(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let pairs: Vec<(String, String)> = if is_json {
        match serde_json::from_slice::<serde_json::Map<String, Value>>(&body) {
            Ok(m) => m
                .into_iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned())))
                .collect(),
            Err(e) => {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", e.to_string())
            }
        }
    } else {
        match form_pairs(&body) {
            Ok(p) => p,
            Err(e) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", e),
        }
    };
    let field = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    match field("grant_type") {
        Some("client_credentials") => {}
        Some(other) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("grant_type {other:?}: only client_credentials"),
            )
        }
        None => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "no grant_type"),
    }
    if field("client_id") != Some(API_CLIENT_ID)
        || !field("client_secret").is_some_and(|s| same_secret(s, &app.client_secret))
    {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            format!("client {API_CLIENT_ID:?} with the secret from DATA-DIR/client-secret"),
        );
    }
    let user = field("owner").unwrap_or(DEFAULT_USER).to_owned();
    if !valid_user(&user) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "`owner` must be 1-128 printable characters",
        );
    }
    let token = match crate::core::random_hex(24) {
        Ok(t) => format!("dev.{t}"),
        Err(e) => {
            tracing::error!("{e}");
            return oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "no randomness",
            );
        }
    };
    let now = now_ms();
    let stored = app.core.store.ensure_user(&user, now).and_then(|()| {
        app.core.store.insert_api_token(
            &store::digest(&token),
            &user,
            now,
            now + API_TOKEN_LIFETIME_SECS * 1000,
        )
    });
    if let Err(e) = stored {
        tracing::error!("{e}");
        return oauth_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "storage error",
        );
    }
    tracing::info!(%user, "issued an API token");
    let mut resp = Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": API_TOKEN_LIFETIME_SECS,
        "scope": "",
    }))
    .into_response();
    // RFC 6749 §5.1: token responses are not cached.
    resp.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    resp
}

/// `GET /authorize?response_type=code&client_id=ocf-device[&redirect_uri=…][&state=…]`: a
/// single-use authorisation code for a device's sign-up (`at`), for the user of the bearer
/// token (a real authorisation server would log the user in here instead). With a
/// `redirect_uri` the answer is a redirect carrying `code` and `state` (RFC 6749 §4.1.2);
/// without, `{"code"}` as plgd's mock OAuth server answers.
async fn authorize(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let user = match authenticate(&app, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let q = query_pairs(query.as_deref());
    let field = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if field("client_id") != Some(DEVICE_CLIENT_ID) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            format!("client_id must be {DEVICE_CLIENT_ID:?} (deviceOauthClient.clientId)"),
        );
    }
    if field("response_type").is_some_and(|t| t != "code") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_response_type",
            "only response_type=code",
        );
    }
    let code = match app.core.issue_authcode(&user, now_ms()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "storage error",
            );
        }
    };
    tracing::info!(%user, "issued a device authorisation code");
    match field("redirect_uri").filter(|u| !u.is_empty()) {
        Some(uri) => {
            let sep = if uri.contains('?') { '&' } else { '?' };
            let mut target = format!("{uri}{sep}code={code}");
            if let Some(state) = field("state") {
                target.push_str("&state=");
                target.extend(utf8_percent_encode(state, QUERY_VALUE));
            }
            match HeaderValue::from_str(&target) {
                Ok(v) => {
                    let mut r = StatusCode::TEMPORARY_REDIRECT.into_response();
                    r.headers_mut().insert(LOCATION, v);
                    r
                }
                Err(_) => oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "redirect_uri is not a valid header value",
                ),
            }
        }
        None => Json(json!({ "code": code })).into_response(),
    }
}

/// `POST /api/v1/sign/identity-csr` `{"certificateSigningRequest": base64(PEM)}` →
/// `{"certificate": base64(PEM chain)}` (proto3 JSON `bytes` are base64; plain PEM text is
/// accepted too).
async fn sign_identity_csr(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authenticate(&app, &headers) {
        return r;
    }
    let bad = |m: String| status_error(StatusCode::BAD_REQUEST, grpc::INVALID_ARGUMENT, m);
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad(format!("invalid JSON: {e}")),
    };
    let Some(csr) = body
        .get("certificateSigningRequest")
        .and_then(Value::as_str)
    else {
        return bad("no certificateSigningRequest".into());
    };
    let pem = if csr.contains("-----BEGIN") {
        csr.to_owned()
    } else {
        match LENIENT_BASE64
            .decode(csr)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
        {
            Some(p) => p,
            None => return bad("certificateSigningRequest is neither base64 nor PEM".into()),
        }
    };
    match app.pki.sign_csr(&pem) {
        Ok(cert) => {
            tracing::info!("signed an identity certificate");
            // The chain up to the CA, as plgd's signer returns it.
            let chain = format!("{}{}", cert, app.pki.ca_pem);
            Json(json!({ "certificate": BASE64.encode(chain.as_bytes()) })).into_response()
        }
        Err(e) => bad(e),
    }
}

/// The `/oic/d` fields of a Device (plgd fills them from the device's `/oic/d`).
fn device_json(app: &App, row: &store::DeviceRow) -> Value {
    let online = app.is_online(&row.di);
    let d = app.rep(&row.di, "/oic/d").unwrap_or_else(|| json!({}));
    let strings = |v: &Value| -> Vec<Value> {
        v.as_array()
            .map(|a| a.iter().filter(|s| s.is_string()).cloned().collect())
            .unwrap_or_default()
    };
    let name = d
        .get("n")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| row.name.clone());
    let manufacturer: Vec<Value> = match d.get("dmn") {
        Some(Value::Array(items)) => items.clone(),
        Some(Value::String(s)) => vec![json!({ "language": "en", "value": s })],
        _ => Vec::new(),
    };
    let status = if online { "ONLINE" } else { "OFFLINE" };
    let connected_ns = if online {
        row.last_seen_ms.saturating_mul(1_000_000).to_string()
    } else {
        "0".to_owned()
    };
    json!({
        "id": row.di,
        "types": strings(&d["rt"]),
        "name": name,
        "metadata": {
            // Both shapes plgd has used: `status` (hub 2.0) and `connection` (later hubs).
            "status": { "value": status, "validUntil": "0", "connectedAt": connected_ns },
            "connection": { "status": status, "onlineValidUntil": "0", "connectedAt": connected_ns },
            "twinEnabled": true,
            "shadowSynchronization": "UNSET",
        },
        "manufacturerName": manufacturer,
        "modelNumber": d.get("dmno").and_then(Value::as_str).unwrap_or(""),
        "interfaces": strings(&d["if"]),
        "protocolIndependentId": d.get("piid").and_then(Value::as_str).unwrap_or(""),
    })
}

/// The device `di` if the user owns it; 404 otherwise (a device of another user does not
/// exist for this one, as in plgd).
fn owned_device(app: &App, user: &str, di: &str) -> Result<store::DeviceRow, Response> {
    let di = di.to_ascii_lowercase();
    match app.core.store.device(&di) {
        Ok(Some(row)) if row.uid == user => Ok(row),
        Ok(_) => Err(status_error(
            StatusCode::NOT_FOUND,
            grpc::NOT_FOUND,
            format!("device {di} not found"),
        )),
        Err(e) => Err(storage_error(e)),
    }
}

async fn devices(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let user = match authenticate(&app, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let filter: Vec<String> = query_pairs(query.as_deref())
        .into_iter()
        .filter(|(k, _)| k == "deviceIdFilter" || k == "deviceId")
        .map(|(_, v)| v.to_ascii_lowercase())
        .collect();
    let rows = match app.core.store.devices_of(&user) {
        Ok(r) => r,
        Err(e) => return storage_error(e),
    };
    // A server stream through plgd's gateway: one `{"result": …}` object per line.
    let mut body = String::new();
    for row in rows
        .iter()
        .filter(|r| filter.is_empty() || filter.contains(&r.di))
    {
        body.push_str(&json!({ "result": device_json(&app, row) }).to_string());
        body.push('\n');
    }
    ([(CONTENT_TYPE, "application/json")], body).into_response()
}

async fn device(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(device_id): Path<String>,
) -> Response {
    let user = match authenticate(&app, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    match owned_device(&app, &user, &device_id) {
        Ok(row) => Json(device_json(&app, &row)).into_response(),
        Err(r) => r,
    }
}

/// A link as plgd's `ResourceLink` (from the OCF link the device published).
pub fn resource_link(di: &str, link: &Value) -> Value {
    let strings = |v: &Value| -> Vec<Value> {
        match v {
            Value::Array(a) => a.iter().filter(|s| s.is_string()).cloned().collect(),
            Value::String(s) => vec![Value::String(s.clone())],
            _ => Vec::new(),
        }
    };
    let eps: Vec<Value> = link["eps"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    Some(json!({
                        "endpoint": e.get("ep")?.as_str()?,
                        "priority": e.get("pri").and_then(Value::as_i64).unwrap_or(1).to_string(),
                    }))
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "href": link["href"].as_str().map(crate::device::local_href).unwrap_or_default(),
        "deviceId": di,
        "resourceTypes": strings(&link["rt"]),
        "interfaces": strings(&link["if"]),
        "anchor": link["anchor"].as_str().unwrap_or(""),
        "title": link["title"].as_str().unwrap_or(""),
        "supportedContentTypes": strings(&link["type"]),
        "validUntil": "0",
        "policy": { "bitFlags": link["p"]["bm"].as_i64().unwrap_or(0) },
        "endpointInformations": eps,
    })
}

/// plgd's `EventMetadata` and `AuditContext` for what the cloud reports.
pub fn event_metadata(timestamp_ns: u64, sequence: u64) -> Value {
    json!({
        "version": sequence.to_string(),
        "timestamp": timestamp_ns.to_string(),
        "connectionId": "",
        "sequence": sequence.to_string(),
    })
}

/// plgd's `AuditContext`.
pub fn audit_context(user: &str, correlation_id: &str) -> Value {
    json!({ "userId": user, "correlationId": correlation_id })
}

/// `ResourceLinks` of a device, from the store.
pub fn resource_links_json(app: &App, di: &str, owner: &str) -> Result<Value, StoreError> {
    let links: Vec<Value> = app
        .core
        .store
        .links(di)?
        .iter()
        .map(|l| resource_link(di, &l.link))
        .collect();
    Ok(json!({
        "deviceId": di,
        "resources": links,
        "auditContext": audit_context(owner, ""),
        "eventMetadata": event_metadata(now_ms().saturating_mul(1_000_000), 0),
    }))
}

async fn resource_links(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(device_id): Path<String>,
) -> Response {
    let user = match authenticate(&app, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let row = match owned_device(&app, &user, &device_id) {
        Ok(row) => row,
        Err(r) => return r,
    };
    match resource_links_json(&app, &row.di, &user) {
        Ok(v) => Json(v).into_response(),
        Err(e) => storage_error(e),
    }
}

/// The resource types of a published href (plgd puts them beside the content).
fn types_of(app: &App, di: &str, href: &str) -> Vec<Value> {
    app.core
        .store
        .links(di)
        .ok()
        .and_then(|links| links.into_iter().find(|l| l.href == href))
        .and_then(|l| l.link["rt"].as_array().cloned())
        .unwrap_or_default()
}

fn resource_id(di: &str, href: &str) -> Value {
    json!({ "deviceId": di, "href": href })
}

fn correlation_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn bool_query(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// The href of the route, `/a/b` (a query in the path segment is not part of it).
fn href_of(raw: &str) -> String {
    format!("/{}", raw.trim_start_matches('/'))
}

async fn get_resource(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((device_id, href)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let user = match authenticate(&app, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let row = match owned_device(&app, &user, &device_id) {
        Ok(row) => row,
        Err(r) => return r,
    };
    let href = href_of(&href);
    let q = query_pairs(query.as_deref());
    let mut from_shadow = true;
    let mut interface = None;
    for (k, v) in &q {
        match k.as_str() {
            // `shadow` in hub 2.0, `twin` later: false reads the device itself.
            "shadow" | "twin" => match bool_query(v) {
                Some(b) => from_shadow = b,
                None => {
                    return status_error(
                        StatusCode::BAD_REQUEST,
                        grpc::INVALID_ARGUMENT,
                        format!("{k}={v:?}: expected true or false"),
                    )
                }
            },
            "resourceInterface" | "interface" => interface = Some(v.clone()),
            _ => {}
        }
    }
    if interface.is_some() {
        from_shadow = false; // an interface is a request to the device, as in plgd
    }
    let types = types_of(&app, &row.di, &href);
    if from_shadow {
        return match app.rep(&row.di, &href) {
            Some(rep) => Json(json!({
                "types": types,
                "data": {
                    "resourceId": resource_id(&row.di, &href),
                    "content": rep,
                    "status": "OK",
                    "auditContext": audit_context(&user, ""),
                    "eventMetadata": event_metadata(now_ms().saturating_mul(1_000_000), 0),
                    "resourceTypes": types,
                },
            }))
            .into_response(),
            None => status_error(
                StatusCode::NOT_FOUND,
                grpc::NOT_FOUND,
                format!(
                    "resource {}{href} has no shadow (not published or not observed yet); \
                     ?shadow=false reads the device",
                    row.di
                ),
            ),
        };
    }
    let query: Vec<String> = interface.iter().map(|i| format!("if={i}")).collect();
    let packet = request_packet(RequestType::Get, &href, &query, None);
    match app.forward(&row.di, packet).await {
        Ok(resp) => device_answer(&app, &row.di, &href, &user, interface.is_none(), &resp),
        Err(e) => forward_error(e),
    }
}

async fn put_resource(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((device_id, href)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let user = match authenticate(&app, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let row = match owned_device(&app, &user, &device_id) {
        Ok(row) => row,
        Err(r) => return r,
    };
    let href = href_of(&href);
    let bad = |m: String| status_error(StatusCode::BAD_REQUEST, grpc::INVALID_ARGUMENT, m);
    let content: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return bad("the update must be a JSON object".into()),
        Err(e) => return bad(format!("invalid JSON: {e}")),
    };
    let query: Vec<String> = query_pairs(query.as_deref())
        .into_iter()
        .filter(|(k, _)| k == "resourceInterface" || k == "interface")
        .map(|(_, v)| format!("if={v}"))
        .collect();
    let cbor = decode_payload(ContentFormat::Json, content.to_string().as_bytes())
        .and_then(|v| encode_payload(ContentFormat::OcfCbor, &v));
    let payload = match cbor {
        Ok(b) => b,
        Err(e) => return bad(e.to_string()),
    };
    // OCF updates are POSTs (OCF-PROTOCOL.md §6.2).
    let packet = request_packet(RequestType::Post, &href, &query, Some(payload));
    match app.forward(&row.di, packet).await {
        Ok(resp) => device_answer(&app, &row.di, &href, &user, false, &resp),
        Err(e) => forward_error(e),
    }
}

fn request_packet(
    method: RequestType,
    href: &str,
    query: &[String],
    payload: Option<Vec<u8>>,
) -> Packet {
    let mut packet = Packet::new();
    packet.header.code = MessageClass::Request(method);
    for seg in href.split('/').filter(|s| !s.is_empty()) {
        packet.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    for q in query {
        packet.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
    }
    if let Some(p) = payload {
        packet.add_option_as(
            CoapOption::ContentFormat,
            OptionValueU32(u32::from(ContentFormat::OCF_CBOR_NUMBER)),
        );
        packet.payload = p;
    }
    packet.add_option_as(
        CoapOption::Accept,
        OptionValueU32(u32::from(ContentFormat::OCF_CBOR_NUMBER)),
    );
    packet
}

fn forward_error(e: ForwardError) -> Response {
    match e {
        ForwardError::Offline => status_error(
            StatusCode::SERVICE_UNAVAILABLE,
            grpc::UNAVAILABLE,
            "device is offline",
        ),
        ForwardError::Closed => status_error(
            StatusCode::SERVICE_UNAVAILABLE,
            grpc::UNAVAILABLE,
            "device disconnected before answering",
        ),
        ForwardError::Timeout => status_error(
            StatusCode::GATEWAY_TIMEOUT,
            grpc::DEADLINE_EXCEEDED,
            "device did not answer within 10 s",
        ),
    }
}

/// `{"data": ResourceRetrieved | ResourceUpdated}` for a device's success, or a
/// `google.rpc.Status` error carrying its CoAP code. A header `x-coap-code` (ours) names it.
fn device_answer(
    app: &App,
    di: &str,
    href: &str,
    user: &str,
    updates_shadow: bool,
    resp: &Packet,
) -> Response {
    let coap = code_string(resp.header.code);
    let code = match resp.header.code {
        MessageClass::Response(c) => c,
        _ => ResponseType::UnKnown,
    };
    let mut response = match code {
        ResponseType::Content
        | ResponseType::Changed
        | ResponseType::Deleted
        | ResponseType::Created
        | ResponseType::Valid => {
            let content = if code == ResponseType::Valid {
                app.rep(di, href).unwrap_or(Value::Null)
            } else {
                rep_json(resp).unwrap_or(Value::Null)
            };
            if code == ResponseType::Content && updates_shadow && content.is_object() {
                app.update_rep(di, href, content.clone());
            }
            let status = if code == ResponseType::Created {
                "CREATED"
            } else {
                "OK"
            };
            let types = types_of(app, di, href);
            Json(json!({
                "data": {
                    "resourceId": resource_id(di, href),
                    "status": status,
                    "content": content,
                    "auditContext": audit_context(user, &correlation_id()),
                    "eventMetadata": event_metadata(now_ms().saturating_mul(1_000_000), 0),
                    "resourceTypes": types,
                }
            }))
            .into_response()
        }
        _ => {
            let (status, grpc_code) = http_status(resp.header.code);
            let diagnostic = String::from_utf8_lossy(&resp.payload).into_owned();
            let message = if diagnostic.is_empty() {
                format!("the device answered {coap}")
            } else {
                format!("the device answered {coap}: {diagnostic}")
            };
            status_error(status, grpc_code, message)
        }
    };
    if let Ok(v) = HeaderValue::from_str(&coap) {
        response.headers_mut().insert("x-coap-code", v);
    }
    response
}

/// HTTP status and gRPC code for a CoAP error code of the device.
pub fn http_status(code: MessageClass) -> (StatusCode, i32) {
    let n = u8::from(code);
    let (class, detail) = (n >> 5, n & 0x1F);
    match (class, detail) {
        (4, 0) | (4, 2) | (4, 6) | (4, 15) => (StatusCode::BAD_REQUEST, grpc::INVALID_ARGUMENT),
        // The device refused the cloud (its ACL): not the client's credentials.
        (4, 1) | (4, 3) => (StatusCode::FORBIDDEN, grpc::PERMISSION_DENIED),
        (4, 4) => (StatusCode::NOT_FOUND, grpc::NOT_FOUND),
        (4, 5) => (StatusCode::METHOD_NOT_ALLOWED, grpc::UNIMPLEMENTED),
        (4, 12) => (StatusCode::PRECONDITION_FAILED, grpc::FAILED_PRECONDITION),
        (4, _) => (StatusCode::BAD_REQUEST, grpc::INVALID_ARGUMENT),
        (5, 1) => (StatusCode::NOT_IMPLEMENTED, grpc::UNIMPLEMENTED),
        (5, 3) => (StatusCode::SERVICE_UNAVAILABLE, grpc::UNAVAILABLE),
        (5, 4) => (StatusCode::GATEWAY_TIMEOUT, grpc::DEADLINE_EXCEEDED),
        (5, _) => (StatusCode::INTERNAL_SERVER_ERROR, grpc::INTERNAL),
        _ => (StatusCode::BAD_GATEWAY, grpc::INTERNAL),
    }
}

async fn log(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(r) = authenticate(&app, &headers) {
        return r;
    }
    Json(app.log_entries()).into_response()
}

/// Standard base64 (RFC 4648 §4), padding optional: proto3 JSON parsers accept `bytes`
/// either way, so a client may leave it out.
const LENIENT_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coap_codes_map_to_http_and_grpc() {
        let c = |t| http_status(MessageClass::Response(t));
        assert_eq!(c(ResponseType::BadRequest), (StatusCode::BAD_REQUEST, 3));
        assert_eq!(c(ResponseType::Unauthorized), (StatusCode::FORBIDDEN, 7));
        assert_eq!(c(ResponseType::NotFound), (StatusCode::NOT_FOUND, 5));
        assert_eq!(
            c(ResponseType::MethodNotAllowed).0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            c(ResponseType::ServiceUnavailable),
            (StatusCode::SERVICE_UNAVAILABLE, 14)
        );
        assert_eq!(c(ResponseType::BadOption).0, StatusCode::BAD_REQUEST);
        assert_eq!(
            c(ResponseType::UnsupportedContentFormat).0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            c(ResponseType::InternalServerError),
            (StatusCode::INTERNAL_SERVER_ERROR, 13)
        );
    }

    #[test]
    fn query_values_are_percent_decoded_leniently() {
        let q = |s: &str| query_pairs(Some(s));
        let pair = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        assert_eq!(q("if=oic.if.baseline"), pair("if", "oic.if.baseline"));
        assert_eq!(q("a%3Db=%2F%3F%26"), pair("a=b", "/?&"));
        // `+` is not a space in a URL query; `%2B` is a `+`.
        assert_eq!(q("x=a+b%2Bc"), pair("x", "a+b+c"));
        assert_eq!(q("t=%C3%A9t%C3%A9"), pair("t", "\u{e9}t\u{e9}"));
        // A malformed escape stays as it is; a byte that is not UTF-8 becomes U+FFFD.
        assert_eq!(q("x=x%2"), pair("x", "x%2"));
        assert_eq!(q("x=%zz%"), pair("x", "%zz%"));
        assert_eq!(q("x=%FF"), pair("x", "\u{fffd}"));
        assert_eq!(q("&&flag&"), pair("flag", ""));
        assert!(q("").is_empty());
    }

    #[test]
    fn base64_of_a_csr_with_or_without_padding() {
        for s in ["", "f", "fo", "foo", "foob", "fooba", "foobar"] {
            let padded = BASE64.encode(s.as_bytes());
            assert_eq!(LENIENT_BASE64.decode(&padded).unwrap(), s.as_bytes());
            let bare = padded.trim_end_matches('=');
            assert_eq!(LENIENT_BASE64.decode(bare).unwrap(), s.as_bytes());
        }
        assert!(LENIENT_BASE64.decode("a*b").is_err());
    }

    #[test]
    fn bearer_tokens_from_header_or_websocket_protocol() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(bearer(&h).as_deref(), Some("abc"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        let mut h = HeaderMap::new();
        h.insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("Bearer, dev.x1"),
        );
        assert_eq!(bearer(&h).as_deref(), Some("dev.x1"));
        h.insert("sec-websocket-protocol", HeaderValue::from_static("chat"));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn forms() {
        assert_eq!(
            form_pairs(b"grant_type=client_credentials&owner=a+b%21").unwrap(),
            vec![
                ("grant_type".to_owned(), "client_credentials".to_owned()),
                ("owner".to_owned(), "a b!".to_owned())
            ]
        );
        assert!(form_pairs(&[0xff]).is_err());
        // WHATWG URL §5.1: `+` is a space, `%2B` a `+`; malformed escapes stay; UTF-8 decodes.
        assert_eq!(
            form_pairs(b"a=1+%2B+2&b=%E2%82%AC&c=100%&d=%2").unwrap(),
            vec![
                ("a".to_owned(), "1 + 2".to_owned()),
                ("b".to_owned(), "\u{20ac}".to_owned()),
                ("c".to_owned(), "100%".to_owned()),
                ("d".to_owned(), "%2".to_owned())
            ]
        );
        assert!(form_pairs(b"owner=%FF").is_err());
    }

    #[test]
    fn query_values_round_trip_through_percent_encoding() {
        for s in [
            "a b/c",
            "x+y%2B",
            "?&=#[]@!$'()*,;",
            "\u{e9}\u{20ac}\u{1f600}",
            "-._~",
        ] {
            let enc: String = utf8_percent_encode(s, QUERY_VALUE).collect();
            assert!(
                enc.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)),
                "{enc}"
            );
            assert_eq!(query_pairs(Some(&format!("state={enc}")))[0].1, s);
        }
        assert_eq!(
            utf8_percent_encode("a b/c+", QUERY_VALUE).to_string(),
            "a%20b%2Fc%2B"
        );
        assert_eq!(utf8_percent_encode("-._~", QUERY_VALUE).to_string(), "-._~");
    }
}
