//! The security resources over one shared [`SecurityState`]: `Backend`s for the generic router
//! (`/oic/sec/doxm`, `/oic/sec/pstat`, `/oic/sec/cred`, `/oic/sec/acl2`, `/oic/sec/csr`),
//! [`handle_delete`] for DELETE on cred and acl2 (the router serves GET and POST only), and
//! [`OtmHandler`] for the ownership transfer, which needs the TLS session.
//!
//! Access control is not done here: the daemon asks [`SecurityState::authorize_request`] first.

use std::cell::{Ref, RefCell, RefMut};
use std::fmt;
use std::rc::Rc;
use std::time::Instant;

use coap_lite::option_value::OptionValueU32;
use coap_lite::{CoapOption, Packet, ResponseType};

use super::csr::{CsrBackend, CsrSource};
use super::doxm::SCT_SIGNED_ASYMMETRIC;
use super::otm::{self, DeviceOtm, OtmError, OtmMessage, OwnerInfo};
use super::pstat::{DosState, Trigger, MODE_CLIENT_DIRECTED};
use super::util::{as_text, as_uint, bad, map, parse_uuid, text, text_map, uint};
use super::{
    PeerIdentity, Rowner, SecurityState, ACL2_HREF, CRED_HREF, CSR_HREF, DOXM_HREF, PSTAT_HREF,
};
use crate::resource::{
    Backend, Interface, Method, Policy, Props, Request, Resource, ResourceError, Response, Value,
};

/// The state shared by the security resources and the daemon.
pub type SharedState = Rc<RefCell<SecurityState>>;

fn busy() -> ResourceError {
    ResourceError::Internal("the security state is in use".into())
}

fn read(state: &SharedState) -> Result<Ref<'_, SecurityState>, ResourceError> {
    state.try_borrow().map_err(|_| busy())
}

fn write(state: &SharedState) -> Result<RefMut<'_, SecurityState>, ResourceError> {
    state.try_borrow_mut().map_err(|_| busy())
}

/// Security resources are discoverable (a Mediator finds `/oic/sec/doxm` by rt), not
/// observable, and only served on the secure endpoint.
fn svr_policy() -> Policy {
    Policy {
        discoverable: true,
        observable: false,
        secure: true,
    }
}

const SVR_INTERFACES: [Interface; 2] = [Interface::ReadWrite, Interface::Baseline];

/// The five security resources, ready for `Device::add`.
pub fn resources(state: &SharedState, csr: Box<dyn CsrSource>) -> Vec<Resource> {
    let res = |href: &str, rt: &str, backend: Box<dyn Backend>| {
        Resource::new(href, &[rt], &SVR_INTERFACES, svr_policy(), backend)
    };
    vec![
        res(
            DOXM_HREF,
            "oic.r.doxm",
            Box::new(DoxmBackend::new(state.clone())),
        ),
        res(
            PSTAT_HREF,
            "oic.r.pstat",
            Box::new(PstatBackend::new(state.clone())),
        ),
        res(
            CRED_HREF,
            "oic.r.cred",
            Box::new(CredBackend::new(state.clone())),
        ),
        res(
            ACL2_HREF,
            "oic.r.acl2",
            Box::new(AclBackend::new(state.clone())),
        ),
        res(CSR_HREF, "oic.r.csr", Box::new(CsrBackend::new(csr))),
    ]
}

fn read_only(key: &str, why: &str) -> ResourceError {
    bad(format!("`{key}` is read-only{why}"))
}

fn rowneruuid(props: &Props) -> Result<Option<String>, ResourceError> {
    props
        .get("rowneruuid")
        .map(|v| parse_uuid(as_text(v, "rowneruuid")?, "rowneruuid"))
        .transpose()
}

// ---------------------------------------------------------------------------------------------
// doxm
// ---------------------------------------------------------------------------------------------

/// `/oic/sec/doxm` (see [`super::doxm`]).
pub struct DoxmBackend {
    state: SharedState,
}

