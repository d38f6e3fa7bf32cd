//! The CoAPCloudConf resource (OCF-PROTOCOL.md §4), sans-IO: its representation and its update
//! rules, on top of a [`CloudSession`].
//!
//! - **Representation** ([`representation`]): `cis`, `sid`, `apn`, `cps`, `clec` and, when set,
//!   `x.org.iotivity.servers`. `at` is write-only and never part of it (DESIGN.md §4). Without a
//!   configuration `cis` is `""` and `sid` the nil UUID (iotivity-lite shows a placeholder
//!   `coaps+tcp://127.0.0.1` instead; an empty `cis` says "no cloud" without pretending one).
//! - **Update** ([`apply_update`]), in the order of §4 "Update validation":
//!   - rule 2: a body with `cps` (or `clec`, equally read-only) → 4.00;
//!   - keys other than `cis`, `sid`, `apn`, `at`, `x.org.iotivity.servers` → 4.00 (the
//!     resource layer already refuses `rt`, `if`, `n`, `id`), and each value must have its type;
//!   - rule 3: `cis` present; `""` deregisters, anything else needs a non-empty `at` and a UUID
//!     `sid` ([`CloudConf::validate`]);
//!   - rule 1: while `registering` or `registered` only `{"cis":""}` is accepted
//!     ([`CloudSession::configure`]).
//!
//!   Every refusal is a [`ResourceError::BadRequest`] (4.00) whose text says what was wrong and
//!   never contains a submitted value (it could be the `at`). Success is answered by the
//!   resource layer with 2.04 and the full representation.
//!
//! The daemon's backend holds the session in a `RefCell` and calls these two functions; the
//! session's [`super::Action::Event(SessionEvent::StatusChanged)`] tells it when to notify observers.

use std::fmt;
use std::time::Instant;

use ciborium::Value;

use super::payload::{CloudConf, CloudServer, ConfError, Secret};
use super::session::CloudSession;
use crate::resource::{Interface, Policy, Props, ResourceError};

/// The href as the implementations spell it (iotivity-lite, plgd's device library and the
/// tools built on them hard-code it; the schema writes `/CoAPCloudConfResURI`, OCF-PROTOCOL.md
/// §4). Mediators that look it up by [`RT`] find it either way.
pub const HREF: &str = "/CoapCloudConfResURI";
/// The resource type.
pub const RT: &str = "oic.r.coapcloudconf";
/// Interfaces, default first: `oic.if.rw`, `oic.if.baseline` (§4).
pub const INTERFACES: [Interface; 2] = [Interface::ReadWrite, Interface::Baseline];
/// `sid` shown while no cloud is configured.
pub const NIL_UUID: &str = "00000000-0000-0000-0000-000000000000";

/// Discoverable and observable (§4: a change of `cps` or `clec` notifies observers).
pub fn policy() -> Policy {
    Policy::discoverable_observable()
}

const KEY_CIS: &str = "cis";
const KEY_SID: &str = "sid";
const KEY_APN: &str = "apn";
const KEY_AT: &str = "at";
const KEY_CPS: &str = "cps";
const KEY_CLEC: &str = "clec";
const KEY_SERVERS: &str = "x.org.iotivity.servers";

/// Longest property name echoed back in a diagnostic.
const MAX_ECHOED_KEY: usize = 48;

/// The properties of CoAPCloudConf (without the common `rt`/`if`, which the resource layer
/// adds). Never contains `at`.
pub fn representation(session: &CloudSession) -> Props {
    let conf = session.conf();
    let text = |s: &str| Value::Text(s.to_owned());
    let mut p = Props::new();
    p.insert(KEY_CIS.into(), text(conf.map_or("", |c| c.cis.as_str())));
    p.insert(
        KEY_SID.into(),
        text(conf.map_or(NIL_UUID, |c| c.sid.as_str())),
    );
    p.insert(KEY_APN.into(), text(conf.map_or("", |c| c.apn.as_str())));
    p.insert(KEY_CPS.into(), text(session.cps().as_str()));
    p.insert(
        KEY_CLEC.into(),
        Value::Integer(session.clec().as_u8().into()),
    );
    if let Some(servers) = conf.map(|c| &c.servers).filter(|s| !s.is_empty()) {
        p.insert(
            KEY_SERVERS.into(),
            Value::Array(
                servers
                    .iter()
                    .map(|s| {
                        Value::Map(vec![(text("uri"), text(&s.uri)), (text("id"), text(&s.id))])
                    })
                    .collect(),
            ),
        );
    }
    p
}

