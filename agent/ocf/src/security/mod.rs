//! Device security, sans-IO: ownership, credentials, access control (DESIGN.md §4,
//! OCF-PROTOCOL.md §8.5, §9).
//!
//! - [`pstat`]: the onboarding state `dos.s` and its transitions.
//! - [`doxm`]: ownership (`owned`, `devowneruuid`, the OTMs offered and selected).
//! - [`doc`]: OCF's standard ownership transfer (Random PIN, Manufacturer Certificate) over
//!   the Device Ownership Connection.
//! - [`cred`]: trust anchors and the identity certificate (public parts only), and PSKs for
//!   DTLS peers (kept, never shown).
//! - [`dtls_hello`]: the DTLS cookie exchange without state (a ClientHello read, a
//!   HelloVerifyRequest written), as a DTLS server does it before keeping anything of a peer.
//! - [`dtls_keys`]: the keys of OCF's DTLS ownership transfer methods (Random PIN PSK, owner
//!   PSK) and the PSK lookup of owned DTLS sessions.
//! - [`acl`]: ACEs and [`acl::evaluate`], the access decision with the default policy.
//! - [`csr`]: `/oic/sec/csr` over a [`csr::CsrSource`] the daemon implements.
//! - [`otm`]: the ownership transfer (SPAKE2 + TLS-exporter key confirmation), both sides.
//!
//! [`SecurityState`] bundles what is persisted (versioned, serde); [`resources`] builds the
//! `/oic/sec/*` resources over one shared `Rc<RefCell<SecurityState>>`; [`OtmHandler`] and
//! [`handle_delete`] serve what the generic router cannot (requests that need the TLS session,
//! and DELETE).
//!
//! # How the daemon uses it
//!
//! 1. Load the state file with [`SecurityState::from_cbor`] or start with
//!    [`SecurityState::new`]`(di)`. If [`SecurityState::reset_pending`], finish the factory
//!    reset (wipe the cloud state, then [`SecurityState::reset`]).
//! 2. Register [`resources`] with the `Device`; keep an [`OtmHandler`] beside it.
//! 3. For each TLS connection: after the handshake, compute the exporter
//!    (`conn.export_keying_material([0; 32], otm::EXPORTER_LABEL, None)`), and a
//!    [`PeerIdentity`] from the client's leaf certificate
//!    ([`PeerIdentity::from_certificate_der`], with `chain_verified` = whether it chains to one
//!    of [`cred::CredStore::trust_anchors`]). The local TLS server must accept any client
//!    certificate (the Mediator's is self-signed) and no certificate at all.
//! 4. For each request: `let who = state.requester(peer, secure)`; refuse with
//!    `state.authorize_request(&who, &req).denial()` if any; then route: [`OTM_HREF`] →
//!    [`OtmHandler::handle`]; DELETE → [`handle_delete`]; the rest → `Device::handle`.
//! 5. After each request (and timer), poll [`SecurityState::take_dirty`] (persist the state
//!    atomically) and [`SecurityState::take_events`] (start the cloud in RFNOP, reset on
//!    `FactoryResetRequested`, rebuild TLS configurations on `CredentialsChanged`, close the
//!    other connections on `OwnershipTransferred`).
//!
//! On later connections the owner is recognised by its client certificate's public key
//! ([`PeerIdentity::spki_sha256`] equal to the one recorded at ownership), not by the CN alone.

pub mod acl;
pub mod cred;
pub mod csr;
pub mod doc;
pub mod doxm;
pub mod dtls_hello;
pub mod dtls_keys;
pub mod otm;
pub mod pstat;
mod resources;
mod util;

#[cfg(test)]
mod tests;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use acl::{Decision, DenyReason, Operation, Requester, Target};
pub use otm::{DeviceOtm, MediatorOtm, OtmError, Pin};
pub use pstat::{DosState, Trigger};
pub use resources::{
    handle_delete, resources, AclBackend, Connection, CredBackend, DoxmBackend, OtmHandler,
    OtmReply, PstatBackend, SharedState,
};
pub use util::{is_uuid, NIL_UUID};

use crate::resource::{Request, ResourceError};
use crate::x509;
pub use crate::x509::uuid_from_cn;
use cred::NewCred;
use pstat::TransitionError;

