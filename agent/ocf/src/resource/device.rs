//! One OCF device's resource tree and the router that serves requests on it.
//!
//! [`Device::handle`] turns a parsed request into a response, registering or cancelling
//! observations on the way; changes (a POST that went through, a sensor reading the daemon
//! pushes with [`Device::mark_changed`]) queue notifications that the daemon drains with
//! [`Device::take_notifications`] and writes to the observers' connections.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::rc::Rc;

use ciborium::Value;
use coap_lite::{Packet, ResponseType};

use super::backend::{Backend, Props, ResourceError};
use super::endpoint::Endpoint;
use super::interface::{Interface, Policy};
use super::request::{Method, Request, Response, OCF_VERSION_1_0};
use crate::model::{decode_payload, encode_payload, ContentFormat};

/// `/oic/res`, the discovery resource (OCF Core §7.8.2.1).
pub const RES_HREF: &str = "/oic/res";
/// `/oic/d`, the device resource (OCF Core §11.3.2).
pub const DEVICE_HREF: &str = "/oic/d";
/// `/oic/con`, the device configuration resource (OCF Core §11.3.4).
pub const CONFIGURATION_HREF: &str = "/oic/con";
/// `/oic/p`, the platform resource (OCF Core §11.3.3).
pub const PLATFORM_HREF: &str = "/oic/p";

/// Where a request came from, so observations can be tied to their connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// A UDP peer.
    Udp(SocketAddr),
    /// A stream connection (TCP or TLS), identified by the daemon's connection number.
    Stream(u64),
}

/// Identity and versions reported by `/oic/d`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Device UUID (`di`), lower-case hyphenated.
    pub di: String,
    /// Protocol-independent id (`piid`), immutable for the device's life.
    pub piid: String,
    /// Human-readable name (`n`).
    pub name: String,
    /// The device type listed first in `rt`, e.g. `oic.d.sensor`.
    pub device_type: String,
    /// Core specification version (`icv`).
    pub spec_version: String,
    /// Data model versions (`dmv`).
    pub data_model_version: String,
    /// Software version (`sv`).
    pub software_version: String,
}

/// Facts reported by `/oic/p`. Only fields known to be true are filled in.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PlatformInfo {
    /// Platform UUID (`pi`).
    pub pi: String,
    /// Manufacturer name (`mnmn`).
    pub manufacturer: String,
    /// Optional fields (`mnmo`, `mnhw`, `mnos`, `mnfv`, ...), given verbatim.
    pub extra: Props,
}

/// A resource in the tree.
pub struct Resource {
    pub href: String,
    pub types: Vec<String>,
    /// The interfaces it supports; the first is its default.
    pub interfaces: Vec<Interface>,
    pub policy: Policy,
    pub name: Option<String>,
    pub backend: Box<dyn Backend>,
}

impl Resource {
    pub fn new(
        href: &str,
        types: &[&str],
        interfaces: &[Interface],
        policy: Policy,
        backend: Box<dyn Backend>,
    ) -> Resource {
        Resource {
            href: href.to_string(),
            types: types.iter().map(|s| s.to_string()).collect(),
            interfaces: interfaces.to_vec(),
            policy,
            name: None,
            backend,
        }
    }

    fn default_interface(&self) -> Interface {
        self.interfaces
            .first()
            .copied()
            .unwrap_or(Interface::Baseline)
    }
}

/// A fixed set of properties (for `/oic/d` and `/oic/p`).
struct FixedProps(Props);

impl Backend for FixedProps {
    fn retrieve(&mut self) -> Result<Props, ResourceError> {
        Ok(self.0.clone())
    }
}

/// `/oic/d`: fixed properties plus the device name, which `/oic/con` can change.
struct DeviceBackend {
    props: Rc<RefCell<Props>>,
    name: Rc<RefCell<String>>,
}

impl Backend for DeviceBackend {
    fn retrieve(&mut self) -> Result<Props, ResourceError> {
        let mut p = self.props.borrow().clone();
        p.insert("n".into(), Value::Text(self.name.borrow().clone()));
        Ok(p)
    }
}

/// Longest device name (`n`, OCF Core: at most 64 characters).
pub const MAX_NAME_LEN: usize = 64;

