//! State shared by the device connections and the HTTP API: the core (store and policy), the
//! connections of signed-in devices, the latest representations, the change events and the
//! device-facing request log.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coap_lite::Packet;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::core::Core;
use crate::pki::Pki;

/// Longest request log kept in memory.
pub const MAX_LOG_ENTRIES: usize = 10_000;

/// How long a forwarded request waits for the device.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One entry of the device-facing request log (never a secret: paths only, no query).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LogEntry {
    /// Unix milliseconds.
    pub t: u64,
    /// Device id, or `""` when unknown.
    pub di: String,
    /// `GET`, `POST`, `PUT`, `DELETE`.
    pub method: String,
    /// The Uri-Path.
    pub path: String,
    /// The response code (`2.04`), or `timeout` / `closed` when none came.
    pub code: String,
    /// `device` for requests the device sent, `cloud` for requests the cloud sent it.
    pub from: &'static str,
}

/// What happened in the cloud, for the event subscriptions of the client API
/// (`/api/v1/ws/events`, in plgd's event kinds).
#[derive(Debug, Clone, PartialEq)]
pub enum HubEvent {
    /// A device signed up (plgd `deviceRegistered`).
    Registered,
    /// A device was deregistered (plgd `deviceUnregistered`).
    Unregistered,
    /// A device came online or went offline (plgd `deviceMetadataUpdated`).
    Status {
        /// Signed in now.
        online: bool,
    },
    /// Links were published (plgd `resourcePublished`).
    Published(Vec<String>),
    /// Links were unpublished (plgd `resourceUnpublished`).
    Unpublished(Vec<String>),
    /// A resource's representation changed (plgd `resourceChanged`).
    Changed {
        /// The device-local href.
        href: String,
        /// The new representation (JSON).
        rep: serde_json::Value,
    },
}

/// A [`HubEvent`] with what every event carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The device.
    pub di: String,
    /// Its owner (the user whose subscriptions may see it).
    pub owner: String,
    /// Unix nanoseconds.
    pub timestamp_ns: u64,
    /// Increases by one with every event of the process.
    pub sequence: u64,
    /// What happened.
    pub kind: HubEvent,
}

/// A request to a connection task.
#[derive(Debug)]
pub enum Command {
    /// Forward a request to the device; the first response comes back on `reply`.
    Forward {
        /// The request, without token.
        packet: Packet,
        /// Where the response goes.
        reply: oneshot::Sender<Packet>,
    },
    /// Close the connection (another connection signed in for the same device, or shutdown).
    Close(String),
}

/// A signed-in device connection.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    /// Connection number, unique per process.
    pub conn_id: u64,
    /// Owner.
    pub uid: String,
    /// Commands to the connection task.
    pub tx: mpsc::Sender<Command>,
}

/// Why a forwarded request got no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardError {
    /// No signed-in connection for the device.
    Offline,
    /// The connection closed before the response.
    Closed,
    /// No response within [`FORWARD_TIMEOUT`].
    Timeout,
}

