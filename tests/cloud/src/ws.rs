//! Event subscriptions over WebSocket at `/api/v1/ws/events`, in the shape of plgd hub's
//! `SubscribeToEvents` through its HTTP gateway's WebSocket proxy:
//!
//! - the bearer token comes in `Authorization`, or, from a browser, as the subprotocol list
//!   `Bearer, <token>` (the server then selects `Bearer`);
//! - each client message is a `SubscribeToEvents` in proto3 JSON:
//!   `{"createSubscription": {"eventFilter": ["RESOURCE_CHANGED", …], "deviceIdFilter": […],
//!   "httpResourceIdFilter": ["<di>/<href>", …]}, "correlationId": "…"}` or
//!   `{"cancelSubscription": {"subscriptionId": "…"}, "correlationId": "…"}`;
//! - each server message is `{"result": Event}`: first `operationProcessed` for the request,
//!   then, per subscription, the current state (metadata, links, shadow) and every later
//!   `deviceRegistered`, `deviceUnregistered`, `deviceMetadataUpdated`, `resourcePublished`,
//!   `resourceUnpublished` and `resourceChanged` of the token's user's devices.
//!
//! An empty filter selects everything. Like plgd's, a subscription does not promise to deliver
//! every event (a client too slow to read loses the oldest ones).

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use crate::app::{now_ms, App, Event, HubEvent};
use crate::http::{
    audit_context, authenticate, event_metadata, resource_link, resource_links_json, status_error,
};

/// Event kinds of plgd's `SubscribeToEvents.CreateSubscription.Event`, with their proto
/// numbers; the ones this cloud emits are marked.
const EVENT_KINDS: &[(&str, i64, bool)] = &[
    ("REGISTERED", 0, true),
    ("UNREGISTERED", 1, true),
    ("DEVICE_METADATA_UPDATED", 4, true),
    ("DEVICE_METADATA_UPDATE_PENDING", 5, false),
    ("RESOURCE_PUBLISHED", 6, true),
    ("RESOURCE_UNPUBLISHED", 7, true),
    ("RESOURCE_UPDATE_PENDING", 8, false),
    ("RESOURCE_UPDATED", 9, false),
    ("RESOURCE_RETRIEVE_PENDING", 10, false),
    ("RESOURCE_RETRIEVED", 11, false),
    ("RESOURCE_DELETE_PENDING", 12, false),
    ("RESOURCE_DELETED", 13, false),
    ("RESOURCE_CREATE_PENDING", 14, false),
    ("RESOURCE_CREATED", 15, false),
    ("RESOURCE_CHANGED", 16, true),
];

/// Longest client message accepted.
const MAX_MESSAGE: usize = 64 * 1024;

/// Most subscriptions on one socket.
const MAX_SUBSCRIPTIONS: usize = 64;

/// One subscription of a socket.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    /// Its id.
    pub id: String,
    /// The `correlationId` of the request that made it, repeated in its events.
    pub correlation_id: String,
    /// Event kinds; empty = all.
    pub kinds: HashSet<&'static str>,
    /// Devices; empty = all.
    pub devices: HashSet<String>,
    /// `(di, href)`; empty = all.
    pub resources: HashSet<(String, String)>,
}

/// A parsed client message.
#[derive(Debug, PartialEq)]
pub enum Request {
    /// A new subscription (its id not yet set).
    Create(Subscription),
    /// Cancel a subscription.
    Cancel {
        /// The subscription.
        id: String,
        /// The request's `correlationId`.
        correlation_id: String,
    },
}

fn strings(v: &Value, what: &str) -> Result<Vec<String>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("{what}: expected strings"))
            })
            .collect(),
        _ => Err(format!("{what}: expected an array")),
    }
}

/// `"<di>/<href>"` (plgd's `{deviceId}{href}`) → `(di, /href)`.
fn resource_id_text(s: &str) -> Result<(String, String), String> {
    let (di, href) = s
        .split_once('/')
        .ok_or_else(|| format!("resource id {s:?}: expected <deviceId>/<href>"))?;
    Ok((di.to_ascii_lowercase(), format!("/{href}")))
}