/// `/oic/con` (rt `oic.wk.con`, OCF Core §11.3.4): the device configuration resource; here its
/// writable `n`, the name `/oic/d` reports. Access control treats it as an ordinary resource, so
/// only the owner (or an ACE) may write it.
struct ConfigurationBackend {
    name: Rc<RefCell<String>>,
    changed: Rc<RefCell<bool>>,
}

impl Backend for ConfigurationBackend {
    fn retrieve(&mut self) -> Result<Props, ResourceError> {
        Ok(Props::from([(
            "n".to_string(),
            Value::Text(self.name.borrow().clone()),
        )]))
    }

    fn update(&mut self, props: &Props) -> Result<(), ResourceError> {
        let mut new_name = None;
        for (k, v) in props {
            match (k.as_str(), v) {
                ("n", Value::Text(n)) if !n.is_empty() && n.chars().count() <= MAX_NAME_LEN => {
                    new_name = Some(n.clone())
                }
                ("n", _) => {
                    return Err(ResourceError::BadRequest(format!(
                        "n must be a text of 1 to {MAX_NAME_LEN} characters"
                    )))
                }
                (other, _) => {
                    return Err(ResourceError::BadRequest(format!(
                        "property {other:?} is not writable here"
                    )))
                }
            }
        }
        if let Some(n) = new_name {
            *self.name.borrow_mut() = n;
            *self.changed.borrow_mut() = true;
        }
        Ok(())
    }
}

/// A notification ready to be written to an observer's connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub origin: Origin,
    pub packet: Packet,
}

#[derive(Debug, Clone)]
struct Observer {
    origin: Origin,
    token: Vec<u8>,
    href: String,
    interface: Interface,
    format: ContentFormat,
}

/// Decides whether the representation of the resource at `href`, read through its default
/// interface, may go into a batch (`oic.if.b`) answer or notification of `/oic/res` for the peer
/// of an [`Origin`]: `/oic/res` itself is open to anyone (discovery), but its batch form carries
/// every resource's representation, so each item is included only if the filter allows it for
/// the requester (as iotivity-lite checks its ACL per batch item). [`crate::server::Server`]
/// passes its access decision with every request and every round of notifications, so a changed
/// ACL takes effect for existing batch observers. Without a filter every item is included.
pub type BatchFilter<'a> = &'a dyn Fn(&Origin, &str, Interface) -> bool;

/// A resource tree with its observers.
pub struct Device {
    info: DeviceInfo,
    resources: Vec<Resource>,
    endpoints: Vec<Endpoint>,
    observers: Vec<Observer>,
    /// RFC 7641 §4.4: notifications carry increasing 24-bit sequence numbers. One counter for
    /// the whole device keeps every observer's sequence increasing.
    next_sequence: u32,
    changed: BTreeSet<String>,
    /// Connections to the cloud: what they read is seen by remote clients, who reach the device
    /// through the cloud and have no business with its LAN addresses.
    remote: BTreeSet<Origin>,
    name: Rc<RefCell<String>>,
    name_changed: Rc<RefCell<bool>>,
    /// `/oic/d`'s properties other than `n`.
    device_props: Rc<RefCell<Props>>,
    /// (per peer, total) observation limits.
    observation_limits: (usize, usize),
}

/// Observations one peer (a connection, or a UDP peer address) may hold at once. A client
/// observes each resource once, and a board has a few dozen; more is a peer filling memory.
pub const DEFAULT_OBSERVATIONS_PER_PEER: usize = 64;

/// Observations the whole device holds at once: every change costs one notification each.
pub const DEFAULT_OBSERVATIONS_TOTAL: usize = 512;

/// Largest Observe sequence value (24 bits, RFC 7641 §3.4).
const SEQUENCE_MASK: u32 = 0x00FF_FFFF;