/// Why an update body was refused (all answered 4.00).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateError {
    /// The body sets a read-only property (`cps`, `clec`; rule 2).
    ReadOnly(&'static str),
    /// The body has a property CoAPCloudConf does not have.
    Unknown(String),
    /// A property has the wrong type.
    WrongType {
        /// The property.
        key: &'static str,
        /// What it must be.
        expected: &'static str,
    },
    /// `cis` is missing (rule 3).
    MissingCis,
    /// Refused by [`CloudConf::validate`] or [`CloudSession::configure`] (rules 1 and 3).
    Conf(ConfError),
}

impl fmt::Display for UpdateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReadOnly(k) => write!(f, "`{k}` is read-only"),
            Self::Unknown(k) => write!(f, "unknown property `{k}`"),
            Self::WrongType { key, expected } => write!(f, "`{key}` must be {expected}"),
            Self::MissingCis => f.write_str("`cis` is required"),
            Self::Conf(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for UpdateError {}

impl From<UpdateError> for ResourceError {
    fn from(e: UpdateError) -> Self {
        ResourceError::BadRequest(e.to_string())
    }
}

/// Decodes an update body into a configuration (rule 2, the key set and types, `cis`
/// present). The content rules (rule 3) are [`CloudConf::validate`]'s.
pub fn parse_update(props: &Props) -> Result<CloudConf, UpdateError> {
    for key in [KEY_CPS, KEY_CLEC] {
        if props.contains_key(key) {
            return Err(UpdateError::ReadOnly(key));
        }
    }
    if let Some(k) = props
        .keys()
        .find(|k| ![KEY_CIS, KEY_SID, KEY_APN, KEY_AT, KEY_SERVERS].contains(&k.as_str()))
    {
        return Err(UpdateError::Unknown(
            k.chars().take(MAX_ECHOED_KEY).collect(),
        ));
    }
    let text = |key: &'static str| -> Result<Option<String>, UpdateError> {
        match props.get(key) {
            None => Ok(None),
            Some(Value::Text(s)) => Ok(Some(s.clone())),
            Some(_) => Err(UpdateError::WrongType {
                key,
                expected: "a text string",
            }),
        }
    };
    let cis = text(KEY_CIS)?.ok_or(UpdateError::MissingCis)?;
    let sid = text(KEY_SID)?.unwrap_or_default();
    let apn = text(KEY_APN)?.unwrap_or_default();
    let at = Secret::new(text(KEY_AT)?.unwrap_or_default());
    let servers = match props.get(KEY_SERVERS) {
        None => Vec::new(),
        Some(v) => parse_servers(v)?,
    };
    Ok(CloudConf {
        cis,
        sid,
        apn,
        at,
        servers,
    })
}

fn parse_servers(v: &Value) -> Result<Vec<CloudServer>, UpdateError> {
    const WRONG: UpdateError = UpdateError::WrongType {
        key: KEY_SERVERS,
        expected: "an array of {\"uri\": text, \"id\": text}",
    };
    let Value::Array(items) = v else {
        return Err(WRONG);
    };
    items
        .iter()
        .map(|item| {
            let Value::Map(entries) = item else {
                return Err(WRONG);
            };
            let mut server = CloudServer::default();
            for (k, v) in entries {
                match (k, v) {
                    (Value::Text(k), Value::Text(v)) if k == "uri" => server.uri = v.clone(),
                    (Value::Text(k), Value::Text(v)) if k == "id" => server.id = v.clone(),
                    _ => return Err(WRONG),
                }
            }
            Ok(server)
        })
        .collect()
}