/// Parses one `SubscribeToEvents` message.
pub fn parse_request(text: &str) -> Result<Request, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let correlation_id = v["correlationId"].as_str().unwrap_or("").to_owned();
    if let Some(c) = v.get("cancelSubscription") {
        let id = c["subscriptionId"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or("cancelSubscription: no subscriptionId")?;
        return Ok(Request::Cancel {
            id: id.to_owned(),
            correlation_id,
        });
    }
    let c = v
        .get("createSubscription")
        .filter(|c| c.is_object())
        .ok_or("expected createSubscription or cancelSubscription")?;
    let mut kinds = HashSet::new();
    match &c["eventFilter"] {
        Value::Null => {}
        Value::Array(items) => {
            for item in items {
                let kind = EVENT_KINDS
                    .iter()
                    .find(|(name, n, _)| item.as_str() == Some(*name) || item.as_i64() == Some(*n))
                    .ok_or_else(|| format!("eventFilter: unknown event {item}"))?;
                kinds.insert(kind.0);
            }
        }
        _ => return Err("eventFilter: expected an array".into()),
    }
    let devices = strings(&c["deviceIdFilter"], "deviceIdFilter")?
        .into_iter()
        .map(|d| d.to_ascii_lowercase())
        .collect();
    let mut resources = HashSet::new();
    for r in strings(&c["httpResourceIdFilter"], "httpResourceIdFilter")? {
        resources.insert(resource_id_text(&r)?);
    }
    // `resourceIdFilter`: strings in older hubs, `{"resourceId": {deviceId, href}}` in newer.
    if let Value::Array(items) = &c["resourceIdFilter"] {
        for item in items {
            match item {
                Value::String(s) => {
                    resources.insert(resource_id_text(s)?);
                }
                Value::Object(_) => {
                    let id = &item["resourceId"];
                    match (id["deviceId"].as_str(), id["href"].as_str()) {
                        (Some(d), Some(h)) => {
                            resources.insert((d.to_ascii_lowercase(), h.to_owned()));
                        }
                        _ => {
                            return Err(
                                "resourceIdFilter: expected resourceId.deviceId and .href".into()
                            )
                        }
                    }
                }
                _ => return Err("resourceIdFilter: expected strings or objects".into()),
            }
        }
    } else if !c["resourceIdFilter"].is_null() {
        return Err("resourceIdFilter: expected an array".into());
    }
    Ok(Request::Create(Subscription {
        id: String::new(),
        correlation_id,
        kinds,
        devices,
        resources,
    }))
}

/// The filter name of an event.
fn kind_name(kind: &HubEvent) -> &'static str {
    match kind {
        HubEvent::Registered => "REGISTERED",
        HubEvent::Unregistered => "UNREGISTERED",
        HubEvent::Status { .. } => "DEVICE_METADATA_UPDATED",
        HubEvent::Published(_) => "RESOURCE_PUBLISHED",
        HubEvent::Unpublished(_) => "RESOURCE_UNPUBLISHED",
        HubEvent::Changed { .. } => "RESOURCE_CHANGED",
    }
}

impl Subscription {
    /// Whether the subscription wants `ev`.
    pub fn wants(&self, ev: &Event) -> bool {
        if !self.kinds.is_empty() && !self.kinds.contains(kind_name(&ev.kind)) {
            return false;
        }
        if !self.devices.is_empty() && !self.devices.contains(&ev.di) {
            return false;
        }
        match &ev.kind {
            HubEvent::Changed { href, .. } if !self.resources.is_empty() => {
                self.resources.contains(&(ev.di.clone(), href.clone()))
            }
            _ => true,
        }
    }
}

fn status_name(online: bool) -> &'static str {
    if online {
        "ONLINE"
    } else {
        "OFFLINE"
    }
}