impl Device {
    /// A device with `/oic/res`, `/oic/d` and `/oic/p`.
    pub fn new(info: DeviceInfo, platform: PlatformInfo) -> Device {
        let mut device = Device {
            info,
            resources: Vec::new(),
            endpoints: Vec::new(),
            observers: Vec::new(),
            next_sequence: 2,
            changed: BTreeSet::new(),
            remote: BTreeSet::new(),
            name: Rc::new(RefCell::new(String::new())),
            name_changed: Rc::new(RefCell::new(false)),
            device_props: Rc::new(RefCell::new(Props::new())),
            observation_limits: (DEFAULT_OBSERVATIONS_PER_PEER, DEFAULT_OBSERVATIONS_TOTAL),
        };
        *device.name.borrow_mut() = device.info.name.clone();
        let mut d = device_props(&device.info);
        d.remove("n");
        *device.device_props.borrow_mut() = d;
        let dtype = device.info.device_type.clone();
        device.resources.push(Resource {
            href: DEVICE_HREF.into(),
            types: vec![dtype, "oic.wk.d".into()],
            interfaces: vec![Interface::ReadOnly, Interface::Baseline],
            policy: Policy::discoverable(),
            name: None,
            backend: Box::new(DeviceBackend {
                props: device.device_props.clone(),
                name: device.name.clone(),
            }),
        });
        device.resources.push(Resource::new(
            CONFIGURATION_HREF,
            &["oic.wk.con"],
            &[Interface::ReadWrite, Interface::Baseline],
            Policy::discoverable(),
            Box::new(ConfigurationBackend {
                name: device.name.clone(),
                changed: device.name_changed.clone(),
            }),
        ));
        let mut p = platform.extra.clone();
        p.insert("pi".into(), Value::Text(platform.pi.clone()));
        p.insert("mnmn".into(), Value::Text(platform.manufacturer.clone()));
        device.resources.push(Resource::new(
            PLATFORM_HREF,
            &["oic.wk.p"],
            &[Interface::ReadOnly, Interface::Baseline],
            Policy::discoverable(),
            Box::new(FixedProps(p)),
        ));
        device
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The device name (`n` of `/oic/d`), as `/oic/con` may have changed it.
    pub fn name(&self) -> String {
        self.name.borrow().clone()
    }

    /// The new name if `/oic/con` changed it since the last call (for the daemon to persist).
    pub fn take_name_change(&mut self) -> Option<String> {
        let changed = std::mem::take(&mut *self.name_changed.borrow_mut());
        if changed {
            let name = self.name();
            self.info.name = name.clone();
            self.changed.insert(DEVICE_HREF.into());
            Some(name)
        } else {
            None
        }
    }

    /// Gives the device a new `di` and name (a factory reset, OCF-PROTOCOL.md §9): `/oic/d`,
    /// `/oic/con` and the anchors of `/oic/res` change, and their observers are notified.
    pub fn set_identity(&mut self, di: &str, name: &str) {
        self.info.di = di.to_string();
        self.info.name = name.to_string();
        *self.name.borrow_mut() = name.to_string();
        *self.name_changed.borrow_mut() = false;
        self.device_props
            .borrow_mut()
            .insert("di".into(), Value::Text(di.to_string()));
        for href in [DEVICE_HREF, CONFIGURATION_HREF, RES_HREF] {
            self.changed.insert(href.to_string());
        }
    }

    /// Adds a resource. Hrefs are unique and must start with `/`.
    pub fn add(&mut self, resource: Resource) -> Result<(), String> {
        if !resource.href.starts_with('/') {
            return Err(format!("href {:?} does not start with '/'", resource.href));
        }
        if resource.href == RES_HREF || self.find(&resource.href).is_some() {
            return Err(format!("href {} is already in use", resource.href));
        }
        if resource.interfaces.is_empty() || resource.types.is_empty() {
            return Err(format!(
                "resource {} needs at least one rt and one if",
                resource.href
            ));
        }
        let discoverable = resource.policy.discoverable;
        self.resources.push(resource);
        if discoverable {
            // The set of links changed: batch observers of /oic/res hear about it.
            self.changed.insert(RES_HREF.into());
        }
        Ok(())
    }

    /// Removes a resource and ends its observations.
    pub fn remove(&mut self, href: &str) -> Option<Resource> {
        let idx = self.resources.iter().position(|r| r.href == href)?;
        self.observers.retain(|o| o.href != href);
        let removed = self.resources.remove(idx);
        if removed.policy.discoverable {
            self.changed.insert(RES_HREF.into());
        }
        Some(removed)
    }

    /// The endpoints listed as `eps` in discovery (see [`super::endpoint`]).
    pub fn set_endpoints(&mut self, endpoints: Vec<Endpoint>) {
        self.endpoints = endpoints;
    }

    pub fn hrefs(&self) -> impl Iterator<Item = &str> {
        self.resources.iter().map(|r| r.href.as_str())
    }

    fn find(&self, href: &str) -> Option<usize> {
        self.resources.iter().position(|r| r.href == href)
    }

    /// Records that a resource's state changed (a new sensor reading, a write by another path),
    /// so its observers and the batch observers of `/oic/res` are notified.
    pub fn mark_changed(&mut self, href: &str) {
        self.changed.insert(href.to_string());
    }

    /// Sets how many observations one peer, and the whole device, may hold (at least one each).
    pub fn set_observation_limits(&mut self, per_peer: usize, total: usize) {
        self.observation_limits = (per_peer.max(1), total.max(1));
    }

    /// Number of live observations (for tests and metrics).
    pub fn observer_count(&self) -> usize {
        self.observers.len()
    }

    /// Marks `origin` as the cloud's connection: links it reads carry no `eps` (the device's LAN
    /// endpoints), as the reference device's links read through the cloud carry none.
    pub fn set_remote(&mut self, origin: Origin) {
        self.remote.insert(origin);
    }

    /// Ends every observation of a closed connection (RFC 8323 §7: observations over a
    /// connection end with it).
    pub fn drop_origin(&mut self, origin: &Origin) {
        self.observers.retain(|o| &o.origin != origin);
        self.remote.remove(origin);
    }

    /// Ends one observation (a UDP notification answered with RST, RFC 7641 §3.6).
    pub fn cancel_observation(&mut self, origin: &Origin, token: &[u8]) {
        self.observers
            .retain(|o| !(&o.origin == origin && o.token == token));
    }

    /// Serves a CoAP request message; the convenience form of [`Device::handle`].
    pub fn handle_packet(&mut self, origin: &Origin, packet: &Packet) -> Packet {
        let response = match Request::from_packet(packet) {
            Ok(request) => self.handle(origin, &request, packet.get_token()),
            Err(response) => response,
        };
        response.to_packet(packet.get_token())
    }

    /// Serves a request. `token` identifies an observation registered by this request.
    pub fn handle(&mut self, origin: &Origin, req: &Request, token: &[u8]) -> Response {
        self.handle_filtered(origin, req, token, None)
    }

    /// [`Device::handle`] with a [`BatchFilter`] for batch representations of `/oic/res`.
    pub fn handle_filtered(
        &mut self,
        origin: &Origin,
        req: &Request,
        token: &[u8],
        filter: Option<BatchFilter<'_>>,
    ) -> Response {
        match self.serve(origin, req, token, filter) {
            Ok(r) => r,
            Err(r) => r,
        }
    }

    /// Serves a request that arrived by multicast: only discovery is answered, and nothing is
    /// sent when there is nothing to say (an empty filtered result or an error), so a group of
    /// devices does not flood the requester with refusals (RFC 7252 §8.2.1).
    pub fn handle_multicast(&mut self, origin: &Origin, req: &Request) -> Option<Response> {
        if req.path != RES_HREF || req.method != Method::Get {
            return None;
        }
        let mut plain = req.clone();
        plain.observe = None;
        let response = self.handle(origin, &plain, &[]);
        if response.code != ResponseType::Content {
            return None;
        }
        match (response.content_format, response.payload.as_slice()) {
            // An empty CBOR array (0x80) or JSON array: nothing matched.
            (Some(cf), [0x80]) if cf != ContentFormat::JSON_NUMBER => None,
            (Some(ContentFormat::JSON_NUMBER), b"[]") => None,
            _ => Some(response),
        }
    }

    fn serve(
        &mut self,
        origin: &Origin,
        req: &Request,
        token: &[u8],
        filter: Option<BatchFilter<'_>>,
    ) -> Result<Response, Response> {
        // OCF-PROTOCOL.md §2.6: versions below 1.0.0 are refused; absent options mean 1.0.0.
        for v in [req.accept_version, req.content_version]
            .into_iter()
            .flatten()
        {
            if v < OCF_VERSION_1_0 {
                return Err(Response::error(
                    ResponseType::UnsupportedContentFormat,
                    &format!("OCF content format version {v:#06x} is older than 1.0.0"),
                ));
            }
        }
        let format = match req.accept {
            // A client that sends no OCF version option and no Accept does not speak OCF's
            // content format: it gets the same CBOR as application/cbor (60), without the
            // critical option 2053 that a generic CoAP stack would have to reject (RFC 7252
            // §5.4.1; libcoap drops such responses). OCF clients always send 2049 or Accept.
            None if req.accept_version.is_none() && req.content_version.is_none() => {
                ContentFormat::Cbor
            }
            None => ContentFormat::OcfCbor,
            Some(n) => ContentFormat::from_number(n).ok_or_else(|| {
                Response::error(
                    ResponseType::NotAcceptable,
                    &format!("cannot answer in content-format {n}; use 10000, 60 or 50"),
                )
            })?,
        };
        if let Some(n) = req.content_format {
            if ContentFormat::from_number(n).is_none() {
                return Err(Response::error(
                    ResponseType::UnsupportedContentFormat,
                    &format!("content-format {n} is not supported; use 10000, 60 or 50"),
                ));
            }
        }
        let interface = match req.query_value("if") {
            None => None,
            Some(s) => Some(Interface::parse(s).ok_or_else(|| {
                Response::error(
                    ResponseType::BadRequest,
                    &format!("unknown interface {s:?}"),
                )
            })?),
        };

        if req.path == RES_HREF {
            return self.serve_discovery(origin, req, token, interface, format, filter);
        }
        let idx = self
            .find(&req.path)
            .ok_or_else(|| Response::error(ResponseType::NotFound, "no such resource"))?;
        let resource = &self.resources[idx];
        if let Some(rt) = req.query_value("rt") {
            if !resource.types.iter().any(|t| t == rt) {
                return Err(Response::error(
                    ResponseType::NotFound,
                    &format!("resource has no type {rt:?}"),
                ));
            }
        }
        let interface = interface.unwrap_or_else(|| resource.default_interface());
        if !resource.interfaces.contains(&interface) {
            return Err(Response::error(
                ResponseType::BadRequest,
                &format!("resource does not support interface {interface}"),
            ));
        }
        match req.method {
            Method::Get => {
                let rep = self.representation(idx, interface)?;
                let mut response = content_response(&rep, format, req)?;
                match req.observe {
                    Some(0) if self.resources[idx].policy.observable => {
                        self.register(origin, token, &req.path, interface, format)?;
                        response.observe = Some(self.sequence());
                    }
                    Some(1) => self.cancel_observation(origin, token),
                    // Not observable: a plain 2.05 without Observe (RFC 7641 §4.1).
                    _ => {}
                }
                Ok(response)
            }
            Method::Post => {
                if !interface.allows_update() {
                    return Err(Response::error(
                        ResponseType::MethodNotAllowed,
                        &format!("interface {interface} is read-only"),
                    ));
                }
                let props = decode_update(req)?;
                let resource = &mut self.resources[idx];
                resource.backend.update(&props).map_err(error_response)?;
                self.changed.insert(req.path.clone());
                let rep = self.representation(idx, interface)?;
                let mut response = content_response(&rep, format, req)?;
                response.code = ResponseType::Changed;
                response.etag = None;
                Ok(response)
            }
            Method::Put | Method::Delete => Err(Response::error(
                ResponseType::MethodNotAllowed,
                "resource supports GET and POST only",
            )),
        }
    }

    fn register(
        &mut self,
        origin: &Origin,
        token: &[u8],
        href: &str,
        interface: Interface,
        format: ContentFormat,
    ) -> Result<(), Response> {
        // RFC 7641 §4.1: a registration with the same token replaces the earlier one.
        self.cancel_observation(origin, token);
        // RFC 7641 §4.1 lets a server decline an observation; it is refused outright so the
        // client knows (5.03: the limit is this server's resources, not the request's fault).
        let (per_peer, total) = self.observation_limits;
        if self.observers.len() >= total {
            return Err(Response::error(
                ResponseType::ServiceUnavailable,
                &format!("the device holds its limit of {total} observations; try again later"),
            ));
        }
        if self
            .observers
            .iter()
            .filter(|o| &o.origin == origin)
            .count()
            >= per_peer
        {
            return Err(Response::error(
                ResponseType::ServiceUnavailable,
                &format!(
                    "this connection holds its limit of {per_peer} observations; cancel one first"
                ),
            ));
        }
        self.observers.push(Observer {
            origin: origin.clone(),
            token: token.to_vec(),
            href: href.to_string(),
            interface,
            format,
        });
        Ok(())
    }

    fn sequence(&mut self) -> u32 {
        let s = self.next_sequence;
        self.next_sequence = (self.next_sequence + 1) & SEQUENCE_MASK;
        s
    }

    /// The representation of resource `idx` through `interface`.
    fn representation(&mut self, idx: usize, interface: Interface) -> Result<Value, Response> {
        let resource = &mut self.resources[idx];
        let props = resource.backend.retrieve().map_err(error_response)?;
        let mut entries: Vec<(Value, Value)> = Vec::with_capacity(props.len() + 3);
        if interface == Interface::Baseline {
            entries.push(("rt".into(), text_array(&resource.types)));
            entries.push((
                "if".into(),
                Value::Array(
                    resource
                        .interfaces
                        .iter()
                        .map(|i| Value::Text(i.as_str().into()))
                        .collect(),
                ),
            ));
            if let Some(n) = &resource.name {
                entries.push(("n".into(), Value::Text(n.clone())));
            }
        }
        entries.extend(props.into_iter().map(|(k, v)| (Value::Text(k), v)));
        Ok(Value::Map(entries))
    }

    fn serve_discovery(
        &mut self,
        origin: &Origin,
        req: &Request,
        token: &[u8],
        interface: Option<Interface>,
        format: ContentFormat,
        filter: Option<BatchFilter<'_>>,
    ) -> Result<Response, Response> {
        if req.method != Method::Get {
            return Err(Response::error(
                ResponseType::MethodNotAllowed,
                "/oic/res is read-only",
            ));
        }
        let interface = interface.unwrap_or(Interface::LinkList);
        let rt_filter = req.query_value("rt").map(str::to_string);
        let rep = self.discovery(origin, interface, rt_filter.as_deref(), filter)?;
        let mut response = content_response(&rep, format, req)?;
        match req.observe {
            // Only the batch form is observable (OCF-PROTOCOL.md §3.1, §6.1: plgd hub's batch
            // observation).
            Some(0) if interface == Interface::Batch => {
                self.register(origin, token, RES_HREF, interface, format)?;
                response.observe = Some(self.sequence());
            }
            Some(1) => self.cancel_observation(origin, token),
            _ => {}
        }
        Ok(response)
    }

    /// `/oic/res` in one of its three forms.
    fn discovery(
        &mut self,
        origin: &Origin,
        interface: Interface,
        rt: Option<&str>,
        filter: Option<BatchFilter<'_>>,
    ) -> Result<Value, Response> {
        match interface {
            Interface::LinkList => Ok(Value::Array(self.links(origin, rt))),
            Interface::Baseline => Ok(Value::Array(vec![Value::Map(vec![
                ("rt".into(), text_array(&["oic.wk.res".to_string()])),
                ("if".into(), text_array(&res_interfaces())),
                ("links".into(), Value::Array(self.links(origin, rt))),
            ])])),
            Interface::Batch => {
                let mut items = Vec::new();
                for idx in 0..self.resources.len() {
                    let r = &self.resources[idx];
                    if !r.policy.discoverable || r.href.starts_with("/oic/sec/") {
                        continue;
                    }
                    if let Some(rt) = rt {
                        if !r.types.iter().any(|t| t == rt) {
                            continue;
                        }
                    }
                    let href = format!("ocf://{}{}", self.info.di, r.href);
                    let types = text_array(&r.types);
                    let default_if = r.default_interface();
                    if let Some(allowed) = filter {
                        if !allowed(origin, &r.href, default_if) {
                            continue;
                        }
                    }
                    // A resource whose hardware is not answering is left out of this batch;
                    // an empty `rep` would tell plgd the resource is gone.
                    if let Ok(rep) = self.representation(idx, default_if) {
                        items.push(Value::Map(vec![
                            ("href".into(), Value::Text(href)),
                            ("rt".into(), types),
                            ("rep".into(), rep),
                        ]));
                    }
                }
                Ok(Value::Array(items))
            }
            other => Err(Response::error(
                ResponseType::BadRequest,
                &format!("/oic/res does not support interface {other}"),
            )),
        }
    }

    /// The links of every discoverable resource, `/oic/res` itself first, as `origin` may
    /// see them.
    fn links(&self, origin: &Origin, rt: Option<&str>) -> Vec<Value> {
        let anchor = Value::Text(format!("ocf://{}", self.info.di));
        let eps = Value::Array(if self.remote.contains(origin) {
            Vec::new()
        } else {
            self.endpoints
                .iter()
                .filter(|ep| {
                    ep.usable_by(match origin {
                        Origin::Udp(peer) => Some(peer),
                        Origin::Stream(_) => None,
                    })
                })
                .map(|ep| Value::Map(vec![("ep".into(), Value::Text(ep.uri()))]))
                .collect()
        });
        let mut links = Vec::new();
        let self_types = ["oic.wk.res".to_string()];
        if rt.is_none_or(|rt| rt == "oic.wk.res") {
            links.push(Value::Map(vec![
                ("href".into(), Value::Text(RES_HREF.into())),
                ("rt".into(), text_array(&self_types)),
                ("if".into(), text_array(&res_interfaces())),
                ("rel".into(), text_array(&["self".to_string()])),
                ("p".into(), bm(Policy::discoverable_observable())),
                ("anchor".into(), anchor.clone()),
                ("eps".into(), eps.clone()),
            ]));
        }
        for r in &self.resources {
            if !r.policy.discoverable {
                continue;
            }
            if let Some(rt) = rt {
                if !r.types.iter().any(|t| t == rt) {
                    continue;
                }
            }
            links.push(Value::Map(vec![
                ("href".into(), Value::Text(r.href.clone())),
                ("rt".into(), text_array(&r.types)),
                (
                    "if".into(),
                    Value::Array(
                        r.interfaces
                            .iter()
                            .map(|i| Value::Text(i.as_str().into()))
                            .collect(),
                    ),
                ),
                ("p".into(), bm(r.policy)),
                ("anchor".into(), anchor.clone()),
                ("eps".into(), eps.clone()),
            ]));
        }
        links
    }

    /// Notifications for everything that changed since the last call.
    pub fn take_notifications(&mut self) -> Vec<Notification> {
        self.take_notifications_filtered(None)
    }

    /// [`Device::take_notifications`] with a [`BatchFilter`] for batch notifications.
    pub fn take_notifications_filtered(
        &mut self,
        filter: Option<BatchFilter<'_>>,
    ) -> Vec<Notification> {
        if self.changed.is_empty() {
            return Vec::new();
        }
        let changed = std::mem::take(&mut self.changed);
        let batch_affected = changed.iter().any(|href| {
            href == RES_HREF
                || self
                    .find(href)
                    .is_some_and(|i| self.resources[i].policy.discoverable)
        });
        let mut out = Vec::new();
        let mut failed = Vec::new();
        for i in 0..self.observers.len() {
            let observer = self.observers[i].clone();
            let due = if observer.href == RES_HREF {
                batch_affected
            } else {
                changed.contains(&observer.href)
            };
            if !due {
                continue;
            }
            let rep = if observer.href == RES_HREF {
                self.discovery(&observer.origin, observer.interface, None, filter)
            } else {
                match self.find(&observer.href) {
                    Some(idx) => self.representation(idx, observer.interface),
                    None => Err(Response::error(ResponseType::NotFound, "resource removed")),
                }
            };
            let response = match rep.and_then(|rep| encode_rep(&rep, observer.format)) {
                Ok((payload, cf)) => {
                    let mut r = Response::new(ResponseType::Content);
                    r.content_format = Some(cf);
                    r.etag = Some(etag_of(&payload, cf));
                    r.payload = payload;
                    r.observe = Some(self.sequence());
                    r
                }
                Err(e) => {
                    // A notification with an error code ends the observation (RFC 7641 §4.2).
                    if e.code == ResponseType::ServiceUnavailable {
                        // A sensor that stopped answering: skip this round rather than end the
                        // observation; its next good reading will be notified.
                        continue;
                    }
                    failed.push((observer.origin.clone(), observer.token.clone()));
                    e
                }
            };
            out.push(Notification {
                origin: observer.origin,
                packet: response.to_packet(&observer.token),
            });
        }
        for (origin, token) in failed {
            self.cancel_observation(&origin, &token);
        }
        out
    }
}

fn res_interfaces() -> Vec<String> {
    [Interface::LinkList, Interface::Batch, Interface::Baseline]
        .iter()
        .map(|i| i.as_str().to_string())
        .collect()
}

fn text_array(items: &[String]) -> Value {
    Value::Array(items.iter().map(|s| Value::Text(s.clone())).collect())
}

fn bm(policy: Policy) -> Value {
    Value::Map(vec![("bm".into(), Value::Integer(policy.bm().into()))])
}

fn device_props(info: &DeviceInfo) -> Props {
    let mut p = Props::new();
    p.insert("n".into(), Value::Text(info.name.clone()));
    p.insert("di".into(), Value::Text(info.di.clone()));
    p.insert("piid".into(), Value::Text(info.piid.clone()));
    p.insert("icv".into(), Value::Text(info.spec_version.clone()));
    p.insert("dmv".into(), Value::Text(info.data_model_version.clone()));
    p.insert("sv".into(), Value::Text(info.software_version.clone()));
    p
}

pub(crate) fn error_response(e: ResourceError) -> Response {
    match e {
        ResourceError::BadRequest(s) => Response::error(ResponseType::BadRequest, &s),
        ResourceError::Forbidden(s) => Response::error(ResponseType::Forbidden, &s),
        ResourceError::MethodNotAllowed => {
            Response::error(ResponseType::MethodNotAllowed, "resource cannot be updated")
        }
        ResourceError::Unavailable(s) => Response::error(ResponseType::ServiceUnavailable, &s),
        ResourceError::Internal(s) => Response::error(ResponseType::InternalServerError, &s),
    }
}

fn encode_rep(rep: &Value, format: ContentFormat) -> Result<(Vec<u8>, u16), Response> {
    let payload = encode_payload(format, rep)
        .map_err(|e| Response::error(ResponseType::InternalServerError, &e.0))?;
    Ok((payload, format.number()))
}

/// A 2.05 with the representation, or 2.03 Valid when the client already holds it (one of its
/// ETags matches, RFC 7252 §5.10.6.2).
fn content_response(
    rep: &Value,
    format: ContentFormat,
    req: &Request,
) -> Result<Response, Response> {
    let (payload, cf) = encode_rep(rep, format)?;
    let etag = etag_of(&payload, cf);
    if req.etags.iter().any(|e| e == &etag) {
        let mut r = Response::new(ResponseType::Valid);
        r.etag = Some(etag);
        return Ok(r);
    }
    let mut r = Response::new(ResponseType::Content);
    r.content_format = Some(cf);
    r.etag = Some(etag);
    r.payload = payload;
    Ok(r)
}

/// An entity tag for a representation: FNV-1a (64 bit) over the content-format and the bytes.
/// Cheap, stable across restarts, and changes whenever the representation does.
pub fn etag_of(payload: &[u8], cf: u16) -> Vec<u8> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in cf.to_be_bytes().iter().chain(payload) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.to_be_bytes().to_vec()
}