/// Applies a POST to CoAPCloudConf: decodes and checks the body, then hands it to
/// [`CloudSession::configure`] (which deregisters on `{"cis":""}`). On `Ok` the resource layer
/// answers 2.04 with [`representation`]; the caller must then let the session's driver run
/// (drain [`CloudSession::poll_action`]).
pub fn apply_update(
    session: &mut CloudSession,
    props: &Props,
    now: Instant,
) -> Result<(), UpdateError> {
    let conf = parse_update(props)?;
    session.configure(conf, now).map_err(UpdateError::Conf)
}

/// The session CoAPCloudConf reads and writes, shared with whoever drives the session.
pub type SharedSession = std::rc::Rc<std::cell::RefCell<CloudSession>>;

/// The time of the request being served, set by [`crate::server::Server::handle`] before it
/// routes (the router's backends take no clock).
pub type SharedClock = std::rc::Rc<std::cell::Cell<Instant>>;

/// The CoAPCloudConf resource (rt [`RT`], [`INTERFACES`], discoverable and observable) over
/// `session`: reads give [`representation`], writes go through [`apply_update`] at the time in
/// `clock`. Nothing is called back: the session's queued actions tell its driver what to do.
pub fn resource(session: SharedSession, clock: SharedClock) -> crate::resource::Resource {
    crate::resource::Resource::new(
        HREF,
        &[RT],
        &INTERFACES,
        policy(),
        Box::new(ConfBackend { session, clock }),
    )
}

struct ConfBackend {
    session: SharedSession,
    clock: SharedClock,
}

impl crate::resource::Backend for ConfBackend {
    fn retrieve(&mut self) -> Result<Props, ResourceError> {
        let session = self
            .session
            .try_borrow()
            .map_err(|_| ResourceError::Unavailable("cloud state busy".into()))?;
        Ok(representation(&session))
    }

    fn update(&mut self, props: &Props) -> Result<(), ResourceError> {
        let mut session = self
            .session
            .try_borrow_mut()
            .map_err(|_| ResourceError::Unavailable("cloud state busy".into()))?;
        apply_update(&mut session, props, self.clock.get()).map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::payload::{Clec, Cps};
    use crate::cloud::session::{
        Action, DeviceInfo, PersistedState, Registration, SessionEvent, Timing,
    };

    const SID: &str = "9b8c6a0e-1f2d-4e3c-8a7b-6c5d4e3f2a1b";
    const AT: &str = "SECRET-auth-code";

    fn session() -> CloudSession {
        CloudSession::new(
            DeviceInfo {
                di: "c0ffee00-0000-4000-8000-000000000001".into(),
                name: "Pi".into(),
            },
            Timing::default(),
            7,
        )
    }

    fn registered() -> CloudSession {
        let state = PersistedState {
            version: PersistedState::VERSION,
            cps: Cps::Registered,
            clec: Clec::Ok,
            conf: Some(CloudConf {
                cis: "coaps+tcp://cloud.example".into(),
                sid: SID.into(),
                apn: "plgd".into(),
                at: Secret::default(),
                servers: vec![],
            }),
            registration: Some(Registration {
                uid: "u1".into(),
                accesstoken: "AT-SECRET".into(),
                refreshtoken: "RT-SECRET".into(),
                expiresin: -1,
            }),
            published: Vec::new(),
        };
        CloudSession::restore(
            state,
            DeviceInfo {
                di: "c0ffee00-0000-4000-8000-000000000001".into(),
                name: "Pi".into(),
            },
            Timing::default(),
            7,
        )
        .unwrap()
    }

    fn props(entries: &[(&str, Value)]) -> Props {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn t(s: &str) -> Value {
        Value::Text(s.into())
    }

    fn valid() -> Props {
        props(&[
            ("cis", t("coaps+tcp://cloud.example:5684")),
            ("sid", t(SID)),
            ("apn", t("plgd")),
            ("at", t(AT)),
        ])
    }

    fn text_of<'a>(p: &'a Props, k: &str) -> &'a str {
        match p.get(k) {
            Some(Value::Text(s)) => s,
            other => panic!("{k}: {other:?}"),
        }
    }