/// The `Event` body of a [`HubEvent`] (without subscription and correlation ids).
pub fn event_json(app: &App, ev: &Event) -> Value {
    let meta = event_metadata(ev.timestamp_ns, ev.sequence);
    let audit = audit_context(&ev.owner, "");
    match &ev.kind {
        HubEvent::Registered => json!({ "deviceRegistered": {
            "deviceIds": [ev.di], "eventMetadata": { "hubId": app.pki.sid } } }),
        HubEvent::Unregistered => json!({ "deviceUnregistered": {
            "deviceIds": [ev.di], "eventMetadata": { "hubId": app.pki.sid } } }),
        HubEvent::Status { online } => json!({ "deviceMetadataUpdated": {
            "deviceId": ev.di,
            "status": { "value": status_name(*online), "validUntil": "0" },
            "connection": { "status": status_name(*online), "onlineValidUntil": "0" },
            "twinEnabled": true,
            "shadowSynchronization": "UNSET",
            "auditContext": audit,
            "eventMetadata": meta,
        } }),
        HubEvent::Published(hrefs) => {
            let links: Vec<Value> = app
                .core
                .store
                .links(&ev.di)
                .unwrap_or_default()
                .iter()
                .filter(|l| hrefs.contains(&l.href))
                .map(|l| resource_link(&ev.di, &l.link))
                .collect();
            json!({ "resourcePublished": {
                "deviceId": ev.di, "resources": links, "auditContext": audit, "eventMetadata": meta } })
        }
        HubEvent::Unpublished(hrefs) => json!({ "resourceUnpublished": {
            "deviceId": ev.di, "hrefs": hrefs, "auditContext": audit, "eventMetadata": meta } }),
        HubEvent::Changed { href, rep } => {
            let types = app
                .core
                .store
                .links(&ev.di)
                .ok()
                .and_then(|l| l.into_iter().find(|l| &l.href == href))
                .and_then(|l| l.link["rt"].as_array().cloned())
                .unwrap_or_default();
            json!({ "resourceChanged": {
                "resourceId": { "deviceId": ev.di, "href": href },
                "content": rep,
                "status": "OK",
                "auditContext": audit,
                "eventMetadata": meta,
                "resourceTypes": types,
            } })
        }
    }
}

fn envelope(mut body: Value, subscription_id: &str, correlation_id: &str) -> String {
    if let Value::Object(m) = &mut body {
        m.insert("subscriptionId".into(), json!(subscription_id));
        m.insert("correlationId".into(), json!(correlation_id));
    }
    json!({ "result": body }).to_string()
}

fn processed(subscription_id: &str, correlation_id: &str, error: Option<(&str, String)>) -> String {
    let (code, message) = error.unwrap_or(("OK", String::new()));
    envelope(
        json!({ "operationProcessed": { "errorStatus": { "code": code, "message": message } } }),
        subscription_id,
        correlation_id,
    )
}

/// The current state a new subscription starts with: each device's metadata, links and
/// shadow, as the events that would have produced them.
fn snapshot(app: &App, user: &str, sub: &Subscription) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(devices) = app.core.store.devices_of(user) else {
        return out;
    };
    let now = now_ms().saturating_mul(1_000_000);
    for d in devices {
        let mut events = vec![HubEvent::Status {
            online: app.is_online(&d.di),
        }];
        if let Ok(links) = resource_links_json(app, &d.di, user) {
            let hrefs: Vec<String> = links["resources"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|l| l["href"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if !hrefs.is_empty() {
                events.push(HubEvent::Published(hrefs));
            }
        }
        for (href, rep) in app.reps_of(&d.di) {
            events.push(HubEvent::Changed { href, rep });
        }
        for kind in events {
            let ev = Event {
                di: d.di.clone(),
                owner: user.to_owned(),
                timestamp_ns: now,
                sequence: 0,
                kind,
            };
            if sub.wants(&ev) {
                out.push(envelope(event_json(app, &ev), &sub.id, &sub.correlation_id));
            }
        }
    }
    out
}

/// `GET /api/v1/ws/events`: the WebSocket upgrade, after the token is checked.
pub async fn events(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // The token first: an unauthenticated client learns nothing else.
    let user = match authenticate(&app, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => {
            return status_error(
                axum::http::StatusCode::BAD_REQUEST,
                crate::http::grpc::INVALID_ARGUMENT,
                format!("a WebSocket upgrade is expected here: {e}"),
            )
        }
    };
    upgrade
        .protocols(["Bearer"])
        .max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| serve(app, user, socket))
}

