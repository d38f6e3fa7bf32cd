//! `/oic/sec/acl2` (rt `oic.r.acl2`): access control entries, and the access decision for every
//! request the device serves ([`evaluate`]).
//!
//! # ACEs (`aclist2`, OCF-PROTOCOL.md §8.5)
//!
//! `{"aceid": n?, "subject": S, "resources": [R…], "permission": bits}` where
//!
//! - `S` is `{"uuid": "<uuid>"}` (an authenticated peer whose certificate CN is `uuid:<uuid>`,
//!   e.g. the cloud's `sid`), `{"conntype": "auth-crypt"}` (any authenticated peer on the secure
//!   endpoint), `{"conntype": "anon-clear"}` (anyone), or `{"authority"?, "role"}` (stored and
//!   shown, but never matches: this device has no role credentials);
//! - `R` is `{"href": "/path"}` or `{"wc": "*" | "+" | "-"}`, each with an optional `"if"`
//!   array (`["*"]` or absent = every interface; else the request's interface must be listed);
//!   `*` = every non-configuration resource, `+` = those on the secure endpoint (requests over
//!   TLS), `-` = those on an unsecured endpoint (requests in the clear). `rt` matching is not
//!   supported and refused (silently ignoring it would widen the ACE);
//! - `permission`: 1 C(reate), 2 R(etrieve), 4 U(pdate), 8 D(elete), 16 N(otify); 31 = all.
//!
//! POST `{"aclist2":[…], "rowneruuid"?}` adds ACEs (an existing `aceid` is replaced; new ones get
//! the next free id); the whole body is checked first, any fault → 4.00. DELETE `?aceid=<n>`
//! removes one, DELETE without a query removes all. Several matching ACEs add up (their
//! permissions are OR-ed).
//!
//! # The default access policy ([`evaluate`])
//!
//! Configuration resources ("SVRs" here): everything under `/oic/sec/`, CoAPCloudConf (either
//! capitalisation) and `/oic/mnt` ([`is_svr_href`]). In order:
//!
//! 1. `/oic/res` (discovery): anyone, any transport, any state (it is read-only anyway).
//! 2. `/oic/sec/otm` (the ownership transfer): anyone on the secure endpoint while the device
//!    is in RFOTM; nobody in any other state (a second Mediator cannot take an owned device).
//! 3. A Device Ownership Connection ([`super::doc`]) in RFOTM: the SVRs, `/oic/d` and
//!    `/oic/p`. The owner (its client certificate's key is the one recorded at ownership
//!    transfer, or it holds the owner PSK): everything, on the secure endpoint, in RFPRO,
//!    RFNOP and SRESET (and in RFOTM, to finish a standard transfer). The owner could grant
//!    itself any ACE, so giving it everything adds no power and keeps the Mediator and
//!    `coap-client` usable without provisioning ACEs for the owner.
//! 4. Reads (GET, observe) of `/oic/d`, `/oic/p` and `/oic/sec/doxm`: anyone on the secure
//!    endpoint, in every state (a Mediator reads them before owning the device).
//! 5. In RFOTM and RESET nothing else is reachable: only 1, 2 and 4 above.
//! 6. SVRs, for anyone but the owner: only an ACE that names the href explicitly (wildcards
//!    never cover them, as in plgd: the cloud's ACE lists `/oic/mnt` by href), whose subject is
//!    an authenticated peer (`uuid` or `auth-crypt`; `anon-clear` never opens an SVR), with the
//!    permission bits of the method, over the secure endpoint.
//! 7. Other resources (sensors, actuators): only in RFNOP (`isop`), and only through ACEs the
//!    owner provisioned (href or wildcard; subject, permission bits and interface must match).
//!    Nothing is open by default: without an ACE, a cloud or a local client gets nothing.
//!
//! Method → permission: GET → R, GET with Observe=0 → R+N, POST → U (C with
//! `?if=oic.if.create`), PUT → C, DELETE → D.
//!
//! Refusals ([`DenyReason::code`]): no matching ACE or an unsecured endpoint → 4.01 Unauthorized
//! (what iotivity-lite answers, OCF-PROTOCOL.md §6.4); a refusal because of the device state
//! (not owned yet, already owned, not operational) → 4.03 Forbidden, since other credentials
//! would not help.

use std::fmt;

use coap_lite::ResponseType;
use serde::{Deserialize, Serialize};

use super::pstat::DosState;
use super::util::{
    as_array, as_text, as_uint, bad, echo, map, only_keys, only_props, parse_uuid, text, text_map,
    uint, NIL_UUID,
};
use super::{DEVICE_HREF, DOXM_HREF, MNT_HREF, OTM_HREF, PLATFORM_HREF, RES_HREF};
use crate::resource::{Method, Props, Request, ResourceError, Response, Value};

/// Permission bit C(reate).
pub const PERM_CREATE: u8 = 1;
/// Permission bit R(etrieve).
pub const PERM_READ: u8 = 2;
/// Permission bit U(pdate).
pub const PERM_UPDATE: u8 = 4;
/// Permission bit D(elete).
pub const PERM_DELETE: u8 = 8;
/// Permission bit N(otify).
pub const PERM_NOTIFY: u8 = 16;
/// All five bits.
pub const PERM_ALL: u8 = 31;

/// Most ACEs the list holds.
pub const MAX_ACES: usize = 32;
/// Most resource entries in one ACE.
pub const MAX_RESOURCES_PER_ACE: usize = 16;
/// Longest href in an ACE.
pub const MAX_HREF_LEN: usize = 256;
/// Largest `aceid`.
pub const MAX_ACEID: u32 = 0xFFFF;

/// Whether `href` is a security or configuration resource: `/oic/sec/*`, CoAPCloudConf
/// (`/CoapCloudConfResURI` in any capitalisation) or `/oic/mnt`. Wildcard ACEs never cover
/// these.
pub fn is_svr_href(href: &str) -> bool {
    href.starts_with("/oic/sec/")
        || href == MNT_HREF
        || href.eq_ignore_ascii_case(crate::cloud::resource::HREF)
}

/// `conntype` of an ACE subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnType {
    /// `auth-crypt`: an authenticated peer over an encrypted connection.
    AuthCrypt,
    /// `anon-clear`: anyone.
    AnonClear,
}

