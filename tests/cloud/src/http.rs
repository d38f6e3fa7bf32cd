//! The HTTP/JSON API for clients, the Mediator and tests (axum).
//!
//! | route | answer |
//! |---|---|
//! | `GET /.well-known/ocf-cloud` | `{"sid","cis","cis_plain","apn","ca_pem"}` |
//! | `POST /api/v1/authcodes` `{"user"}` (optional) | `{"code","apn"}`, a single-use code |
//! | `POST /api/v1/csr` `{"csr_pem"}` | `{"certificate_pem","ca_pem"}` or 400 |
//! | `GET /api/v1/devices` | `[{"di","name","online","last_seen"}]` |
//! | `GET /api/v1/devices/{di}/links` | the published links |
//! | `GET /api/v1/devices/{di}/events` | server-sent `change` events `{"href","rep"}` |
//! | `GET/POST/DELETE /api/v1/devices/{di}/{*href}` | forwarded to the device |
//! | `GET /api/v1/log` | the device-facing request log |

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use coap_lite::{CoapOption, MessageClass, Packet, RequestType, ResponseType};
use ocf::model::{decode_payload, encode_payload, ContentFormat};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use crate::app::{code_string, now_ms, App, ForwardError};
use crate::device::rep_json;

/// Longest request body accepted.
const MAX_BODY: usize = 256 * 1024;

/// The router.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/.well-known/ocf-cloud", get(well_known))
        .route("/api/v1/authcodes", post(authcode))
        .route("/api/v1/csr", post(csr))
        .route("/api/v1/devices", get(devices))
        .route("/api/v1/devices/{di}/links", get(links))
        .route("/api/v1/devices/{di}/events", get(events))
        .route(
            "/api/v1/devices/{di}/{*href}",
            get(forward).post(forward).delete(forward),
        )
        .route("/api/v1/log", get(log))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

async fn well_known(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({
        "sid": app.pki.sid,
        "cis": app.cis,
        "cis_plain": app.cis_plain,
        "apn": app.core.cfg.apn,
        "ca_pem": app.pki.ca_pem,
    }))
}

#[derive(Deserialize)]
struct AuthcodeBody {
    #[serde(default)]
    user: Option<String>,
}

async fn authcode(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let user = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice::<AuthcodeBody>(&body) {
            Ok(b) => b.user,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
        }
    };
    let user = user.unwrap_or_else(|| "user".to_owned());
    if user.is_empty() || user.len() > 128 || user.chars().any(char::is_control) {
        return error(
            StatusCode::BAD_REQUEST,
            "`user` must be 1-128 printable characters",
        );
    }
    match app.core.issue_authcode(&user, now_ms()) {
        Ok(code) => {
            tracing::info!(%user, "issued an authorisation code");
            Json(json!({ "code": code, "apn": app.core.cfg.apn })).into_response()
        }
        Err(e) => {
            tracing::error!("{e}");
            error(StatusCode::INTERNAL_SERVER_ERROR, "storage error")
        }
    }
}

#[derive(Deserialize)]
struct CsrBody {
    csr_pem: String,
}

async fn csr(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let body: CsrBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
    };
    match app.pki.sign_csr(&body.csr_pem) {
        Ok(pem) => {
            tracing::info!("signed an identity certificate");
            Json(json!({ "certificate_pem": pem, "ca_pem": app.pki.ca_pem })).into_response()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

async fn devices(State(app): State<Arc<App>>) -> Response {
    let rows = match app.core.store.devices() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("{e}");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "storage error");
        }
    };
    let now = now_ms();
    let list: Vec<Value> = rows
        .into_iter()
        .map(|d| {
            let online = app.is_online(&d.di);
            let last_seen = if online { now } else { d.last_seen_ms } / 1000;
            json!({ "di": d.di, "name": d.name, "online": online, "last_seen": last_seen })
        })
        .collect();
    Json(Value::Array(list)).into_response()
}

async fn links(State(app): State<Arc<App>>, Path(di): Path<String>) -> Response {
    let di = di.to_ascii_lowercase();
    match app.core.store.device(&di) {
        Ok(Some(_)) => {}
        Ok(None) => return error(StatusCode::NOT_FOUND, "unknown device"),
        Err(e) => {
            tracing::error!("{e}");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "storage error");
        }
    }
    match app.core.store.links(&di) {
        Ok(rows) => Json(Value::Array(rows.into_iter().map(|r| r.link).collect())).into_response(),
        Err(e) => {
            tracing::error!("{e}");
            error(StatusCode::INTERNAL_SERVER_ERROR, "storage error")
        }
    }
}