    fn diag(e: UpdateError) -> String {
        let ResourceError::BadRequest(s) = ResourceError::from(e) else {
            panic!("not a 4.00")
        };
        s
    }

    #[test]
    fn unconfigured_representation() {
        let s = session();
        let p = representation(&s);
        assert_eq!(text_of(&p, "cis"), "");
        assert_eq!(text_of(&p, "sid"), NIL_UUID);
        assert_eq!(text_of(&p, "apn"), "");
        assert_eq!(text_of(&p, "cps"), "uninitialized");
        assert_eq!(p.get("clec"), Some(&Value::Integer(0.into())));
        assert!(!p.contains_key("at"));
        assert!(!p.contains_key(KEY_SERVERS));
    }

    #[test]
    fn valid_update_is_ready_to_register_and_never_shows_at() {
        let mut s = session();
        apply_update(&mut s, &valid(), Instant::now()).unwrap();
        assert_eq!(s.cps(), Cps::ReadyToRegister);
        let p = representation(&s);
        assert_eq!(text_of(&p, "cis"), "coaps+tcp://cloud.example:5684");
        assert_eq!(text_of(&p, "sid"), SID);
        assert_eq!(text_of(&p, "apn"), "plgd");
        assert_eq!(text_of(&p, "cps"), "readytoregister");
        assert!(!p.contains_key("at"));
        let dump = format!("{p:?}");
        assert!(!dump.contains(AT), "{dump}");
        // The session persisted the configuration (with `at`: needed for the sign-up).
        let mut persisted = false;
        while let Some(a) = s.poll_action() {
            if let Action::Event(SessionEvent::Persist(state)) = a {
                assert_eq!(state.conf.as_ref().unwrap().at.expose(), AT);
                persisted = true;
            }
        }
        assert!(persisted);
    }

    #[test]
    fn provisioned_session_registers_from_the_update() {
        let mut s = session();
        let now = Instant::now();
        s.set_provisioned(true, now);
        apply_update(&mut s, &valid(), now).unwrap();
        assert_eq!(s.cps(), Cps::Registering);
        let connect = std::iter::from_fn(|| s.poll_action())
            .find_map(|a| match a {
                Action::Connect { uri, sid } => Some((uri, sid)),
                _ => None,
            })
            .expect("connect");
        assert_eq!(connect.0, "coaps+tcp://cloud.example:5684");
        assert_eq!(connect.1, SID);
    }

    #[test]
    fn read_only_properties_are_refused() {
        let mut s = session();
        for key in ["cps", "clec"] {
            let mut p = valid();
            p.insert(key.into(), t("registered"));
            let e = apply_update(&mut s, &p, Instant::now()).unwrap_err();
            assert_eq!(
                e,
                UpdateError::ReadOnly(if key == "cps" { "cps" } else { "clec" })
            );
            assert!(diag(e).contains("read-only"));
        }
        // Even with the deregistration trigger.
        let p = props(&[("cis", t("")), ("cps", t("uninitialized"))]);
        assert!(apply_update(&mut s, &p, Instant::now()).is_err());
        assert_eq!(s.cps(), Cps::Uninitialized);
    }