impl ConnType {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnType::AuthCrypt => "auth-crypt",
            ConnType::AnonClear => "anon-clear",
        }
    }
}

/// An ACE's subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Subject {
    /// `{"uuid"}`: one authenticated peer (lower-case UUID).
    Uuid(String),
    /// `{"conntype"}`.
    ConnType(ConnType),
    /// `{"authority"?, "role"}`: kept, never matches (no role credentials here).
    Role {
        authority: Option<String>,
        role: String,
    },
}

/// Wildcard resource entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Wildcard {
    /// `*`: every non-configuration resource.
    All,
    /// `+`: non-configuration resources on the secure endpoint.
    Secure,
    /// `-`: non-configuration resources on an unsecured endpoint.
    Insecure,
}

impl Wildcard {
    pub fn as_str(self) -> &'static str {
        match self {
            Wildcard::All => "*",
            Wildcard::Secure => "+",
            Wildcard::Insecure => "-",
        }
    }
}

/// What a resource entry of an ACE names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResourceMatch {
    Href(String),
    Wildcard(Wildcard),
}

/// One entry of an ACE's `resources`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AceResource {
    pub target: ResourceMatch,
    /// `if`: `None` = not given (every interface).
    pub interfaces: Option<Vec<String>>,
}

/// An access control entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ace {
    pub aceid: u32,
    pub subject: Subject,
    pub resources: Vec<AceResource>,
    pub permission: u8,
}

/// Who sends a request, as the daemon established it from the connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Requester {
    /// The peer's UUID (certificate CN `uuid:<…>`), only when `authenticated`.
    pub uuid: Option<String>,
    /// Mutual TLS with a client certificate that chains to one of our trust anchors, or that is
    /// the owner's.
    pub authenticated: bool,
    /// The request came over TLS (coaps+tcp), not in the clear.
    pub secure_transport: bool,
    /// The peer is the owner (its certificate key, or the owner PSK).
    pub is_owner: bool,
    /// The session is a Device Ownership Connection ([`super::doc`]).
    pub doc: bool,
}

impl Requester {
    /// A peer in the clear (UDP discovery, the development coap+tcp listener).
    pub fn anonymous_clear() -> Requester {
        Requester::default()
    }
}

/// What a request does, in permission terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Retrieve,
    Update,
    Delete,
    /// GET with Observe = 0 (retrieve + notify).
    Observe,
}

impl Operation {
    /// The operation of a request: GET → Retrieve (Observe=0 → Observe), POST → Update (with
    /// `?if=oic.if.create` → Create), PUT → Create, DELETE → Delete.
    pub fn of(req: &Request) -> Operation {
        match req.method {
            Method::Get if req.observe == Some(0) => Operation::Observe,
            Method::Get => Operation::Retrieve,
            Method::Post if req.query_value("if") == Some("oic.if.create") => Operation::Create,
            Method::Post => Operation::Update,
            Method::Put => Operation::Create,
            Method::Delete => Operation::Delete,
        }
    }

    /// The permission bits it needs.
    pub fn required(self) -> u8 {
        match self {
            Operation::Create => PERM_CREATE,
            Operation::Retrieve => PERM_READ,
            Operation::Update => PERM_UPDATE,
            Operation::Delete => PERM_DELETE,
            Operation::Observe => PERM_READ | PERM_NOTIFY,
        }
    }

    fn is_read(self) -> bool {
        matches!(self, Operation::Retrieve | Operation::Observe)
    }
}

/// The resource a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    pub href: &'a str,
    /// A security/configuration resource (wildcards do not cover it).
    pub svr: bool,
    /// The interface the request uses (its `?if=` or the resource's default). `None`: only
    /// ACE entries without an interface restriction match.
    pub interface: Option<&'a str>,
}

impl<'a> Target<'a> {
    /// `href` with `svr` from [`is_svr_href`] and no interface.
    pub fn new(href: &'a str) -> Target<'a> {
        Target {
            href,
            svr: is_svr_href(href),
            interface: None,
        }
    }

    pub fn with_interface(mut self, interface: &'a str) -> Target<'a> {
        self.interface = Some(interface);
        self
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// Only `/oic/res` is served in the clear unless an ACE says otherwise.
    InsecureTransport,
    /// No ACE grants the method's permission to this requester (or an anonymous requester asked
    /// for a configuration resource).
    NoMatchingAce,
    /// The device is in RFOTM/RESET: only onboarding resources are reachable.
    NotOwned,
    /// The ownership transfer is only open in RFOTM.
    AlreadyOwned,
    /// Application resources are only served in RFNOP.
    NotOperational,
}

impl DenyReason {
    /// The CoAP response code: 4.01 for missing permission, 4.03 for the device's state.
    pub fn code(self) -> ResponseType {
        match self {
            DenyReason::InsecureTransport | DenyReason::NoMatchingAce => ResponseType::Unauthorized,
            DenyReason::NotOwned | DenyReason::AlreadyOwned | DenyReason::NotOperational => {
                ResponseType::Forbidden
            }
        }
    }

    /// The error response to send.
    pub fn response(self) -> Response {
        Response::error(self.code(), &self.to_string())
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DenyReason::InsecureTransport => "this resource is only served on the secure endpoint",
            DenyReason::NoMatchingAce => "no access control entry allows this request",
            DenyReason::NotOwned => {
                "the device is not owned yet: only discovery, /oic/d, /oic/p, /oic/sec/doxm and \
                 the ownership transfer are reachable"
            }
            DenyReason::AlreadyOwned => "the device is already owned",
            DenyReason::NotOperational => {
                "the device is not in normal operation (RFNOP): only configuration resources are \
                 reachable"
            }
        })
    }
}

/// An access decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(DenyReason),
}

impl Decision {
    pub fn is_allowed(self) -> bool {
        self == Decision::Allow
    }

    /// `None` when allowed, else the refusal to send.
    pub fn denial(self) -> Option<Response> {
        match self {
            Decision::Allow => None,
            Decision::Deny(r) => Some(r.response()),
        }
    }
}

