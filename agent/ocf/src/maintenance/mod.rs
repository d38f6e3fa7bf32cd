//! `/oic/mnt`, the maintenance resource (rt `oic.wk.mnt`, OCF-PROTOCOL.md §3.4, §9), sans-IO.
//!
//! - `fr` (factory reset) and `rb` (reboot) are booleans: writing `true` asks for the action,
//!   writing `false` asks for nothing. They read `true` only while their action is under way
//!   (iotivity-lite, which implements only `fr`, always reads `false`; a reboot or a reset ends
//!   the process or the ownership, so "under way" is what a client can still see).
//! - `err` is read-only: the last maintenance error ([`MaintenanceError`], 0 = none).
//! - Any other property, a value that is not a boolean, `fr` and `rb` both `true`, or a body that
//!   asks for nothing is refused with 4.00 and a diagnostic (iotivity-lite answers 4.00 to any
//!   body other than `{"fr":true}`); nothing changes then.
//! - While one action is under way, asking for it again is accepted and changes nothing; asking
//!   for the other is refused with 5.03 (try again later).
//!
//! Who may write is decided before the router (the ACL: the owner, or the cloud if its ACE names
//! `/oic/mnt`, [`crate::security::acl`]). The daemon takes the request with
//! [`Maintenance::take_request`], carries it out and reports with [`Maintenance::finished`].

use std::cell::RefCell;
use std::rc::Rc;

mod procedure;

pub use procedure::{FactoryReset, Reboot, RebootMethod, RebootStep, ResetStep, ResetTiming};

use crate::resource::{Backend, Interface, Policy, Props, Resource, ResourceError, Value};

/// The resource's href.
pub const HREF: &str = "/oic/mnt";
/// Its resource type.
pub const RT: &str = "oic.wk.mnt";
/// Its interfaces; the first is the default.
pub const INTERFACES: [Interface; 2] = [Interface::ReadWrite, Interface::Baseline];

const KEY_FR: &str = "fr";
const KEY_RB: &str = "rb";
const KEY_ERR: &str = "err";

/// A maintenance action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Deregister, wipe, new identity, back to RFOTM.
    FactoryReset,
    /// Sign out, flush, reboot the board.
    Reboot,
}

impl Action {
    fn property(self) -> &'static str {
        match self {
            Action::FactoryReset => KEY_FR,
            Action::Reboot => KEY_RB,
        }
    }

    fn description(self) -> &'static str {
        match self {
            Action::FactoryReset => "a factory reset",
            Action::Reboot => "a reboot",
        }
    }
}

/// Values of `err`. The schema leaves the codes to the device; these are ours (README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i64)]
pub enum MaintenanceError {
    /// The reboot command could not be run or exited with an error; the device stayed up and
    /// signed in again.
    RebootCommandFailed = 1,
    /// The reboot command succeeded but the agent was not stopped in time; it signed in again.
    RebootDidNotHappen = 2,
    /// The factory reset could not tell the cloud (unreachable, or no answer within the
    /// deregistration timeout); the device was wiped anyway.
    DeregistrationIncomplete = 3,
    /// The factory reset could not write the wiped state; it is finished on the next start.
    ResetNotPersisted = 4,
}

/// The maintenance state behind `/oic/mnt`.
#[derive(Debug, Default)]
pub struct Maintenance {
    requested: Option<Action>,
    under_way: Option<Action>,
    err: i64,
    /// Runs of an action that have ended; the run under way or asked for is `runs + 1`.
    runs: u64,
    /// How the last run ended.
    last: Option<(Action, Option<MaintenanceError>)>,
    /// An action a POST just queued, for [`crate::server::Server`] to act on.
    fresh: Option<Action>,
}

/// A claim on the outcome of one run of an action ([`Maintenance::join`]): the run that was
/// under way or queued when it was asked for, or the one it queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    action: Action,
    run: u64,
}

/// One [`Maintenance`] shared by the resource and the daemon.
pub type SharedMaintenance = Rc<RefCell<Maintenance>>;

impl Maintenance {
    pub fn new() -> Maintenance {
        Maintenance::default()
    }