impl DoxmBackend {
    pub fn new(state: SharedState) -> DoxmBackend {
        DoxmBackend { state }
    }
}

impl Backend for DoxmBackend {
    fn retrieve(&mut self) -> Result<Props, ResourceError> {
        let s = read(&self.state)?;
        let d = s.doxm();
        let mut p = Props::new();
        p.insert(
            "oxms".into(),
            Value::Array(s.offered_oxms().iter().map(|o| uint((*o).into())).collect()),
        );
        p.insert("oxmsel".into(), uint(d.oxmsel.into()));
        p.insert("sct".into(), uint(SCT_SIGNED_ASYMMETRIC.into()));
        p.insert("owned".into(), Value::Bool(d.owned));
        p.insert("deviceuuid".into(), text(&d.deviceuuid));
        p.insert("devowneruuid".into(), text(&d.devowneruuid));
        p.insert("rowneruuid".into(), text(&d.rowneruuid));
        Ok(p)
    }

    fn update(&mut self, props: &Props) -> Result<(), ResourceError> {
        const WHY: &str = ": ownership changes only through an ownership transfer or a factory \
                           reset";
        for key in props.keys() {
            match key.as_str() {
                "owned" | "deviceuuid" | "devowneruuid" | "oxms" | "sct" => {
                    return Err(read_only(key, WHY))
                }
                "oxmsel" | "rowneruuid" => {}
                other => {
                    return Err(bad(format!(
                        "unknown property `{}` in /oic/sec/doxm",
                        super::util::echo(other)
                    )))
                }
            }
        }
        if let Some(v) = props.get("oxmsel") {
            let selected = read(&self.state)?.doxm().oxmsel;
            if as_uint(v, "oxmsel", u64::from(u16::MAX))? != u64::from(selected) {
                return Err(bad(
                    "`oxmsel` is selected in the clear before an ownership transfer, while the \
                     device is unowned",
                ));
            }
        }
        if let Some(r) = rowneruuid(props)? {
            write(&self.state)?.set_rowneruuid(Rowner::Doxm, r);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// pstat
// ---------------------------------------------------------------------------------------------

/// `/oic/sec/pstat` (see [`super::pstat`]).
pub struct PstatBackend {
    state: SharedState,
}

impl PstatBackend {
    pub fn new(state: SharedState) -> PstatBackend {
        PstatBackend { state }
    }
}

impl Backend for PstatBackend {
    fn retrieve(&mut self) -> Result<Props, ResourceError> {
        let s = read(&self.state)?;
        let ps = s.pstat();
        let mut p = Props::new();
        p.insert(
            "dos".into(),
            map(vec![
                ("s", uint(ps.state.number().into())),
                ("p", Value::Bool(ps.pending())),
            ]),
        );
        p.insert("isop".into(), Value::Bool(ps.isop()));
        p.insert("cm".into(), uint(ps.cm().into()));
        p.insert("tm".into(), uint(0));
        p.insert("om".into(), uint(MODE_CLIENT_DIRECTED.into()));
        p.insert("sm".into(), uint(MODE_CLIENT_DIRECTED.into()));
        p.insert("rowneruuid".into(), text(&ps.rowneruuid));
        Ok(p)
    }

    fn update(&mut self, props: &Props) -> Result<(), ResourceError> {
        let mut target = None;
        for (key, v) in props {
            match key.as_str() {
                "isop" | "cm" | "sm" => return Err(read_only(key, "")),
                "om" => {
                    if as_uint(v, "om", 255)? != u64::from(MODE_CLIENT_DIRECTED) {
                        return Err(bad(format!(
                            "`om` {MODE_CLIENT_DIRECTED} (client-directed) is the only mode \
                             supported"
                        )));
                    }
                }
                "tm" => return Err(bad("`tm` is not supported: change `dos.s` instead")),
                "rowneruuid" => {}
                "dos" => {
                    let entries = text_map(v, "dos")?;
                    let mut s = None;
                    for (k, v) in entries {
                        match k {
                            "s" => s = Some(as_uint(v, "dos.s", 4)?),
                            "p" => return Err(read_only("dos.p", "")),
                            other => {
                                return Err(bad(format!(
                                    "unknown property `dos.{}`",
                                    super::util::echo(other)
                                )))
                            }
                        }
                    }
                    let s = s.ok_or_else(|| bad("`dos.s` is required"))?;
                    target = DosState::from_number(s);
                }
                other => {
                    return Err(bad(format!(
                        "unknown property `{}` in /oic/sec/pstat",
                        super::util::echo(other)
                    )))
                }
            }
        }
        let rowner = rowneruuid(props)?;
        let mut s = write(&self.state)?;
        if let Some(to) = target {
            s.set_dos(to, Trigger::Request)
                .map_err(|e| bad(e.to_string()))?;
        }
        if let Some(r) = rowner {
            s.set_rowneruuid(Rowner::Pstat, r);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// cred, acl2
// ---------------------------------------------------------------------------------------------

/// `/oic/sec/cred` GET and POST (see [`super::cred`]); DELETE is [`handle_delete`].
pub struct CredBackend {
    state: SharedState,
}

impl CredBackend {
    pub fn new(state: SharedState) -> CredBackend {
        CredBackend { state }
    }
}

impl Backend for CredBackend {
    fn retrieve(&mut self) -> Result<Props, ResourceError> {
        Ok(read(&self.state)?.creds().representation())
    }

    fn update(&mut self, props: &Props) -> Result<(), ResourceError> {
        let mut s = write(&self.state)?;
        let di = s.di().to_owned();
        s.update_creds(|c| c.apply_update(props, &di)).map(|_| ())
    }
}

/// `/oic/sec/acl2` GET and POST (see [`super::acl`]); DELETE is [`handle_delete`].
pub struct AclBackend {
    state: SharedState,
}

impl AclBackend {
    pub fn new(state: SharedState) -> AclBackend {
        AclBackend { state }
    }
}

impl Backend for AclBackend {
    fn retrieve(&mut self) -> Result<Props, ResourceError> {
        Ok(read(&self.state)?.acl().representation())
    }

    fn update(&mut self, props: &Props) -> Result<(), ResourceError> {
        write(&self.state)?
            .update_acl(|a| a.apply_update(props))
            .map(|_| ())
    }
}

/// Serves DELETE on `/oic/sec/cred` (`?credid=`) and `/oic/sec/acl2` (`?aceid=`): 2.02
/// Deleted, 4.04 for an unknown id, 4.00 for another query. `None` for any other request (let
/// the router answer it). Authorise the request first.
pub fn handle_delete(state: &SharedState, req: &Request) -> Option<Response> {
    if req.method != Method::Delete {
        return None;
    }
    let (result, what) = match req.path.as_str() {
        CRED_HREF => (
            write(state).and_then(|mut s| s.update_creds(|c| c.delete(&req.query))),
            "credential",
        ),
        ACL2_HREF => (
            write(state).and_then(|mut s| s.update_acl(|a| a.delete(&req.query))),
            "ACE",
        ),
        _ => return None,
    };
    Some(match result {
        Ok(0) if !req.query.is_empty() => {
            Response::error(ResponseType::NotFound, &format!("no such {what}"))
        }
        Ok(_) => Response::new(ResponseType::Deleted),
        Err(ResourceError::BadRequest(m)) => Response::error(ResponseType::BadRequest, &m),
        Err(e) => Response::error(ResponseType::InternalServerError, &e.to_string()),
    })
}

// ---------------------------------------------------------------------------------------------
// OTM
// ---------------------------------------------------------------------------------------------

/// The TLS connection an OTM request arrived on.
#[derive(Clone, Copy)]
pub struct Connection<'a> {
    /// The daemon's connection id (the same as in `Origin::Stream`).
    pub session_id: u64,
    /// This session's exporter: label [`otm::EXPORTER_LABEL`], no context,
    /// [`otm::EXPORTER_LEN`] bytes.
    pub exporter: &'a [u8],
    /// The client certificate, if one was presented.
    pub peer: Option<&'a PeerIdentity>,
}

impl fmt::Debug for Connection<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("session_id", &self.session_id)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// The answer to an OTM request, with the Max-Age (seconds) a 4.29 carries.
#[derive(Debug, Clone, PartialEq)]
pub struct OtmReply {
    pub response: Response,
    pub max_age: Option<u32>,
}

impl OtmReply {
    /// The CoAP message, Max-Age (option 14) included.
    pub fn to_packet(&self, token: &[u8]) -> Packet {
        let mut p = self.response.to_packet(token);
        if let Some(secs) = self.max_age {
            p.add_option_as(CoapOption::MaxAge, OptionValueU32(secs));
        }
        p
    }

    fn ok(response: Response) -> OtmReply {
        OtmReply {
            response,
            max_age: None,
        }
    }

    fn error(e: &OtmError) -> OtmReply {
        OtmReply {
            response: Response::error(e.code(), &e.to_string()),
            max_age: e.max_age(),
        }
    }
}

/// Serves [`super::OTM_HREF`]: the device side of [`otm`] plus taking ownership on success.
pub struct OtmHandler {
    otm: DeviceOtm,
    state: SharedState,
}

impl fmt::Debug for OtmHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtmHandler")
            .field("otm", &self.otm)
            .finish_non_exhaustive()
    }
}

impl OtmHandler {
    pub fn new(state: SharedState, otm: DeviceOtm) -> OtmHandler {
        OtmHandler { otm, state }
    }

    /// The device side (for `drop_session` when a connection closes, `poll_timeout`).
    pub fn otm(&mut self) -> &mut DeviceOtm {
        &mut self.otm
    }

    /// Serves one request to the OTM resource (authorise it first).
    pub fn handle(&mut self, req: &Request, conn: &Connection<'_>, now: Instant) -> OtmReply {
        if req.method != Method::Post {
            return OtmReply::ok(Response::error(
                ResponseType::MethodNotAllowed,
                "the ownership transfer takes POST only",
            ));
        }
        match self.serve(req, conn, now) {
            Ok(r) => OtmReply::ok(r),
            Err(Served::Otm(e)) => OtmReply::error(&e),
            Err(Served::Internal(e)) => OtmReply::ok(Response::error(
                ResponseType::InternalServerError,
                &e.to_string(),
            )),
        }
    }

    fn serve(
        &mut self,
        req: &Request,
        conn: &Connection<'_>,
        now: Instant,
    ) -> Result<Response, Served> {
        {
            let s = read(&self.state)?;
            if s.doxm().owned || s.dos() != DosState::Rfotm {
                return Err(OtmError::AlreadyOwned.into());
            }
        }
        let peer = conn
            .peer
            .filter(|p| p.uuid.is_some())
            .ok_or(OtmError::NoClientCertificate)?;
        match OtmMessage::decode(req)? {
            OtmMessage::Step1 { pake_msg_a } => {
                let reply =
                    self.otm
                        .handle_step1(conn.session_id, &pake_msg_a, conn.exporter, now)?;
                Ok(otm::step1_response(&reply))
            }
            OtmMessage::Step2 { confirm_a } => {
                self.otm.handle_step2(conn.session_id, &confirm_a, now)?;
                let mut s = write(&self.state)?;
                s.take_ownership(peer)?;
                Ok(otm::step2_response(&OwnerInfo {
                    deviceuuid: s.di().to_owned(),
                    devowneruuid: s.doxm().devowneruuid.clone(),
                }))
            }
        }
    }
}

enum Served {
    Otm(OtmError),
    Internal(ResourceError),
}

impl From<OtmError> for Served {
    fn from(e: OtmError) -> Self {
        Served::Otm(e)
    }
}

impl From<ResourceError> for Served {
    fn from(e: ResourceError) -> Self {
        Served::Internal(e)
    }
}