/// The access decision (see the module docs for the policy).
pub fn evaluate(
    state: DosState,
    acl: &Acl,
    req: &Requester,
    target: &Target<'_>,
    op: Operation,
) -> Decision {
    use Decision::{Allow, Deny};
    let owned_state = matches!(state, DosState::Rfpro | DosState::Rfnop | DosState::Sreset);
    if target.href == RES_HREF {
        if op == Operation::Observe && target.interface == Some(BATCH_INTERFACE) {
            return batch_observation(state, owned_state, acl, req, target);
        }
        return Allow;
    }
    if target.href == OTM_HREF {
        return if !req.secure_transport {
            Deny(DenyReason::InsecureTransport)
        } else if state == DosState::Rfotm {
            Allow
        } else {
            Deny(DenyReason::AlreadyOwned)
        };
    }
    if req.doc && req.secure_transport && state == DosState::Rfotm {
        return if target.svr || [DEVICE_HREF, PLATFORM_HREF].contains(&target.href) {
            Allow
        } else {
            Deny(DenyReason::NotOwned)
        };
    }
    // In RFOTM, an owner exists only between `owned = true` and the move to RFPRO of a
    // standard ownership transfer, which it may finish.
    if req.is_owner && req.secure_transport && (owned_state || state == DosState::Rfotm) {
        return Allow;
    }
    if req.secure_transport
        && op.is_read()
        && [DEVICE_HREF, PLATFORM_HREF, DOXM_HREF].contains(&target.href)
    {
        return Allow;
    }
    if !owned_state {
        return Deny(if req.secure_transport {
            DenyReason::NotOwned
        } else {
            DenyReason::InsecureTransport
        });
    }
    if target.svr {
        if !req.secure_transport {
            return Deny(DenyReason::InsecureTransport);
        }
        let granted = acl.granted(req, target, true);
        return if granted & op.required() == op.required() {
            Allow
        } else {
            Deny(DenyReason::NoMatchingAce)
        };
    }
    if state != DosState::Rfnop {
        return Deny(DenyReason::NotOperational);
    }
    let granted = acl.granted(req, target, false);
    if granted & op.required() == op.required() {
        Allow
    } else if !req.secure_transport {
        Deny(DenyReason::InsecureTransport)
    } else {
        Deny(DenyReason::NoMatchingAce)
    }
}

/// The batch interface of `/oic/res`, whose answers carry representations.
const BATCH_INTERFACE: &str = "oic.if.b";

/// Observing `/oic/res` in its batch form: every change to any resource then costs a full
/// batch rendering for this observer, so it is not open to anyone as discovery is. It takes
/// the owner, or R+N granted by an ACE (wildcards count: the cloud's `*` ACE grants it) in
/// RFNOP; an anonymous peer gets it only where the owner granted `anon-clear` R+N.
fn batch_observation(
    state: DosState,
    owned_state: bool,
    acl: &Acl,
    req: &Requester,
    target: &Target<'_>,
) -> Decision {
    let required = Operation::Observe.required();
    let owner = req.is_owner && req.secure_transport && owned_state;
    let granted =
        state == DosState::Rfnop && acl.granted(req, target, false) & required == required;
    if owner || granted {
        Decision::Allow
    } else if !req.secure_transport {
        Decision::Deny(DenyReason::InsecureTransport)
    } else {
        Decision::Deny(DenyReason::NoMatchingAce)
    }
}

fn subject_matches(subject: &Subject, req: &Requester, svr: bool) -> bool {
    let authenticated = req.authenticated && req.secure_transport;
    match subject {
        Subject::Uuid(u) => {
            authenticated
                && req
                    .uuid
                    .as_deref()
                    .is_some_and(|x| x.eq_ignore_ascii_case(u))
        }
        Subject::ConnType(ConnType::AuthCrypt) => authenticated,
        Subject::ConnType(ConnType::AnonClear) => !svr,
        Subject::Role { .. } => false,
    }
}

fn resource_matches(r: &AceResource, req: &Requester, target: &Target<'_>, explicit: bool) -> bool {
    let interface_ok = match &r.interfaces {
        None => true,
        Some(list) => {
            list.iter().any(|i| i == "*")
                || target
                    .interface
                    .is_some_and(|t| list.iter().any(|i| i == t))
        }
    };
    interface_ok
        && match &r.target {
            ResourceMatch::Href(h) => h == target.href,
            ResourceMatch::Wildcard(_) if explicit || target.svr => false,
            ResourceMatch::Wildcard(Wildcard::All) => true,
            ResourceMatch::Wildcard(Wildcard::Secure) => req.secure_transport,
            ResourceMatch::Wildcard(Wildcard::Insecure) => !req.secure_transport,
        }
}

/// The access control list.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Acl {
    aces: Vec<Ace>,
    /// `rowneruuid`.
    pub rowneruuid: String,
}

impl Acl {
    /// An empty list.
    pub fn new() -> Acl {
        Acl {
            aces: Vec::new(),
            rowneruuid: NIL_UUID.to_owned(),
        }
    }

    pub fn aces(&self) -> &[Ace] {
        &self.aces
    }

    /// The union of the permissions of every ACE that matches the requester and the target.
    /// `explicit_only`: wildcard entries do not count (for configuration resources).
    pub fn granted(&self, req: &Requester, target: &Target<'_>, explicit_only: bool) -> u8 {
        self.aces
            .iter()
            .filter(|a| subject_matches(&a.subject, req, target.svr))
            .filter(|a| {
                a.resources
                    .iter()
                    .any(|r| resource_matches(r, req, target, explicit_only))
            })
            .fold(0, |acc, a| acc | a.permission)
    }

    /// Adds an ACE (an existing `aceid` replaces that ACE; `None` takes the next free id).
    /// Returns its id.
    pub fn add(
        &mut self,
        aceid: Option<u32>,
        subject: Subject,
        resources: Vec<AceResource>,
        permission: u8,
    ) -> Result<u32, ResourceError> {
        let replacing = aceid.is_some_and(|id| self.aces.iter().any(|a| a.aceid == id));
        if !replacing && self.aces.len() >= MAX_ACES {
            return Err(bad(format!(
                "the access control list is full ({MAX_ACES} entries)"
            )));
        }
        let aceid = match aceid {
            Some(id) => id,
            None => self.next_id()?,
        };
        self.aces.retain(|a| a.aceid != aceid);
        self.aces.push(Ace {
            aceid,
            subject,
            resources,
            permission: permission & PERM_ALL,
        });
        Ok(aceid)
    }