/// `/oic/res`.
pub const RES_HREF: &str = crate::resource::RES_HREF;
/// `/oic/d`.
pub const DEVICE_HREF: &str = crate::resource::DEVICE_HREF;
/// `/oic/p`.
pub const PLATFORM_HREF: &str = crate::resource::PLATFORM_HREF;
/// `/oic/mnt`.
pub const MNT_HREF: &str = "/oic/mnt";
/// `/oic/sec/doxm`.
pub const DOXM_HREF: &str = "/oic/sec/doxm";
/// `/oic/sec/pstat`.
pub const PSTAT_HREF: &str = "/oic/sec/pstat";
/// `/oic/sec/cred`.
pub const CRED_HREF: &str = "/oic/sec/cred";
/// `/oic/sec/acl2`.
pub const ACL2_HREF: &str = "/oic/sec/acl2";
/// `/oic/sec/csr`.
pub const CSR_HREF: &str = "/oic/sec/csr";
/// The ownership transfer resource (vendor; see [`otm`]).
pub const OTM_HREF: &str = "/oic/sec/otm";

/// Version of the persisted [`SecurityState`] layout.
pub const STATE_VERSION: u32 = 1;

/// What the daemon learned about the peer of a TLS connection from its leaf certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The UUID of a CN `uuid:<uuid>` (prefix matched case-insensitively), lower case.
    pub uuid: Option<String>,
    /// SHA-256 of the leaf's DER SubjectPublicKeyInfo.
    pub spki_sha256: [u8; 32],
    /// The chain verified against a trust anchor of `/oic/sec/cred`.
    pub chain_verified: bool,
}

impl PeerIdentity {
    /// From the peer's DER leaf certificate (what rustls gives as `peer_certificates()[0]`).
    pub fn from_certificate_der(
        der: &[u8],
        chain_verified: bool,
    ) -> Result<PeerIdentity, x509::Error> {
        let cert = x509::Certificate::from_der(der)?;
        Ok(PeerIdentity {
            uuid: cert.cn_uuid(),
            spki_sha256: cert.spki_sha256(),
            chain_verified,
        })
    }
}

impl fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerIdentity")
            .field("uuid", &self.uuid)
            .field("spki_sha256", &x509::hex(&self.spki_sha256))
            .field("chain_verified", &self.chain_verified)
            .finish()
    }
}

/// The owner, as recorded at the ownership transfer.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerIdentity {
    /// `devowneruuid`.
    pub uuid: String,
    /// SHA-256 of the owner certificate's SubjectPublicKeyInfo, lower-case hex.
    pub spki_sha256: String,
}

impl fmt::Debug for OwnerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnerIdentity")
            .field("uuid", &self.uuid)
            .field("spki_sha256", &self.spki_sha256)
            .finish()
    }
}

/// Something the daemon has to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityEvent {
    /// A Mediator took ownership (the device is now in RFPRO). Other connections were opened
    /// before there was an owner; the daemon may close them.
    OwnershipTransferred { owner_uuid: String },
    /// `dos.s` changed (start the cloud in RFNOP, stop it when leaving RFNOP).
    StateChanged { from: DosState, to: DosState },
    /// `dos.s` was set to RESET: deregister from the cloud, wipe its state, then call
    /// [`SecurityState::reset`].
    FactoryResetRequested,
    /// `/oic/sec/cred` changed: rebuild the TLS configurations.
    CredentialsChanged,
    /// `/oic/sec/acl2` changed.
    AclChanged,
}

/// A state file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateError(pub String);

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "security state: {}", self.0)
    }
}

impl std::error::Error for StateError {}

/// Everything the device persists about its security. Its only secrets are the PSKs of
/// `/oic/sec/cred` (the state file is mode 0600, `Debug` hides them); the PIN and the private
/// key live elsewhere.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecurityState {
    version: u32,
    pstat: pstat::Pstat,
    doxm: doxm::Doxm,
    creds: cred::CredStore,
    acl: acl::Acl,
    owner: Option<OwnerIdentity>,
    /// `oxms`: set by the daemon at every start, not persisted.
    #[serde(skip)]
    offered: Vec<u16>,
    #[serde(skip)]
    dirty: bool,
    #[serde(skip)]
    events: Vec<SecurityEvent>,
}

impl SecurityState {
    /// Factory state of device `di`: RFOTM, unowned, no credentials, no ACEs.
    pub fn new(di: &str) -> SecurityState {
        SecurityState {
            version: STATE_VERSION,
            pstat: pstat::Pstat::new(),
            doxm: doxm::Doxm::new(&di.to_ascii_lowercase()),
            creds: cred::CredStore::new(),
            acl: acl::Acl::new(),
            owner: None,
            offered: vec![doxm::OXM_SPAKE2],
            dirty: true,
            events: Vec::new(),
        }
    }

