//! OCF's standard ownership transfer, device side: the Device Ownership Connection (DOC).
//!
//! A Mediator selects a method in the clear (`POST /oic/sec/doxm {"oxmsel": n}`, RFOTM only),
//! then opens a DTLS session (Manufacturer Certificate also over coaps+tcp) that the method
//! authenticates: the Random PIN PSK ([`super::dtls_keys::pin_psk`], identity
//! [`super::dtls_keys::RDP_IDENTITY`]), or the device's manufacturer certificate with the
//! Mediator's certificate in return. That session is the DOC. In RFOTM it may write every
//! SVR (OCF Security §7.3.1; iotivity-lite's `oc_sec_check_acl` grants the same), in the order
//! of OCF-PROTOCOL.md §8.5: `pstat.om`, `doxm.devowneruuid`, `doxm.deviceuuid`, the
//! `rowneruuid`s, the owner credential, `doxm.owned = true`. Then the Mediator moves the device
//! to RFPRO as its owner.
//!
//! The owner credential is a symmetric pair-wise PSK whose subject is the owner. Sent with an
//! empty `privatedata.data` it is derived from the DOC's DTLS key block
//! ([`super::dtls_keys::owner_psk`], OCF Security §7.3.2); plgd's client sends a random key
//! instead, which is stored as sent. The owner then authenticates with that PSK over DTLS, or
//! with the client certificate it used on a Manufacturer Certificate DOC.
//!
//! A fresh Random PIN is made for each selection of method 1, and it answers one handshake
//! only, for at most [`RDP_PIN_LIFETIME`]: a Random PIN handshake lets its peer test PINs
//! offline, so one PIN must not see two.

use std::time::Duration;

use super::doxm::{OXM_MFG_CERT, OXM_RANDOM_PIN, OXM_SPAKE2};
use super::dtls_keys::{owner_psk, uuid_bytes, Oxm, SessionSecrets};
use super::pstat::DosState;
use super::util::{as_text, as_uint, bad, echo, parse_uuid, NIL_UUID};
use super::{OwnerIdentity, PeerIdentity, Requester, SecurityEvent, SecurityState};
use crate::resource::{Props, ResourceError, Value};
use crate::x509;

/// How long a Random PIN stays good for its one handshake.
pub const RDP_PIN_LIFETIME: Duration = Duration::from_secs(120);

/// How a secure session authenticated its peer, as its handshake showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionAuth {
    /// The Random PIN PSK.
    RandomPin,
    /// The PSK of a symmetric pair-wise credential whose subject is this UUID.
    Psk { subject: String },
    /// A certificate suite: the device showed its certificate; the peer's, if it sent one.
    Certificate(Option<PeerIdentity>),
}

/// What a DOC's write to `/oic/sec/doxm` changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DoxmChange {
    /// `deviceuuid` was given a new value: the device's `di` is now this.
    pub new_di: Option<String>,
    /// `owned` became true.
    pub owned: bool,
}

impl SecurityState {
    /// The ownership transfer methods the device offers (`oxms`), ascending.
    pub fn offered_oxms(&self) -> &[u16] {
        &self.offered
    }

    /// Sets the methods offered; [`OXM_SPAKE2`] is always among them.
    pub fn set_offered_oxms(&mut self, oxms: &[u16]) {
        let mut v: Vec<u16> = oxms
            .iter()
            .copied()
            .filter(|o| [OXM_RANDOM_PIN, OXM_MFG_CERT, OXM_SPAKE2].contains(o))
            .chain([OXM_SPAKE2])
            .collect();
        v.sort_unstable();
        v.dedup();
        self.offered = v;
        if !self.offered.contains(&self.doxm.oxmsel) {
            self.doxm.oxmsel = OXM_SPAKE2;
        }
    }

    /// Whether a session authenticated by `auth` that opens now is a DOC: RFOTM, unowned, and
    /// the handshake was that of the selected method (a Manufacturer Certificate DOC needs the
    /// Mediator's certificate, which the owner is later recognised by).
    pub fn is_doc(&self, auth: &SessionAuth) -> bool {
        if self.pstat.state != DosState::Rfotm || self.doxm.owned {
            return false;
        }
        let sel = self.doxm.oxmsel;
        self.offered.contains(&sel)
            && match auth {
                SessionAuth::RandomPin => sel == OXM_RANDOM_PIN,
                SessionAuth::Certificate(Some(_)) => sel == OXM_MFG_CERT,
                _ => false,
            }
    }

    /// The requester of a DOC.
    pub fn requester_doc(&self) -> Requester {
        Requester {
            secure_transport: true,
            doc: true,
            ..Requester::default()
        }
    }

    /// The requester of a session authenticated by the PSK of `subject`'s credential.
    pub fn requester_psk(&self, subject: &str) -> Requester {
        Requester {
            uuid: Some(subject.to_string()),
            authenticated: true,
            secure_transport: true,
            is_owner: self
                .owner
                .as_ref()
                .is_some_and(|o| o.uuid.eq_ignore_ascii_case(subject)),
            doc: false,
        }
    }