/// The shared state.
pub struct App {
    /// Store and device-facing logic.
    pub core: Core,
    /// Key material.
    pub pki: Pki,
    /// `coaps+tcp://IP:PORT` of the TLS listener.
    pub cis: String,
    /// `coap+tcp://IP:PORT` of the plain listener, if any.
    pub cis_plain: Option<String>,
    /// Silence before a Ping, and time to wait for its Pong.
    pub keepalive: Duration,
    /// The secret of the API client (`/oauth/token`), from `DATA-DIR/client-secret`.
    pub client_secret: String,
    http: std::net::SocketAddr,
    online: Mutex<HashMap<String, ConnHandle>>,
    reps: Mutex<HashMap<String, HashMap<String, serde_json::Value>>>,
    log: Mutex<VecDeque<LogEntry>>,
    events: broadcast::Sender<Event>,
    /// The owner of each device seen, kept after a deregistration removed the device's row.
    owners: Mutex<HashMap<String, String>>,
    next_conn_id: AtomicU64,
    max_message_size: AtomicU32,
    next_sequence: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl App {
    /// The shared state.
    pub fn new(
        core: Core,
        pki: Pki,
        cis: String,
        cis_plain: Option<String>,
        keepalive: Duration,
        http: std::net::SocketAddr,
        client_secret: String,
    ) -> Arc<App> {
        let (events, _) = broadcast::channel(1024);
        Arc::new(App {
            core,
            pki,
            cis,
            cis_plain,
            keepalive,
            client_secret,
            http,
            online: Mutex::new(HashMap::new()),
            reps: Mutex::new(HashMap::new()),
            log: Mutex::new(VecDeque::new()),
            events,
            owners: Mutex::new(HashMap::new()),
            next_conn_id: AtomicU64::new(1),
            max_message_size: AtomicU32::new(crate::device::MAX_MESSAGE_SIZE),
            next_sequence: AtomicU64::new(1),
        })
    }

    /// The Max-Message-Size device connections announce from now on (RFC 8323 §5.3.1).
    pub fn set_max_message_size(&self, bytes: u32) {
        self.max_message_size.store(bytes, Ordering::Relaxed);
    }

    pub fn max_message_size(&self) -> u32 {
        self.max_message_size.load(Ordering::Relaxed)
    }

    /// The HTTP listener's address.
    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.http
    }

    /// A fresh connection number.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The owner of `di`: the one recorded, else the store's.
    fn owner(&self, di: &str) -> Option<String> {
        if let Some(o) = lock(&self.owners).get(di) {
            return Some(o.clone());
        }
        let owner = self.core.store.device(di).ok().flatten()?.uid;
        lock(&self.owners).insert(di.to_owned(), owner.clone());
        Some(owner)
    }

    /// Publishes an event to the subscriptions (none listening is not an error).
    pub fn emit(&self, di: &str, kind: HubEvent) {
        let Some(owner) = self.owner(di) else {
            return; // a device no user owns: nobody may see it
        };
        let _ = self.events.send(Event {
            di: di.to_owned(),
            owner,
            timestamp_ns: now_ms().saturating_mul(1_000_000),
            sequence: self.next_sequence.fetch_add(1, Ordering::Relaxed),
            kind,
        });
    }

    /// A device signed up.
    pub fn device_registered(&self, di: &str) {
        lock(&self.owners).remove(di);
        self.emit(di, HubEvent::Registered);
    }

    /// Links were published.
    pub fn links_published(&self, di: &str, hrefs: &[String]) {
        self.emit(di, HubEvent::Published(hrefs.to_vec()));
    }

    /// Links were unpublished.
    pub fn links_unpublished(&self, di: &str, hrefs: &[String]) {
        self.emit(di, HubEvent::Unpublished(hrefs.to_vec()));
    }

    /// Registers a signed-in connection for `di`; returns the one it replaces, if any.
    pub fn register(&self, di: &str, handle: ConnHandle) -> Option<ConnHandle> {
        lock(&self.owners).insert(di.to_owned(), handle.uid.clone());
        let old = lock(&self.online).insert(di.to_owned(), handle.clone());
        if let Err(e) = self.core.store.set_online(di, true, now_ms()) {
            tracing::error!("{e}");
        }
        if old.is_none() {
            self.emit(di, HubEvent::Status { online: true });
        }
        old.filter(|o| o.conn_id != handle.conn_id)
    }

    /// Removes the connection `conn_id` of `di` (if it is still the registered one) and marks
    /// the device offline.
    pub fn unregister(&self, di: &str, conn_id: u64) {
        let mut online = lock(&self.online);
        if online.get(di).is_some_and(|h| h.conn_id == conn_id) {
            online.remove(di);
            drop(online);
            if let Err(e) = self.core.store.set_online(di, false, now_ms()) {
                tracing::error!("{e}");
            }
            self.emit(di, HubEvent::Status { online: false });
        }
    }

    /// The connection of a signed-in device.
    pub fn connection(&self, di: &str) -> Option<ConnHandle> {
        lock(&self.online).get(di).cloned()
    }