    /// Asks for `action` (a POST, or the console). `Ok(true)` if it was queued, `Ok(false)` if
    /// that action is already asked for or under way (nothing to do), and 5.03 while the other
    /// action is under way.
    pub fn request(&mut self, action: Action) -> Result<bool, ResourceError> {
        match self.requested.or(self.under_way) {
            Some(current) if current == action => Ok(false),
            Some(current) => Err(ResourceError::Unavailable(format!(
                "{} is under way; try again later",
                current.description()
            ))),
            None => {
                self.requested = Some(action);
                Ok(true)
            }
        }
    }

    /// Asks for `action` like [`Maintenance::request`] and returns a claim on the outcome of the
    /// run that will carry it out. A request while the same action is asked for or under way
    /// joins that run: its requester learns that run's real outcome (a factory reset asked for
    /// during a factory reset is the same reset, so it gets the same answer, never a made-up
    /// success). The other action under way is 5.03, as for a POST.
    pub fn join(&mut self, action: Action) -> Result<Ticket, ResourceError> {
        self.request(action)?;
        Ok(Ticket {
            action,
            run: self.runs + 1,
        })
    }

    /// The outcome of the run `ticket` claims, once it ended: `Some(None)` for a clean end,
    /// `Some(Some(e))` for an end with `err` = `e`; `None` while it has not ended.
    pub fn outcome(&self, ticket: Ticket) -> Option<Option<MaintenanceError>> {
        if self.runs < ticket.run {
            return None;
        }
        match self.last {
            Some((action, e)) if action == ticket.action && self.runs == ticket.run => Some(e),
            // A later run ended since: the claimed one ended earlier, and its outcome is gone.
            // The daemon reads outcomes as soon as runs end, so this is only a safe default.
            _ => Some(None),
        }
    }

    /// The action to carry out now, if one was asked for; it is under way from now on.
    pub fn take_request(&mut self) -> Option<Action> {
        let action = self.requested.take()?;
        self.under_way = Some(action);
        Some(action)
    }

    /// The action under way ended, with `error` if it went wrong (then `err` shows it; a clean
    /// end clears `err`).
    pub fn finished(&mut self, error: Option<MaintenanceError>) {
        if let Some(action) = self.under_way.take() {
            self.runs += 1;
            self.last = Some((action, error));
        }
        self.err = error.map_or(0, |e| e as i64);
    }

    /// The action under way, if any.
    pub fn under_way(&self) -> Option<Action> {
        self.under_way
    }

    /// `err`.
    pub fn err(&self) -> i64 {
        self.err
    }

    /// The representation: `fr`, `rb`, `err`.
    pub fn representation(&self) -> Props {
        let busy = self.under_way.or(self.requested);
        let mut p = Props::new();
        p.insert(
            KEY_FR.into(),
            Value::Bool(busy == Some(Action::FactoryReset)),
        );
        p.insert(KEY_RB.into(), Value::Bool(busy == Some(Action::Reboot)));
        p.insert(KEY_ERR.into(), Value::Integer(self.err.into()));
        p
    }

    /// A POST body (common properties were already refused by the router). `Ok(Some(action))`
    /// if an action was queued.
    pub fn apply_update(&mut self, props: &Props) -> Result<Option<Action>, ResourceError> {
        let mut wanted = None;
        let mut asked_for_nothing = true;
        for (key, value) in props {
            let action = match key.as_str() {
                KEY_FR => Action::FactoryReset,
                KEY_RB => Action::Reboot,
                KEY_ERR => {
                    return Err(ResourceError::BadRequest(
                        "property \"err\" is read-only".into(),
                    ))
                }
                other => {
                    return Err(ResourceError::BadRequest(format!(
                        "property {:?} is not a property of {HREF} (fr, rb, err)",
                        truncate(other)
                    )))
                }
            };
            let Value::Bool(on) = value else {
                return Err(ResourceError::BadRequest(format!(
                    "property {:?} must be a boolean",
                    action.property()
                )));
            };
            asked_for_nothing = false;
            if *on {
                if let Some(other) = wanted.replace(action) {
                    if other != action {
                        return Err(ResourceError::BadRequest(
                            "fr and rb cannot both be true: one action at a time".into(),
                        ));
                    }
                }
            }
        }
        if asked_for_nothing {
            return Err(ResourceError::BadRequest(
                "nothing to do: write {\"fr\":true} or {\"rb\":true}".into(),
            ));
        }
        match wanted {
            Some(action) => {
                let queued = self.request(action)?.then_some(action);
                if queued.is_some() {
                    self.fresh = queued;
                }
                Ok(queued)
            }
            None => Ok(None),
        }
    }