    /// The persisted form (CBOR).
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Serialising plain structs into a Vec cannot fail.
        if ciborium::ser::into_writer(self, &mut out).is_err() {
            out.clear();
        }
        out
    }

    /// Loads the persisted form, checking its version and consistency.
    pub fn from_cbor(bytes: &[u8]) -> Result<SecurityState, StateError> {
        let mut state: SecurityState = ciborium::de::from_reader(bytes)
            .map_err(|e| StateError(format!("cannot decode: {e}")))?;
        state.offered = vec![doxm::OXM_SPAKE2];
        if state.version != STATE_VERSION {
            return Err(StateError(format!(
                "version {} is not the supported {STATE_VERSION}",
                state.version
            )));
        }
        if !is_uuid(&state.doxm.deviceuuid) {
            return Err(StateError("deviceuuid is not a UUID".into()));
        }
        let owned_state = matches!(
            state.pstat.state,
            DosState::Rfpro | DosState::Rfnop | DosState::Sreset
        );
        if state.doxm.owned != state.owner.is_some() || (owned_state && !state.doxm.owned) {
            return Err(StateError("ownership and onboarding state disagree".into()));
        }
        Ok(state)
    }

    /// `di`.
    pub fn di(&self) -> &str {
        &self.doxm.deviceuuid
    }

    /// `dos.s`.
    pub fn dos(&self) -> DosState {
        self.pstat.state
    }

    pub fn pstat(&self) -> &pstat::Pstat {
        &self.pstat
    }

    pub fn doxm(&self) -> &doxm::Doxm {
        &self.doxm
    }

    pub fn creds(&self) -> &cred::CredStore {
        &self.creds
    }

    pub fn acl(&self) -> &acl::Acl {
        &self.acl
    }

    pub fn owner(&self) -> Option<&OwnerIdentity> {
        self.owner.as_ref()
    }

    /// Whether the state changed since the last call (then persist it).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Events since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<SecurityEvent> {
        std::mem::take(&mut self.events)
    }

    fn changed(&mut self, event: Option<SecurityEvent>) {
        self.dirty = true;
        self.events.extend(event);
    }

    /// Whether `peer` is the owner: it holds the key recorded at the ownership transfer, or,
    /// for an owner recorded without one (a Random PIN transfer, whose owner has a PSK), its
    /// certificate chains to a trust anchor and names the owner's UUID.
    pub fn is_owner(&self, peer: &PeerIdentity) -> bool {
        self.owner.as_ref().is_some_and(|o| {
            if o.spki_sha256.is_empty() {
                peer.chain_verified
                    && peer
                        .uuid
                        .as_deref()
                        .is_some_and(|u| u.eq_ignore_ascii_case(&o.uuid))
            } else {
                o.spki_sha256 == x509::hex(&peer.spki_sha256)
            }
        })
    }

    /// The requester for the ACL from a connection: `peer` is `None` without a client
    /// certificate; `secure_transport` says whether the request came over TLS. An unverified
    /// certificate's CN is not believed (no `uuid`), unless it is the owner's key.
    pub fn requester(&self, peer: Option<&PeerIdentity>, secure_transport: bool) -> Requester {
        let Some(peer) = peer.filter(|_| secure_transport) else {
            return Requester {
                secure_transport,
                ..Requester::default()
            };
        };
        let is_owner = self.is_owner(peer);
        let authenticated = is_owner || peer.chain_verified;
        Requester {
            uuid: if authenticated {
                peer.uuid.clone()
            } else {
                None
            },
            authenticated,
            secure_transport,
            is_owner,
            doc: false,
        }
    }

    /// The access decision for a target and operation ([`acl::evaluate`]).
    pub fn authorize(&self, requester: &Requester, target: &Target<'_>, op: Operation) -> Decision {
        acl::evaluate(self.pstat.state, &self.acl, requester, target, op)
    }

    /// The access decision for a request: its path (SVR by [`acl::is_svr_href`]), its `?if=`
    /// and its method. Pass the resource's default interface with [`SecurityState::authorize`]
    /// instead when ACEs restrict interfaces.
    pub fn authorize_request(&self, requester: &Requester, req: &Request) -> Decision {
        let mut target = Target::new(&req.path);
        target.interface = req.query_value("if");
        self.authorize(requester, &target, Operation::of(req))
    }

    /// Records `peer` as the owner after a confirmed ownership transfer and moves to RFPRO.
    pub fn take_ownership(&mut self, peer: &PeerIdentity) -> Result<(), OtmError> {
        if self.doxm.owned || self.pstat.state != DosState::Rfotm {
            return Err(OtmError::AlreadyOwned);
        }
        let uuid = peer.uuid.clone().ok_or(OtmError::NoClientCertificate)?;
        self.doxm.set_owner(&uuid);
        self.pstat.rowneruuid = uuid.clone();
        self.creds.rowneruuid = uuid.clone();
        self.acl.rowneruuid = uuid.clone();
        self.owner = Some(OwnerIdentity {
            uuid: uuid.clone(),
            spki_sha256: x509::hex(&peer.spki_sha256),
        });
        let from = self.pstat.state;
        // RFOTM → RFPRO is allowed once owned.
        let _ = self
            .pstat
            .transition(DosState::Rfpro, true, Trigger::Internal);
        self.changed(Some(SecurityEvent::OwnershipTransferred {
            owner_uuid: uuid,
        }));
        self.changed(Some(SecurityEvent::StateChanged {
            from,
            to: self.pstat.state,
        }));
        Ok(())
    }

    /// Changes `dos.s` (a POST to pstat, or the daemon). RESET raises
    /// [`SecurityEvent::FactoryResetRequested`].
    pub fn set_dos(&mut self, to: DosState, trigger: Trigger) -> Result<bool, TransitionError> {
        let from = self.pstat.state;
        let changed = self.pstat.transition(to, self.doxm.owned, trigger)?;
        if changed {
            self.changed(Some(SecurityEvent::StateChanged { from, to }));
            if to == DosState::Reset {
                self.changed(Some(SecurityEvent::FactoryResetRequested));
            }
        }
        Ok(changed)
    }

    /// Starts a factory reset (`/oic/mnt` `fr`): `dos.s` = RESET, `dos.p` = true, and
    /// [`SecurityEvent::FactoryResetRequested`].
    pub fn begin_factory_reset(&mut self) {
        let _ = self.set_dos(DosState::Reset, Trigger::Internal);
    }

    /// Whether a factory reset was started and not finished (also after a restart).
    pub fn reset_pending(&self) -> bool {
        self.pstat.pending()
    }

    /// Finishes a factory reset: unowned, no credentials, no ACEs, no owner, RFOTM; `di` kept.
    pub fn reset(&mut self) {
        let di = self.doxm.deviceuuid.clone();
        self.reset_with_deviceuuid(&di);
    }

    /// [`SecurityState::reset`] with a new device UUID.
    pub fn reset_with_deviceuuid(&mut self, di: &str) {
        let from = self.pstat.state;
        let events = std::mem::take(&mut self.events);
        let offered = std::mem::take(&mut self.offered);
        *self = SecurityState::new(di);
        self.events = events;
        self.set_offered_oxms(&offered);
        if from != DosState::Rfotm {
            self.changed(Some(SecurityEvent::StateChanged {
                from,
                to: DosState::Rfotm,
            }));
        }
        self.changed(Some(SecurityEvent::CredentialsChanged));
        self.changed(Some(SecurityEvent::AclChanged));
    }

    /// Installs a credential the device brings itself (a manufacturer certificate from the
    /// image), bypassing the network rules but not the validation.
    pub fn add_local_credential(&mut self, cred: NewCred) -> Result<u32, ResourceError> {
        self.update_creds(|c| c.add(cred))
    }

    /// Runs `f` on the credential store; marks a change (and raises
    /// [`SecurityEvent::CredentialsChanged`]) only if it succeeded and changed something.
    pub(crate) fn update_creds<T>(
        &mut self,
        f: impl FnOnce(&mut cred::CredStore) -> Result<T, ResourceError>,
    ) -> Result<T, ResourceError> {
        let before = self.creds.clone();
        let out = f(&mut self.creds)?;
        if self.creds != before {
            self.changed(Some(SecurityEvent::CredentialsChanged));
        }
        Ok(out)
    }

    /// Runs `f` on the ACL; marks a change (and raises [`SecurityEvent::AclChanged`]) only if
    /// it succeeded and changed something.
    pub(crate) fn update_acl<T>(
        &mut self,
        f: impl FnOnce(&mut acl::Acl) -> Result<T, ResourceError>,
    ) -> Result<T, ResourceError> {
        let before = self.acl.clone();
        let out = f(&mut self.acl)?;
        if self.acl != before {
            self.changed(Some(SecurityEvent::AclChanged));
        }
        Ok(out)
    }

    pub(crate) fn set_rowneruuid(&mut self, which: Rowner, uuid: String) {
        let slot = match which {
            Rowner::Doxm => &mut self.doxm.rowneruuid,
            Rowner::Pstat => &mut self.pstat.rowneruuid,
        };
        if *slot != uuid {
            *slot = uuid;
            self.changed(None);
        }
    }
}

/// Which resource's `rowneruuid` to set.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Rowner {
    Doxm,
    Pstat,
}