async fn events(State(app): State<Arc<App>>, Path(di): Path<String>) -> Response {
    let di = di.to_ascii_lowercase();
    let rx = app.subscribe();
    let stream = futures_util::stream::unfold((rx, di), |(mut rx, di)| async move {
        loop {
            match rx.recv().await {
                Ok(ev) if ev.di == di => {
                    let data = serde_json::to_string(&ev).unwrap_or_default();
                    let event = Event::default().event("change").data(data);
                    return Some((Ok::<_, Infallible>(event), (rx, di)));
                }
                Ok(_) | Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn log(State(app): State<Arc<App>>) -> Response {
    Json(app.log_entries()).into_response()
}

async fn forward(
    State(app): State<Arc<App>>,
    Path((di, href)): Path<(String, String)>,
    method: Method,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let di = di.to_ascii_lowercase();
    let href = format!("/{}", href.trim_start_matches('/'));
    let code = match method {
        Method::GET => RequestType::Get,
        Method::POST => RequestType::Post,
        Method::DELETE => RequestType::Delete,
        _ => return error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    };
    let mut packet = Packet::new();
    packet.header.code = MessageClass::Request(code);
    for seg in href.split('/').filter(|s| !s.is_empty()) {
        packet.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    for item in query.as_deref().unwrap_or("").split('&') {
        if !item.is_empty() {
            packet.add_option(CoapOption::UriQuery, percent_decode(item));
        }
    }
    if code == RequestType::Post && !body.iter().all(u8::is_ascii_whitespace) {
        let cbor = decode_payload(ContentFormat::Json, &body)
            .and_then(|v| encode_payload(ContentFormat::OcfCbor, &v));
        match cbor {
            Ok(bytes) => {
                packet.add_option(
                    CoapOption::ContentFormat,
                    ocf::resource::encode_uint(u32::from(ContentFormat::OCF_CBOR_NUMBER)),
                );
                packet.payload = bytes;
            }
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        }
    }
    packet.add_option(
        CoapOption::Accept,
        ocf::resource::encode_uint(u32::from(ContentFormat::OCF_CBOR_NUMBER)),
    );
    match app.forward(&di, packet).await {
        Ok(resp) => coap_to_http(&app, &di, &href, code, query.is_none(), &resp),
        Err(ForwardError::Offline) => match app.core.store.device(&di) {
            Ok(None) => error(StatusCode::NOT_FOUND, "unknown device"),
            _ => error(StatusCode::SERVICE_UNAVAILABLE, "device offline"),
        },
        Err(ForwardError::Closed) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "device disconnected before answering",
        ),
        Err(ForwardError::Timeout) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "device did not answer within 10 s",
        ),
    }
}

/// Maps the device's CoAP response to HTTP.
fn coap_to_http(
    app: &App,
    di: &str,
    href: &str,
    method: RequestType,
    plain_get: bool,
    resp: &Packet,
) -> Response {
    let coap = code_string(resp.header.code);
    let code = match resp.header.code {
        MessageClass::Response(c) => c,
        _ => ResponseType::UnKnown,
    };
    let (status, body) = match code {
        ResponseType::Content
        | ResponseType::Changed
        | ResponseType::Deleted
        | ResponseType::Created => {
            let status = if code == ResponseType::Created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let body = rep_json(resp).unwrap_or_else(|| json!({}));
            if code == ResponseType::Content && method == RequestType::Get && plain_get {
                app.update_rep(di, href, body.clone());
            }
            (status, body)
        }
        ResponseType::Valid => (
            StatusCode::OK,
            app.rep(di, href).unwrap_or_else(|| json!({})),
        ),
        _ => {
            let status = http_status(resp.header.code);
            let diagnostic = String::from_utf8_lossy(&resp.payload).into_owned();
            let reason = status.canonical_reason().unwrap_or("error");
            (
                status,
                json!({ "error": reason, "coap": coap, "diagnostic": diagnostic }),
            )
        }
    };
    let mut response = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&coap) {
        response.headers_mut().insert("x-coap-code", v);
    }
    response
}

/// HTTP status for a CoAP error code.
pub fn http_status(code: MessageClass) -> StatusCode {
    let n = u8::from(code);
    let (class, detail) = (u16::from(n >> 5), u16::from(n & 0x1F));
    match (class, detail) {
        (4, 2) => StatusCode::BAD_REQUEST, // Bad Option
        (4, d) | (5, d) => StatusCode::from_u16(class * 100 + d).unwrap_or(if class == 4 {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        }),
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// `%XX` decoding of a query item (`+` is kept: OCF queries never use it for spaces).
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coap_codes_map_to_http() {
        let c = |t| http_status(MessageClass::Response(t));
        assert_eq!(c(ResponseType::BadRequest), StatusCode::BAD_REQUEST);
        assert_eq!(c(ResponseType::Unauthorized), StatusCode::UNAUTHORIZED);
        assert_eq!(c(ResponseType::Forbidden), StatusCode::FORBIDDEN);
        assert_eq!(c(ResponseType::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            c(ResponseType::MethodNotAllowed),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            c(ResponseType::ServiceUnavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(c(ResponseType::BadOption), StatusCode::BAD_REQUEST);
        assert_eq!(
            c(ResponseType::UnsupportedContentFormat),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(
            c(ResponseType::InternalServerError),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("if=oic.if.baseline"), b"if=oic.if.baseline");
        assert_eq!(percent_decode("a%3Db"), b"a=b");
        assert_eq!(percent_decode("x%2"), b"x%2");
        assert_eq!(percent_decode("%zz"), b"%zz");
        assert_eq!(percent_decode("%"), b"%");
    }
}