    /// The action a POST queued since the last call (to record it durably before the 2.04
    /// goes out, and to wake whoever carries it out).
    pub fn take_fresh(&mut self) -> Option<Action> {
        self.fresh.take()
    }
}

/// A property name as echoed in a diagnostic: at most 32 characters.
fn truncate(s: &str) -> &str {
    match s.char_indices().nth(32) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The `/oic/mnt` resource over `state`. An action a POST queues is left in the state
/// ([`Maintenance::take_fresh`]); nothing is called back.
pub fn resource(state: SharedMaintenance) -> Resource {
    Resource::new(
        HREF,
        &[RT],
        &INTERFACES,
        Policy::discoverable_observable(),
        Box::new(MaintenanceBackend { state }),
    )
}

struct MaintenanceBackend {
    state: SharedMaintenance,
}

impl Backend for MaintenanceBackend {
    fn retrieve(&mut self) -> Result<Props, ResourceError> {
        let state = self
            .state
            .try_borrow()
            .map_err(|_| ResourceError::Unavailable("maintenance state busy".into()))?;
        Ok(state.representation())
    }

    fn update(&mut self, props: &Props) -> Result<(), ResourceError> {
        self.state
            .try_borrow_mut()
            .map_err(|_| ResourceError::Unavailable("maintenance state busy".into()))?
            .apply_update(props)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{Device, DeviceInfo, Method, Origin, PlatformInfo, Request, Response};
    use coap_lite::ResponseType;

    fn props(pairs: &[(&str, Value)]) -> Props {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn reads_false_and_no_error_at_rest() {
        let m = Maintenance::new();
        assert_eq!(
            m.representation(),
            props(&[
                ("fr", Value::Bool(false)),
                ("rb", Value::Bool(false)),
                ("err", Value::Integer(0.into())),
            ])
        );
    }

    #[test]
    fn true_queues_the_action_once_and_false_does_nothing() {
        let mut m = Maintenance::new();
        assert_eq!(
            m.apply_update(&props(&[("fr", Value::Bool(false))])),
            Ok(None)
        );
        assert_eq!(m.take_request(), None);
        assert_eq!(
            m.apply_update(&props(&[("rb", Value::Bool(true))])),
            Ok(Some(Action::Reboot))
        );
        assert_eq!(m.representation()["rb"], Value::Bool(true));
        // Asked again before it started: accepted, nothing more queued.
        assert_eq!(
            m.apply_update(&props(&[("rb", Value::Bool(true))])),
            Ok(None)
        );
        assert_eq!(m.take_request(), Some(Action::Reboot));
        assert_eq!(m.take_request(), None);
        assert_eq!(m.under_way(), Some(Action::Reboot));
        // The other action while one is under way: 5.03.
        assert!(matches!(
            m.apply_update(&props(&[("fr", Value::Bool(true))])),
            Err(ResourceError::Unavailable(_))
        ));
        m.finished(Some(MaintenanceError::RebootCommandFailed));
        assert_eq!(m.err(), 1);
        assert_eq!(m.representation()["rb"], Value::Bool(false));
        assert_eq!(
            m.apply_update(&props(&[("fr", Value::Bool(true))])),
            Ok(Some(Action::FactoryReset))
        );
        assert_eq!(m.take_request(), Some(Action::FactoryReset));
        m.finished(None);
        assert_eq!(m.err(), 0, "a clean end clears err");
    }

    #[test]
    fn a_reset_asked_for_during_a_reset_joins_it_and_gets_its_real_outcome() {
        let mut m = Maintenance::new();
        let first = m.join(Action::FactoryReset).unwrap();
        assert_eq!(m.take_request(), Some(Action::FactoryReset));
        // Asked again while it runs (the console, /oic/mnt, pstat): the same run, not a new one
        // and not a made-up success.
        let second = m.join(Action::FactoryReset).unwrap();
        assert_eq!(first, second);
        assert_eq!(m.take_request(), None, "no second reset queued");
        assert_eq!(m.outcome(second), None, "still running");
        // A reboot meanwhile is 5.03.
        assert!(matches!(
            m.join(Action::Reboot),
            Err(ResourceError::Unavailable(_))
        ));
        m.finished(Some(MaintenanceError::DeregistrationIncomplete));
        assert_eq!(
            m.outcome(first),
            Some(Some(MaintenanceError::DeregistrationIncomplete))
        );
        assert_eq!(m.outcome(second), m.outcome(first));
        // A request after it ended is a new run.
        let third = m.join(Action::FactoryReset).unwrap();
        assert_ne!(third, first);
        assert_eq!(m.outcome(third), None);
        assert_eq!(m.take_request(), Some(Action::FactoryReset));
        m.finished(None);
        assert_eq!(m.outcome(third), Some(None));
    }

    #[test]
    fn bad_bodies_are_refused_and_change_nothing() {
        let cases: Vec<(Props, &str)> = vec![
            (Props::new(), "nothing to do"),
            (props(&[("err", Value::Integer(0.into()))]), "read-only"),
            (props(&[("fr", Value::Integer(1.into()))]), "boolean"),
            (props(&[("rb", Value::Text("true".into()))]), "boolean"),
            (props(&[("reboot", Value::Bool(true))]), "not a property"),
            (
                props(&[("fr", Value::Bool(true)), ("rb", Value::Bool(true))]),
                "both be true",
            ),
            (
                props(&[("fr", Value::Bool(true)), ("x", Value::Bool(true))]),
                "not a property",
            ),
        ];
        for (body, needle) in cases {
            let mut m = Maintenance::new();
            match m.apply_update(&body) {
                Err(ResourceError::BadRequest(d)) => assert!(d.contains(needle), "{body:?}: {d}"),
                other => panic!("{body:?}: {other:?}"),
            }
            assert_eq!(m.take_request(), None, "{body:?} queued something");
        }
        let long = "k".repeat(500);
        let mut m = Maintenance::new();
        let Err(ResourceError::BadRequest(d)) =
            m.apply_update(&props(&[(long.as_str(), Value::Bool(true))]))
        else {
            panic!("accepted")
        };
        assert!(d.len() < 100, "the diagnostic does not echo 500 bytes: {d}");
    }

    #[test]
    fn served_by_the_router_with_rt_interfaces_and_4_00() {
        let state: SharedMaintenance = Rc::new(RefCell::new(Maintenance::new()));
        let mut device = Device::new(
            DeviceInfo {
                di: "c0ffee00-0000-4000-8000-000000000001".into(),
                piid: "c0ffee00-0000-4000-8000-000000000002".into(),
                name: "t".into(),
                device_type: "oic.d.sensor".into(),
                spec_version: "ocf.2.5.0".into(),
                data_model_version: "ocf.res.1.3.0".into(),
                software_version: "0".into(),
            },
            PlatformInfo::default(),
        );
        device.add(resource(state.clone())).unwrap();
        let origin = Origin::Stream(1);
        let mut get = Request::new(Method::Get, HREF);
        get.query.push(("if".into(), "oic.if.baseline".into()));
        let r = device.handle(&origin, &get, &[1]);
        assert_eq!(r.code, ResponseType::Content);
        let body: Value = ciborium::from_reader(r.payload.as_slice()).unwrap();
        let text = format!("{body:?}");
        assert!(
            text.contains("oic.wk.mnt") && text.contains("oic.if.rw"),
            "{text}"
        );

        let post = |body: &str| {
            let mut r = Request::new(Method::Post, HREF);
            r.content_format = Some(50);
            r.payload = body.as_bytes().to_vec();
            r
        };
        let r: Response = device.handle(&origin, &post(r#"{"fr":"yes"}"#), &[2]);
        assert_eq!(r.code, ResponseType::BadRequest);
        assert!(r.diagnostic().contains("boolean"), "{}", r.diagnostic());
        assert_eq!(state.borrow_mut().take_fresh(), None);
        let r = device.handle(&origin, &post(r#"{"fr":true}"#), &[3]);
        assert_eq!(r.code, ResponseType::Changed, "{}", r.diagnostic());
        assert_eq!(state.borrow_mut().take_fresh(), Some(Action::FactoryReset));
        assert_eq!(state.borrow_mut().take_fresh(), None, "once");
        assert_eq!(
            state.borrow_mut().take_request(),
            Some(Action::FactoryReset)
        );
        let mut ro = post(r#"{"fr":true}"#);
        ro.query.push(("if".into(), "oic.if.r".into()));
        assert_ne!(
            device.handle(&origin, &ro, &[4]).code,
            ResponseType::Changed
        );
    }
}