/// Decodes the body of an update into properties. Common properties are read-only.
pub(crate) fn decode_update(req: &Request) -> Result<Props, Response> {
    if req.payload.is_empty() {
        return Err(Response::error(
            ResponseType::BadRequest,
            "update needs a body",
        ));
    }
    let format = req
        .content_format
        .and_then(ContentFormat::from_number)
        .unwrap_or(ContentFormat::OcfCbor);
    let value = decode_payload(format, &req.payload)
        .map_err(|e| Response::error(ResponseType::BadRequest, &e.0))?;
    let Value::Map(entries) = value else {
        return Err(Response::error(
            ResponseType::BadRequest,
            "body is not a map",
        ));
    };
    let mut props = Props::new();
    for (k, v) in entries {
        let Value::Text(k) = k else {
            return Err(Response::error(
                ResponseType::BadRequest,
                "property name is not text",
            ));
        };
        // Common properties are read-only, except the device name on /oic/con, whose job is
        // to set it (OCF Core §11.3.4).
        let writable_name = k == "n" && req.path == CONFIGURATION_HREF;
        if matches!(k.as_str(), "rt" | "if" | "n" | "id") && !writable_name {
            return Err(Response::error(
                ResponseType::BadRequest,
                &format!("property {k:?} is read-only"),
            ));
        }
        if props.insert(k.clone(), v).is_some() {
            return Err(Response::error(
                ResponseType::BadRequest,
                &format!("property {k:?} appears twice"),
            ));
        }
    }
    Ok(props)
}