    /// Whether a device is signed in now.
    pub fn is_online(&self, di: &str) -> bool {
        lock(&self.online).contains_key(di)
    }

    /// All signed-in connections.
    pub fn connections(&self) -> Vec<ConnHandle> {
        lock(&self.online).values().cloned().collect()
    }

    /// Stores a representation; emits a change event if it differs from the one stored.
    pub fn update_rep(&self, di: &str, href: &str, rep: serde_json::Value) {
        let changed = {
            let mut reps = lock(&self.reps);
            let dev = reps.entry(di.to_owned()).or_default();
            if dev.get(href) == Some(&rep) {
                false
            } else {
                dev.insert(href.to_owned(), rep.clone());
                true
            }
        };
        if changed {
            self.emit(
                di,
                HubEvent::Changed {
                    href: href.to_owned(),
                    rep,
                },
            );
        }
    }

    /// Forgets the representation of a resource that is gone.
    pub fn remove_rep(&self, di: &str, href: &str) {
        if let Some(dev) = lock(&self.reps).get_mut(di) {
            dev.remove(href);
        }
    }

    /// Forgets every representation of a device: it was deregistered.
    pub fn remove_device_reps(&self, di: &str) {
        lock(&self.reps).remove(di);
        self.emit(di, HubEvent::Unregistered);
    }

    /// The whole shadow of a device: (href, representation), by href.
    pub fn reps_of(&self, di: &str) -> Vec<(String, serde_json::Value)> {
        let mut v: Vec<_> = lock(&self.reps)
            .get(di)
            .map(|m| m.iter().map(|(h, r)| (h.clone(), r.clone())).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The latest representation of a resource.
    pub fn rep(&self, di: &str, href: &str) -> Option<serde_json::Value> {
        lock(&self.reps).get(di)?.get(href).cloned()
    }

    /// Subscribes to the events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Appends to the request log.
    pub fn log(&self, entry: LogEntry) {
        let mut log = lock(&self.log);
        if log.len() >= MAX_LOG_ENTRIES {
            log.pop_front();
        }
        log.push_back(entry);
    }

    /// The request log, oldest first.
    pub fn log_entries(&self) -> Vec<LogEntry> {
        lock(&self.log).iter().cloned().collect()
    }

    /// Sends a request to a signed-in device and waits for its response.
    pub async fn forward(&self, di: &str, packet: Packet) -> Result<Packet, ForwardError> {
        let handle = self.connection(di).ok_or(ForwardError::Offline)?;
        let (reply, rx) = oneshot::channel();
        handle
            .tx
            .send(Command::Forward { packet, reply })
            .await
            .map_err(|_| ForwardError::Offline)?;
        match tokio::time::timeout(FORWARD_TIMEOUT, rx).await {
            Err(_) => Err(ForwardError::Timeout),
            Ok(Err(_)) => Err(ForwardError::Closed),
            Ok(Ok(p)) => Ok(p),
        }
    }
}

/// The text form of a CoAP code (`2.05`).
pub fn code_string(code: coap_lite::MessageClass) -> String {
    let n = u8::from(code);
    format!("{}.{:02}", n >> 5, n & 0x1F)
}

/// The method name of a request code.
pub fn method_name(code: coap_lite::MessageClass) -> &'static str {
    use coap_lite::{MessageClass, RequestType};
    match code {
        MessageClass::Request(RequestType::Get) => "GET",
        MessageClass::Request(RequestType::Post) => "POST",
        MessageClass::Request(RequestType::Put) => "PUT",
        MessageClass::Request(RequestType::Delete) => "DELETE",
        MessageClass::Request(_) => "OTHER",
        _ => "",
    }
}

/// The Uri-Path of a packet, `/a/b`.
pub fn packet_path(p: &Packet) -> String {
    let mut path = String::new();
    if let Some(segs) = p.get_option(coap_lite::CoapOption::UriPath) {
        for s in segs {
            path.push('/');
            path.push_str(&String::from_utf8_lossy(s));
        }
    }
    if path.is_empty() {
        path.push('/');
    }
    path
}