async fn serve(app: Arc<App>, user: String, mut socket: WebSocket) {
    let mut rx = app.subscribe();
    let mut subs: Vec<Subscription> = Vec::new();
    let mut next_id = 1u64;
    loop {
        tokio::select! {
            msg = socket.recv() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(Message::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue, // pings are answered by the socket itself
                };
                let mut out = Vec::new();
                match parse_request(&text) {
                    Ok(Request::Create(mut sub)) => {
                        if subs.len() >= MAX_SUBSCRIPTIONS {
                            out.push(processed("", &sub.correlation_id,
                                Some(("ERROR", format!("at most {MAX_SUBSCRIPTIONS} subscriptions")))));
                        } else {
                            sub.id = format!("{}-{next_id}", crate::core::random_hex(4).unwrap_or_default());
                            next_id += 1;
                            out.push(processed(&sub.id, &sub.correlation_id, None));
                            out.extend(snapshot(&app, &user, &sub));
                            subs.push(sub);
                        }
                    }
                    Ok(Request::Cancel { id, correlation_id }) => {
                        let before = subs.len();
                        subs.retain(|s| s.id != id);
                        if subs.len() < before {
                            out.push(processed(&id, &correlation_id, None));
                            out.push(envelope(
                                json!({ "subscriptionCanceled": { "reason": "canceled by the client" } }),
                                &id, &correlation_id));
                        } else {
                            out.push(processed(&id, &correlation_id,
                                Some(("NOT_FOUND", format!("no subscription {id}")))));
                        }
                    }
                    Err(e) => out.push(processed("", "", Some(("ERROR", e)))),
                }
                for m in out {
                    if socket.send(Message::Text(m.into())).await.is_err() {
                        return;
                    }
                }
            }
            ev = rx.recv() => {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(RecvError::Lagged(n)) => {
                        tracing::debug!("event subscriber lagged; {n} events lost");
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                };
                if ev.owner != user {
                    continue;
                }
                let mut body = None;
                for sub in subs.iter().filter(|s| s.wants(&ev)) {
                    let b = body.get_or_insert_with(|| event_json(&app, &ev)).clone();
                    let m = envelope(b, &sub.id, &sub.correlation_id);
                    if socket.send(Message::Text(m.into())).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: HubEvent) -> Event {
        Event {
            di: "d1".into(),
            owner: "alice".into(),
            timestamp_ns: 1,
            sequence: 1,
            kind,
        }
    }

    #[test]
    fn subscriptions_parse_and_filter() {
        let r = parse_request(
            r#"{"createSubscription":{"eventFilter":["RESOURCE_CHANGED",4],"deviceIdFilter":["D1"],
                "httpResourceIdFilter":["d1/switch"]},"correlationId":"c"}"#,
        )
        .unwrap();
        let Request::Create(sub) = r else { panic!() };
        assert_eq!(sub.correlation_id, "c");
        let changed = |href: &str| HubEvent::Changed {
            href: href.into(),
            rep: json!({}),
        };
        assert!(sub.wants(&ev(changed("/switch"))));
        assert!(!sub.wants(&ev(changed("/temperature"))));
        assert!(sub.wants(&ev(HubEvent::Status { online: true })));
        assert!(!sub.wants(&ev(HubEvent::Registered)));
        let mut other = ev(HubEvent::Status { online: true });
        other.di = "d2".into();
        assert!(!sub.wants(&other));

        let Request::Create(all) = parse_request(r#"{"createSubscription":{}}"#).unwrap() else {
            panic!()
        };
        assert!(all.wants(&ev(HubEvent::Unregistered)));
        assert_eq!(
            parse_request(r#"{"cancelSubscription":{"subscriptionId":"s"},"correlationId":"x"}"#)
                .unwrap(),
            Request::Cancel {
                id: "s".into(),
                correlation_id: "x".into()
            }
        );
        for bad in [
            "nope",
            "{}",
            r#"{"createSubscription":{"eventFilter":["BOGUS"]}}"#,
            r#"{"createSubscription":{"eventFilter":"RESOURCE_CHANGED"}}"#,
            r#"{"createSubscription":{"httpResourceIdFilter":["nohref"]}}"#,
            r#"{"cancelSubscription":{}}"#,
        ] {
            assert!(parse_request(bad).is_err(), "{bad}");
        }
    }
}