    /// `POST /oic/sec/doxm {"oxmsel": n}` in the clear: selects an offered method while
    /// unowned. Returns the method.
    pub fn select_oxm(&mut self, props: &Props) -> Result<u16, ResourceError> {
        if let Some(k) = props.keys().find(|k| *k != "oxmsel") {
            return Err(bad(format!(
                "only `oxmsel` may be written without a secure session, not `{}`",
                echo(k)
            )));
        }
        let v = props
            .get("oxmsel")
            .ok_or_else(|| bad("`oxmsel` is required"))?;
        let sel = as_uint(v, "oxmsel", u64::from(u16::MAX))?;
        if self.pstat.state != DosState::Rfotm || self.doxm.owned {
            return Err(bad(
                "`oxmsel` may only be selected while the device is unowned",
            ));
        }
        let sel = u16::try_from(sel).map_err(|_| bad("`oxmsel` is out of range"))?;
        if !self.offered.contains(&sel) {
            return Err(bad(format!(
                "`oxmsel` {sel} is not offered; `oxms` is {:?}",
                self.offered
            )));
        }
        if self.doxm.oxmsel != sel {
            self.doxm.oxmsel = sel;
            self.changed(None);
        }
        Ok(sel)
    }

    /// A DOC's `POST /oic/sec/doxm`: `devowneruuid`, `deviceuuid`, `rowneruuid` and `owned`
    /// (true). The whole body is checked before anything changes. `client` is the certificate
    /// the Mediator showed on the DOC, if any: the owner is then also recognised by its key.
    pub fn doc_post_doxm(
        &mut self,
        props: &Props,
        client: Option<&PeerIdentity>,
    ) -> Result<DoxmChange, ResourceError> {
        if self.pstat.state != DosState::Rfotm {
            return Err(bad("the device is not in RFOTM"));
        }
        let uuid_of = |key: &str| -> Result<Option<String>, ResourceError> {
            props
                .get(key)
                .map(|v| parse_uuid(as_text(v, key)?, key))
                .transpose()
        };
        for key in props.keys() {
            match key.as_str() {
                "devowneruuid" | "deviceuuid" | "rowneruuid" | "owned" => {}
                "oxmsel" => {
                    return Err(bad(
                        "`oxmsel` cannot change inside the ownership transfer session",
                    ))
                }
                "oxms" | "sct" => return Err(bad(format!("`{key}` is read-only"))),
                other => {
                    return Err(bad(format!(
                        "unknown property `{}` in /oic/sec/doxm",
                        echo(other)
                    )))
                }
            }
        }
        let owner = uuid_of("devowneruuid")?;
        let device = uuid_of("deviceuuid")?;
        let rowner = uuid_of("rowneruuid")?;
        let owned = match props.get("owned") {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => return Err(bad("`owned` must be a boolean")),
        };
        if self.doxm.owned && (owner.is_some() || device.is_some() || owned == Some(false)) {
            return Err(bad("the device is owned already"));
        }
        if owner.as_deref() == Some(NIL_UUID) || device.as_deref() == Some(NIL_UUID) {
            return Err(bad("the nil UUID names nobody"));
        }
        let owner_after = owner
            .clone()
            .unwrap_or_else(|| self.doxm.devowneruuid.clone());
        if owned == Some(true) && !self.doxm.owned && owner_after == NIL_UUID {
            return Err(bad("`owned` needs `devowneruuid` first"));
        }
        let mut change = DoxmChange::default();
        if let Some(o) = owner {
            self.doxm.devowneruuid = o;
        }
        if let Some(d) = device.filter(|d| *d != self.doxm.deviceuuid) {
            self.doxm.deviceuuid = d.clone();
            change.new_di = Some(d);
        }
        if let Some(r) = rowner {
            self.doxm.rowneruuid = r;
        }
        if owned == Some(true) && !self.doxm.owned {
            self.doxm.owned = true;
            self.owner = Some(OwnerIdentity {
                uuid: owner_after.clone(),
                spki_sha256: client.map_or_else(String::new, |c| x509::hex(&c.spki_sha256)),
            });
            change.owned = true;
            self.changed(Some(SecurityEvent::OwnershipTransferred {
                owner_uuid: owner_after,
            }));
        }
        self.changed(None);
        Ok(change)
    }

    /// A DOC's `POST /oic/sec/cred`: as any credential write, and a PSK credential with an
    /// empty key gets the owner PSK derived from the DOC's DTLS session `secrets`. Its subject
    /// must be the `rowneruuid` of the same body or the owner.
    pub fn doc_post_cred(
        &mut self,
        props: &Props,
        secrets: Option<&SessionSecrets>,
    ) -> Result<(), ResourceError> {
        let di = self.di().to_owned();
        let oxm = Oxm::from_id(self.doxm.oxmsel);
        let devowner = self.doxm.devowneruuid.clone();
        let derive = |subject: &str, rowner: Option<&str>| -> Result<Vec<u8>, ResourceError> {
            if rowner != Some(subject) && subject != devowner {
                return Err(bad(
                    "a derived owner credential's `subjectuuid` must be the `rowneruuid`",
                ));
            }
            let (Some(secrets), Some(oxm)) = (secrets, oxm) else {
                return Err(bad(
                    "an empty `privatedata.data` (derive the owner PSK) needs the DTLS session \
                     of a Random PIN or Manufacturer Certificate ownership transfer; send the key",
                ));
            };
            let (Some(owner), Some(device)) = (uuid_bytes(subject), uuid_bytes(&di)) else {
                return Err(bad("`subjectuuid` is not a UUID"));
            };
            owner_psk(secrets, oxm, &owner, &device)
                .map(|k| k.to_vec())
                .ok_or_else(|| {
                    bad(format!(
                        "the session's cipher suite {:#06x} has no key block to derive from",
                        secrets.suite
                    ))
                })
        };
        self.update_creds(|c| c.apply_update_deriving(props, &di, &derive))
            .map(|_| ())
    }
}