    #[test]
    fn body_rules() {
        let mut s = session();
        let now = Instant::now();
        let cases: Vec<(Props, &str)> = vec![
            (
                props(&[("sid", t(SID)), ("at", t(AT))]),
                "`cis` is required",
            ),
            (
                props(&[("cis", t("coap+tcp://x")), ("sid", t(SID))]),
                "`at`",
            ),
            (
                props(&[("cis", t("coap+tcp://x")), ("sid", t(SID)), ("at", t(""))]),
                "`at`",
            ),
            (props(&[("cis", t("coap+tcp://x")), ("at", t(AT))]), "`sid`"),
            (
                props(&[
                    ("cis", t("coap+tcp://x")),
                    ("at", t(AT)),
                    ("sid", t("nope")),
                ]),
                "`sid`",
            ),
            (
                props(&[
                    ("cis", Value::Integer(1.into())),
                    ("at", t(AT)),
                    ("sid", t(SID)),
                ]),
                "`cis` must be a text string",
            ),
            (
                props(&[
                    ("cis", t("coap+tcp://x")),
                    ("at", Value::Bool(true)),
                    ("sid", t(SID)),
                ]),
                "`at` must be a text string",
            ),
            (
                props(&[
                    ("cis", t("coap+tcp://x")),
                    ("at", t(AT)),
                    ("sid", t(SID)),
                    ("foo", t("x")),
                ]),
                "unknown property `foo`",
            ),
            (
                props(&[
                    ("cis", t("coap+tcp://x")),
                    ("at", t(AT)),
                    ("sid", t(SID)),
                    (KEY_SERVERS, t("x")),
                ]),
                KEY_SERVERS,
            ),
            (
                props(&[
                    ("cis", t("coap+tcp://x")),
                    ("at", t(AT)),
                    ("sid", t(SID)),
                    (
                        KEY_SERVERS,
                        Value::Array(vec![Value::Map(vec![
                            (t("uri"), t("coap+tcp://y")),
                            (t("id"), t("not-a-uuid")),
                        ])]),
                    ),
                ]),
                KEY_SERVERS,
            ),
        ];
        for (body, want) in cases {
            let e = apply_update(&mut s, &body, now).unwrap_err();
            let d = diag(e);
            assert!(d.contains(want), "{body:?}: {d}");
            assert!(!d.contains(AT), "diagnostic leaks at: {d}");
            assert_eq!(s.cps(), Cps::Uninitialized);
        }
    }

    #[test]
    fn alternative_servers_round_trip() {
        let mut s = session();
        let mut p = valid();
        p.insert(
            KEY_SERVERS.into(),
            Value::Array(vec![Value::Map(vec![
                (t("uri"), t("coaps+tcp://alt.example")),
                (t("id"), t(SID)),
            ])]),
        );
        apply_update(&mut s, &p, Instant::now()).unwrap();
        let r = representation(&s);
        assert_eq!(r.get(KEY_SERVERS), p.get(KEY_SERVERS));
    }

    #[test]
    fn registered_accepts_only_deregistration() {
        let mut s = registered();
        assert_eq!(s.cps(), Cps::Registered);
        let e = apply_update(&mut s, &valid(), Instant::now()).unwrap_err();
        assert_eq!(e, UpdateError::Conf(ConfError::Busy(Cps::Registered)));
        assert!(diag(e).contains("only {\"cis\":\"\"}"));
        assert_eq!(s.cps(), Cps::Registered);

        // `{"cis":""}` without a connection completes at once.
        apply_update(&mut s, &props(&[("cis", t(""))]), Instant::now()).unwrap();
        assert_eq!(s.cps(), Cps::Uninitialized);
        let p = representation(&s);
        assert_eq!(text_of(&p, "cis"), "");
        assert_eq!(text_of(&p, "sid"), NIL_UUID);
        assert!(std::iter::from_fn(|| s.poll_action())
            .any(|a| matches!(a, Action::Event(SessionEvent::Deregistered))));
    }

    #[test]
    fn long_unknown_keys_are_cut_in_the_diagnostic() {
        let mut s = session();
        let long = "k".repeat(500);
        let mut p = valid();
        p.insert(long.clone(), t("x"));
        let d = diag(apply_update(&mut s, &p, Instant::now()).unwrap_err());
        assert!(d.len() < 100, "{d}");
    }
}