    fn next_id(&self) -> Result<u32, ResourceError> {
        let max = self.aces.iter().map(|a| a.aceid).max().unwrap_or(0);
        if max < MAX_ACEID {
            return Ok(max + 1);
        }
        (1..=MAX_ACEID)
            .find(|id| !self.aces.iter().any(|a| a.aceid == *id))
            .ok_or_else(|| bad("no free aceid"))
    }

    /// Removes one ACE; whether it existed.
    pub fn remove(&mut self, aceid: u32) -> bool {
        let before = self.aces.len();
        self.aces.retain(|a| a.aceid != aceid);
        self.aces.len() != before
    }

    pub fn clear(&mut self) {
        self.aces.clear();
    }

    /// Applies a POST body: all of it or, on any fault, nothing. Returns the ids stored.
    pub fn apply_update(&mut self, props: &Props) -> Result<Vec<u32>, ResourceError> {
        only_props(props, &["aclist2", "rowneruuid"], "/oic/sec/acl2")?;
        let rowner = match props.get("rowneruuid") {
            Some(v) => Some(parse_uuid(as_text(v, "rowneruuid")?, "rowneruuid")?),
            None => None,
        };
        let items = match props.get("aclist2") {
            Some(v) => as_array(v, "aclist2")?,
            None if rowner.is_some() => &[],
            None => return Err(bad("`aclist2` is required")),
        };
        if items.len() > MAX_ACES {
            return Err(bad(format!("more than {MAX_ACES} ACEs in one update")));
        }
        let parsed = items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                parse_ace(v).map_err(|e| match e {
                    ResourceError::BadRequest(s) => bad(format!("aclist2[{i}]: {s}")),
                    other => other,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut next = self.clone();
        let ids = parsed
            .into_iter()
            .map(|(id, subject, resources, perm)| next.add(id, subject, resources, perm))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(r) = rowner {
            next.rowneruuid = r;
        }
        *self = next;
        Ok(ids)
    }

    /// DELETE with the request's query: `aceid=<n>` removes that ACE (unknown → `Ok(0)`,
    /// answered 4.04 by the caller), no query removes all; other queries → 4.00. Returns how
    /// many were removed.
    pub fn delete(&mut self, query: &[(String, String)]) -> Result<usize, ResourceError> {
        match query {
            [] => {
                let n = self.aces.len();
                self.clear();
                Ok(n)
            }
            [(k, v)] if k == "aceid" => {
                let id: u32 = v
                    .parse()
                    .map_err(|_| bad(format!("`aceid` must be a number, got {:?}", echo(v))))?;
                Ok(usize::from(self.remove(id)))
            }
            _ => Err(bad("DELETE /oic/sec/acl2 takes `?aceid=<n>` or no query")),
        }
    }

    /// The properties for GET.
    pub fn representation(&self) -> Props {
        let mut p = Props::new();
        p.insert(
            "aclist2".into(),
            Value::Array(self.aces.iter().map(ace_value).collect()),
        );
        p.insert("rowneruuid".into(), text(&self.rowneruuid));
        p
    }
}

fn ace_value(a: &Ace) -> Value {
    let subject = match &a.subject {
        Subject::Uuid(u) => map(vec![("uuid", text(u))]),
        Subject::ConnType(c) => map(vec![("conntype", text(c.as_str()))]),
        Subject::Role { authority, role } => {
            let mut m = Vec::new();
            if let Some(auth) = authority {
                m.push(("authority", text(auth)));
            }
            m.push(("role", text(role)));
            map(m)
        }
    };
    let resources = a
        .resources
        .iter()
        .map(|r| {
            let mut m = vec![match &r.target {
                ResourceMatch::Href(h) => ("href", text(h)),
                ResourceMatch::Wildcard(w) => ("wc", text(w.as_str())),
            }];
            if let Some(list) = &r.interfaces {
                m.push(("if", Value::Array(list.iter().map(|i| text(i)).collect())));
            }
            map(m)
        })
        .collect();
    map(vec![
        ("aceid", uint(a.aceid.into())),
        ("subject", subject),
        ("resources", Value::Array(resources)),
        ("permission", uint(a.permission.into())),
    ])
}

type ParsedAce = (Option<u32>, Subject, Vec<AceResource>, u8);

fn parse_ace(v: &Value) -> Result<ParsedAce, ResourceError> {
    let entries = text_map(v, "ACE")?;
    if entries.iter().any(|(k, _)| *k == "validity") {
        return Err(bad("`validity` (time-limited ACEs) is not supported"));
    }
    only_keys(
        entries.iter().map(|(k, _)| *k),
        &["aceid", "subject", "resources", "permission"],
        "an ACE",
    )?;
    let get = |key: &str| entries.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let aceid = match get("aceid") {
        Some(v) => match as_uint(v, "aceid", MAX_ACEID.into())? {
            0 => return Err(bad(format!("`aceid` must be between 1 and {MAX_ACEID}"))),
            n => Some(n as u32),
        },
        None => None,
    };
    let subject = parse_subject(get("subject").ok_or_else(|| bad("`subject` is required"))?)?;
    let items = as_array(
        get("resources").ok_or_else(|| bad("`resources` is required"))?,
        "resources",
    )?;
    if items.is_empty() || items.len() > MAX_RESOURCES_PER_ACE {
        return Err(bad(format!(
            "`resources` must have 1 to {MAX_RESOURCES_PER_ACE} entries"
        )));
    }
    let resources = items
        .iter()
        .map(parse_resource)
        .collect::<Result<Vec<_>, _>>()?;
    let permission = as_uint(
        get("permission").ok_or_else(|| bad("`permission` is required"))?,
        "permission",
        PERM_ALL.into(),
    )? as u8;
    Ok((aceid, subject, resources, permission))
}

fn parse_subject(v: &Value) -> Result<Subject, ResourceError> {
    let entries = text_map(v, "subject")?;
    let get = |key: &str| entries.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let keys: Vec<&str> = entries.iter().map(|(k, _)| *k).collect();
    match keys.as_slice() {
        ["uuid"] => {
            let u = as_text(get("uuid").unwrap_or(&Value::Null), "subject.uuid")?;
            Ok(Subject::Uuid(parse_uuid(u, "subject.uuid")?))
        }
        ["conntype"] => match as_text(get("conntype").unwrap_or(&Value::Null), "subject.conntype")?
        {
            "auth-crypt" => Ok(Subject::ConnType(ConnType::AuthCrypt)),
            "anon-clear" => Ok(Subject::ConnType(ConnType::AnonClear)),
            other => Err(bad(format!(
                "`subject.conntype` must be auth-crypt or anon-clear, got {:?}",
                echo(other)
            ))),
        },
        _ if keys.contains(&"role") => {
            only_keys(keys.iter().copied(), &["authority", "role"], "subject")?;
            let role = as_text(get("role").unwrap_or(&Value::Null), "subject.role")?;
            let authority = get("authority")
                .map(|a| as_text(a, "subject.authority"))
                .transpose()?;
            if role.is_empty() || role.len() > 64 || authority.is_some_and(|a| a.len() > 64) {
                return Err(bad(
                    "`subject.role` must be 1 to 64 bytes, `authority` at most 64",
                ));
            }
            Ok(Subject::Role {
                authority: authority.map(str::to_owned),
                role: role.to_owned(),
            })
        }
        _ => Err(bad(
            "`subject` must be {\"uuid\"}, {\"conntype\"} or {\"authority\", \"role\"}",
        )),
    }
}

fn parse_resource(v: &Value) -> Result<AceResource, ResourceError> {
    let entries = text_map(v, "resources entry")?;
    if entries.iter().any(|(k, _)| *k == "rt") {
        return Err(bad(
            "matching resources by `rt` is not supported; use `href` or `wc`",
        ));
    }
    only_keys(
        entries.iter().map(|(k, _)| *k),
        &["href", "wc", "if"],
        "a resources entry",
    )?;
    let get = |key: &str| entries.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let target = match (get("href"), get("wc")) {
        (Some(h), None) => {
            let h = as_text(h, "href")?;
            if !h.starts_with('/') || h.len() > MAX_HREF_LEN {
                return Err(bad(format!(
                    "`href` must start with '/' and have at most {MAX_HREF_LEN} bytes"
                )));
            }
            ResourceMatch::Href(h.to_owned())
        }
        (None, Some(w)) => ResourceMatch::Wildcard(match as_text(w, "wc")? {
            "*" => Wildcard::All,
            "+" => Wildcard::Secure,
            "-" => Wildcard::Insecure,
            other => {
                return Err(bad(format!(
                    "`wc` must be *, + or -, got {:?}",
                    echo(other)
                )))
            }
        }),
        _ => {
            return Err(bad(
                "a resources entry needs exactly one of `href` and `wc`",
            ))
        }
    };
    let interfaces = match get("if") {
        None => None,
        Some(v) => {
            let items = as_array(v, "if")?;
            if items.len() > 16 {
                return Err(bad("`if` has more than 16 entries"));
            }
            Some(
                items
                    .iter()
                    .map(|i| as_text(i, "if").map(|s| s.chars().take(64).collect()))
                    .collect::<Result<Vec<String>, _>>()?,
            )
        }
    };
    Ok(AceResource { target, interfaces })
}

#[cfg(test)]
mod tests {
    use super::*;
    use DosState::*;

    const SID: &str = "cccccccc-0000-0000-0000-000000000003";
    const OTHER: &str = "dddddddd-0000-0000-0000-000000000004";

    fn cloud(uuid: &str) -> Requester {
        Requester {
            uuid: Some(uuid.into()),
            authenticated: true,
            secure_transport: true,
            is_owner: false,
            doc: false,
        }
    }

    fn owner() -> Requester {
        Requester {
            is_owner: true,
            ..cloud("11111111-2222-3333-4444-555555555555")
        }
    }

    fn anon_tls() -> Requester {
        Requester {
            secure_transport: true,
            ..Requester::default()
        }
    }

    fn body(aces: Value) -> Props {
        let mut p = Props::new();
        p.insert("aclist2".into(), aces);
        p
    }

    /// The ACE plgd provisions for the cloud (OCF-PROTOCOL.md §8.5 step 5).
    fn cloud_acl() -> Acl {
        let mut acl = Acl::new();
        acl.apply_update(&body(Value::Array(vec![map(vec![
            ("subject", map(vec![("uuid", text(SID))])),
            ("permission", uint(31)),
            (
                "resources",
                Value::Array(vec![
                    map(vec![
                        ("wc", text("*")),
                        ("if", Value::Array(vec![text("*")])),
                    ]),
                    map(vec![
                        ("href", text("/oic/mnt")),
                        ("if", Value::Array(vec![text("*")])),
                    ]),
                ]),
            ),
        ])])))
        .unwrap();
        acl
    }

    fn ace(subject: Value, resources: Vec<Value>, permission: u64) -> Value {
        map(vec![
            ("subject", subject),
            ("resources", Value::Array(resources)),
            ("permission", uint(permission)),
        ])
    }

    fn eval(state: DosState, acl: &Acl, req: &Requester, href: &str, op: Operation) -> Decision {
        evaluate(state, acl, req, &Target::new(href), op)
    }

    use Operation::*;
    const ALL_OPS: [Operation; 5] = [Create, Retrieve, Update, Delete, Observe];
    const CCONF: &str = "/CoapCloudConfResURI";

    #[test]
    fn svr_classification() {
        for h in [
            "/oic/sec/cred",
            "/oic/sec/acl2",
            "/oic/mnt",
            CCONF,
            "/CoapCloudConfResURI",
        ] {
            assert!(is_svr_href(h), "{h}");
        }
        for h in ["/oic/res", "/oic/d", "/light/1", "/oic/mntx", "/oic/secx"] {
            assert!(!is_svr_href(h), "{h}");
        }
    }

    #[test]
    fn discovery_is_open_to_everyone_in_every_state() {
        let acl = Acl::new();
        for state in DosState::ALL {
            for req in [Requester::anonymous_clear(), anon_tls(), cloud(SID)] {
                assert_eq!(eval(state, &acl, &req, RES_HREF, Retrieve), Decision::Allow);
                assert_eq!(eval(state, &acl, &req, RES_HREF, Observe), Decision::Allow);
            }
        }
    }

    #[test]
    fn batch_observation_of_discovery_needs_the_owner_or_an_ace() {
        let batch = Target::new(RES_HREF).with_interface("oic.if.b");
        let ev = |state, acl: &Acl, req: &Requester, op| evaluate(state, acl, req, &batch, op);
        let none = Acl::new();
        for state in DosState::ALL {
            // Reading the batch stays open (each item is filtered by its own ACL decision).
            assert!(ev(state, &none, &anon_tls(), Retrieve).is_allowed());
            assert_eq!(
                ev(state, &none, &anon_tls(), Observe),
                Decision::Deny(DenyReason::NoMatchingAce)
            );
            assert_eq!(
                ev(state, &none, &Requester::anonymous_clear(), Observe),
                Decision::Deny(DenyReason::InsecureTransport)
            );
        }
        for state in [Rfpro, Rfnop, Sreset] {
            assert!(ev(state, &none, &owner(), Observe).is_allowed());
        }
        assert!(!ev(Rfotm, &none, &owner(), Observe).is_allowed());
        // The cloud's wildcard ACE grants it in RFNOP; a peer without one does not get it.
        let acl = cloud_acl();
        assert!(ev(Rfnop, &acl, &cloud(SID), Observe).is_allowed());
        assert!(!ev(Rfpro, &acl, &cloud(SID), Observe).is_allowed());
        assert!(!ev(Rfnop, &acl, &cloud(OTHER), Observe).is_allowed());
        assert!(!ev(Rfnop, &acl, &anon_tls(), Observe).is_allowed());
        // The other forms are still observable by anyone (discovery).
        let ll = Target::new(RES_HREF).with_interface("oic.if.ll");
        assert!(evaluate(Rfnop, &none, &anon_tls(), &ll, Observe).is_allowed());
        // An owner who opens it to anyone with an anon-clear R+N ACE is obeyed.
        let mut open = Acl::new();
        open.apply_update(&body(Value::Array(vec![ace(
            map(vec![("conntype", text("anon-clear"))]),
            vec![map(vec![("wc", text("*"))])],
            18,
        )])))
        .unwrap();
        assert!(ev(Rfnop, &open, &anon_tls(), Observe).is_allowed());
    }

    #[test]
    fn rfotm_defaults() {
        let acl = Acl::new();
        let r = anon_tls();
        let allow = |href: &str, op| eval(Rfotm, &acl, &r, href, op);
        assert_eq!(allow(DEVICE_HREF, Retrieve), Decision::Allow);
        assert_eq!(allow(PLATFORM_HREF, Retrieve), Decision::Allow);
        assert_eq!(allow(DOXM_HREF, Retrieve), Decision::Allow);
        assert_eq!(allow(DOXM_HREF, Observe), Decision::Allow);
        assert_eq!(allow(OTM_HREF, Update), Decision::Allow);
        for (href, op) in [
            (DOXM_HREF, Update),
            (DEVICE_HREF, Update),
            ("/oic/sec/pstat", Retrieve),
            ("/oic/sec/cred", Update),
            ("/oic/sec/acl2", Update),
            ("/oic/sec/csr", Retrieve),
            (CCONF, Update),
            (CCONF, Retrieve),
            ("/oic/mnt", Update),
            ("/light/1", Retrieve),
        ] {
            assert_eq!(
                allow(href, op),
                Decision::Deny(DenyReason::NotOwned),
                "{href} {op:?}"
            );
        }
        // In the clear: discovery only.
        let clear = Requester::anonymous_clear();
        for href in [DEVICE_HREF, DOXM_HREF, OTM_HREF, "/light/1"] {
            assert_eq!(
                eval(Rfotm, &acl, &clear, href, Retrieve),
                Decision::Deny(DenyReason::InsecureTransport),
                "{href}"
            );
        }
        // Even an ACE (there should be none in RFOTM) opens nothing.
        let mut open = Acl::new();
        open.apply_update(&body(Value::Array(vec![ace(
            map(vec![("conntype", text("anon-clear"))]),
            vec![map(vec![("wc", text("*"))])],
            31,
        )])))
        .unwrap();
        assert!(!eval(Rfotm, &open, &r, "/light/1", Retrieve).is_allowed());
        assert_eq!(DenyReason::NotOwned.code(), ResponseType::Forbidden);
    }

    #[test]
    fn otm_is_closed_once_owned() {
        let acl = Acl::new();
        for state in [Reset, Rfpro, Rfnop, Sreset] {
            for req in [anon_tls(), owner()] {
                assert_eq!(
                    eval(state, &acl, &req, OTM_HREF, Update),
                    Decision::Deny(DenyReason::AlreadyOwned),
                    "{state}"
                );
            }
        }
    }

    #[test]
    fn owner_may_do_everything_once_owned() {
        let acl = Acl::new();
        for state in [Rfpro, Rfnop, Sreset] {
            for href in [
                "/oic/sec/cred",
                "/oic/sec/acl2",
                "/oic/sec/pstat",
                "/oic/sec/csr",
                CCONF,
                "/oic/mnt",
                "/light/1",
            ] {
                for op in ALL_OPS {
                    assert_eq!(
                        eval(state, &acl, &owner(), href, op),
                        Decision::Allow,
                        "{state} {href} {op:?}"
                    );
                }
            }
        }
        // But not over an unsecured connection (cannot happen with a certificate, but the
        // decision must not depend on that), and not in RESET.
        let clear_owner = Requester {
            secure_transport: false,
            ..owner()
        };
        assert!(!eval(Rfnop, &acl, &clear_owner, "/oic/sec/cred", Update).is_allowed());
        assert!(!eval(Reset, &acl, &owner(), "/oic/sec/cred", Update).is_allowed());
    }

    #[test]
    fn non_owner_cannot_touch_svrs_without_an_explicit_ace() {
        let acl = Acl::new();
        for href in [
            "/oic/sec/cred",
            "/oic/sec/acl2",
            "/oic/sec/pstat",
            CCONF,
            "/oic/mnt",
        ] {
            for req in [anon_tls(), cloud(OTHER)] {
                assert_eq!(
                    eval(Rfnop, &acl, &req, href, Update),
                    Decision::Deny(DenyReason::NoMatchingAce),
                    "{href}"
                );
            }
        }
        // doxm stays readable, not writable.
        assert!(eval(Rfnop, &acl, &anon_tls(), DOXM_HREF, Retrieve).is_allowed());
        assert!(!eval(Rfnop, &acl, &anon_tls(), DOXM_HREF, Update).is_allowed());
        assert_eq!(DenyReason::NoMatchingAce.code(), ResponseType::Unauthorized);
    }

    #[test]
    fn cloud_ace_with_uuid_subject() {
        let acl = cloud_acl();
        let c = cloud(SID);
        // Wildcard covers ordinary resources, every method.
        for op in ALL_OPS {
            assert_eq!(
                eval(Rfnop, &acl, &c, "/light/1", op),
                Decision::Allow,
                "{op:?}"
            );
        }
        // /oic/mnt is named explicitly: allowed.
        assert_eq!(eval(Rfnop, &acl, &c, "/oic/mnt", Update), Decision::Allow);
        // The wildcard does not cover other configuration resources.
        for href in [CCONF, "/oic/sec/cred", "/oic/sec/acl2", "/oic/sec/pstat"] {
            assert_eq!(
                eval(Rfnop, &acl, &c, href, Update),
                Decision::Deny(DenyReason::NoMatchingAce),
                "{href}"
            );
        }
        // Another peer, or the right UUID without authentication, gets nothing.
        assert!(!eval(Rfnop, &acl, &cloud(OTHER), "/light/1", Retrieve).is_allowed());
        let unauth = Requester {
            authenticated: false,
            ..cloud(SID)
        };
        assert!(!eval(Rfnop, &acl, &unauth, "/light/1", Retrieve).is_allowed());
        // UUIDs compare case-insensitively.
        assert!(eval(
            Rfnop,
            &acl,
            &cloud(&SID.to_uppercase()),
            "/light/1",
            Retrieve
        )
        .is_allowed());
        // Application resources only in RFNOP; /oic/mnt (an SVR) also in RFPRO.
        assert_eq!(
            eval(Rfpro, &acl, &c, "/light/1", Retrieve),
            Decision::Deny(DenyReason::NotOperational)
        );
        assert_eq!(eval(Rfpro, &acl, &c, "/oic/mnt", Update), Decision::Allow);
    }

    #[test]
    fn permission_bits_per_method() {
        for (perm, allowed) in [
            (PERM_CREATE, vec![Create]),
            (PERM_READ, vec![Retrieve]),
            (PERM_UPDATE, vec![Update]),
            (PERM_DELETE, vec![Delete]),
            (PERM_NOTIFY, vec![]),
            (PERM_READ | PERM_NOTIFY, vec![Retrieve, Observe]),
            (PERM_ALL, ALL_OPS.to_vec()),
        ] {
            let mut acl = Acl::new();
            acl.apply_update(&body(Value::Array(vec![ace(
                map(vec![("uuid", text(SID))]),
                vec![map(vec![("href", text("/light/1"))])],
                perm.into(),
            )])))
            .unwrap();
            for op in ALL_OPS {
                assert_eq!(
                    eval(Rfnop, &acl, &cloud(SID), "/light/1", op).is_allowed(),
                    allowed.contains(&op),
                    "perm {perm} {op:?}"
                );
            }
        }
    }

    #[test]
    fn permissions_of_matching_aces_add_up() {
        let mut acl = Acl::new();
        acl.apply_update(&body(Value::Array(vec![
            ace(
                map(vec![("uuid", text(SID))]),
                vec![map(vec![("wc", text("*"))])],
                2,
            ),
            ace(
                map(vec![("conntype", text("auth-crypt"))]),
                vec![map(vec![("href", text("/light/1"))])],
                16,
            ),
        ])))
        .unwrap();
        assert!(eval(Rfnop, &acl, &cloud(SID), "/light/1", Observe).is_allowed());
        assert!(!eval(Rfnop, &acl, &cloud(SID), "/light/2", Observe).is_allowed());
    }

    #[test]
    fn methods_map_to_operations() {
        let mut r = Request::new(Method::Get, "/x");
        assert_eq!(Operation::of(&r), Retrieve);
        r.observe = Some(0);
        assert_eq!(Operation::of(&r), Observe);
        r.observe = Some(1);
        assert_eq!(Operation::of(&r), Retrieve);
        let mut r = Request::new(Method::Post, "/x");
        assert_eq!(Operation::of(&r), Update);
        r.query.push(("if".into(), "oic.if.create".into()));
        assert_eq!(Operation::of(&r), Create);
        assert_eq!(Operation::of(&Request::new(Method::Put, "/x")), Create);
        assert_eq!(Operation::of(&Request::new(Method::Delete, "/x")), Delete);
        assert_eq!(Observe.required(), 18);
    }

    #[test]
    fn conntype_subjects() {
        let mut acl = Acl::new();
        acl.apply_update(&body(Value::Array(vec![
            ace(
                map(vec![("conntype", text("auth-crypt"))]),
                vec![map(vec![("wc", text("+"))])],
                6,
            ),
            ace(
                map(vec![("conntype", text("anon-clear"))]),
                vec![map(vec![("href", text("/light/public"))])],
                2,
            ),
            ace(
                map(vec![("conntype", text("anon-clear"))]),
                vec![map(vec![("href", text("/oic/mnt"))])],
                31,
            ),
        ])))
        .unwrap();
        let authed = cloud(OTHER);
        assert!(eval(Rfnop, &acl, &authed, "/light/1", Update).is_allowed());
        assert!(!eval(Rfnop, &acl, &anon_tls(), "/light/1", Retrieve).is_allowed());
        // anon-clear: anyone, also in the clear…
        for req in [anon_tls(), Requester::anonymous_clear(), authed.clone()] {
            assert!(eval(Rfnop, &acl, &req, "/light/public", Retrieve).is_allowed());
        }
        for req in [anon_tls(), Requester::anonymous_clear()] {
            assert!(!eval(Rfnop, &acl, &req, "/light/public", Update).is_allowed());
        }
        // …but never a configuration resource, even by explicit href.
        assert!(!eval(Rfnop, &acl, &anon_tls(), "/oic/mnt", Update).is_allowed());
        assert_eq!(
            eval(
                Rfnop,
                &acl,
                &Requester::anonymous_clear(),
                "/oic/mnt",
                Update
            ),
            Decision::Deny(DenyReason::InsecureTransport)
        );
        // Without an ACE, the clear text endpoint only serves discovery.
        assert_eq!(
            eval(
                Rfnop,
                &acl,
                &Requester::anonymous_clear(),
                "/light/1",
                Retrieve
            ),
            Decision::Deny(DenyReason::InsecureTransport)
        );
        assert_eq!(
            eval(
                Rfnop,
                &acl,
                &Requester::anonymous_clear(),
                DEVICE_HREF,
                Retrieve
            ),
            Decision::Deny(DenyReason::InsecureTransport)
        );
    }

    #[test]
    fn wildcards_by_transport_and_interfaces() {
        let mut acl = Acl::new();
        acl.apply_update(&body(Value::Array(vec![
            ace(
                map(vec![("conntype", text("anon-clear"))]),
                vec![map(vec![("wc", text("-"))])],
                2,
            ),
            ace(
                map(vec![("uuid", text(SID))]),
                vec![map(vec![
                    ("href", text("/light/1")),
                    ("if", Value::Array(vec![text("oic.if.a")])),
                ])],
                31,
            ),
        ])))
        .unwrap();
        assert!(eval(
            Rfnop,
            &acl,
            &Requester::anonymous_clear(),
            "/light/1",
            Retrieve
        )
        .is_allowed());
        assert!(!eval(Rfnop, &acl, &anon_tls(), "/light/1", Retrieve).is_allowed());
        let c = cloud(SID);
        let t = Target::new("/light/1");
        assert!(!evaluate(Rfnop, &acl, &c, &t, Update).is_allowed());
        assert!(evaluate(Rfnop, &acl, &c, &t.with_interface("oic.if.a"), Update).is_allowed());
        assert!(!evaluate(
            Rfnop,
            &acl,
            &c,
            &t.with_interface("oic.if.baseline"),
            Update
        )
        .is_allowed());
    }

    #[test]
    fn post_validates_and_delete_removes() {
        let mut acl = cloud_acl();
        assert_eq!(acl.aces().len(), 1);
        let rep = acl.representation();
        let Value::Array(list) = &rep["aclist2"] else {
            panic!()
        };
        assert_eq!(list.len(), 1);

        let bad_aces = [
            (
                ace(
                    map(vec![("uuid", text("nope"))]),
                    vec![map(vec![("wc", text("*"))])],
                    2,
                ),
                "UUID",
            ),
            (
                ace(
                    map(vec![("conntype", text("x"))]),
                    vec![map(vec![("wc", text("*"))])],
                    2,
                ),
                "conntype",
            ),
            (
                ace(map(vec![]), vec![map(vec![("wc", text("*"))])], 2),
                "subject",
            ),
            (ace(map(vec![("uuid", text(SID))]), vec![], 2), "resources"),
            (
                ace(
                    map(vec![("uuid", text(SID))]),
                    vec![map(vec![("wc", text("?"))])],
                    2,
                ),
                "wc",
            ),
            (
                ace(
                    map(vec![("uuid", text(SID))]),
                    vec![map(vec![("href", text("x"))])],
                    2,
                ),
                "href",
            ),
            (
                ace(
                    map(vec![("uuid", text(SID))]),
                    vec![map(vec![("href", text("/a")), ("wc", text("*"))])],
                    2,
                ),
                "exactly one",
            ),
            (
                ace(
                    map(vec![("uuid", text(SID))]),
                    vec![map(vec![("rt", Value::Array(vec![]))])],
                    2,
                ),
                "rt",
            ),
            (
                ace(
                    map(vec![("uuid", text(SID))]),
                    vec![map(vec![("wc", text("*"))])],
                    32,
                ),
                "permission",
            ),
            (
                map(vec![("subject", map(vec![("uuid", text(SID))]))]),
                "resources",
            ),
        ];
        for (a, want) in bad_aces {
            let before = acl.clone();
            let good = ace(
                map(vec![("uuid", text(OTHER))]),
                vec![map(vec![("wc", text("*"))])],
                2,
            );
            match acl.apply_update(&body(Value::Array(vec![good, a]))) {
                Err(ResourceError::BadRequest(m)) => {
                    assert!(
                        m.contains(want) && m.starts_with("aclist2[1]"),
                        "{m:?} / {want}"
                    )
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(acl, before, "nothing applied");
        }

        // Replace by aceid, then delete.
        let mut replacement = ace(
            map(vec![("uuid", text(OTHER))]),
            vec![map(vec![("wc", text("*"))])],
            2,
        );
        if let Value::Map(m) = &mut replacement {
            m.push((text("aceid"), uint(1)));
        }
        assert_eq!(
            acl.apply_update(&body(Value::Array(vec![replacement])))
                .unwrap(),
            vec![1]
        );
        assert_eq!(acl.aces()[0].subject, Subject::Uuid(OTHER.into()));
        let q = |v: &str| vec![("aceid".to_string(), v.to_string())];
        assert_eq!(acl.delete(&q("7")).unwrap(), 0);
        assert!(acl.delete(&q("x")).is_err());
        assert_eq!(acl.delete(&q("1")).unwrap(), 1);
        assert!(acl.aces().is_empty());
    }

    #[test]
    fn role_subjects_never_match() {
        let mut acl = Acl::new();
        acl.apply_update(&body(Value::Array(vec![ace(
            map(vec![("authority", text("x")), ("role", text("admin"))]),
            vec![map(vec![("wc", text("*"))])],
            31,
        )])))
        .unwrap();
        assert!(!eval(Rfnop, &acl, &cloud(SID), "/light/1", Retrieve).is_allowed());
    }

    #[test]
    fn the_list_is_bounded() {
        let mut acl = Acl::new();
        let one = || {
            ace(
                map(vec![("uuid", text(SID))]),
                vec![map(vec![("wc", text("*"))])],
                2,
            )
        };
        for _ in 0..MAX_ACES {
            acl.apply_update(&body(Value::Array(vec![one()]))).unwrap();
        }
        assert!(acl.apply_update(&body(Value::Array(vec![one()]))).is_err());
    }
}
