//! `/oic/sec/doxm` (rt `oic.r.doxm`): device ownership transfer method and ownership.
//!
//! Properties (swagger `oic.sec.doxm`):
//!
//! | key | type | here |
//! |---|---|---|
//! | `oxms` | array of int | `[65280]`: [`OXM_SPAKE2`], our one method |
//! | `oxmsel` | int | [`OXM_SPAKE2`] (the only method there is to select) |
//! | `sct` | int (bitmask) | 8: asymmetric signing keys with certificates (the only credential type accepted) |
//! | `owned` | bool | true after the ownership transfer |
//! | `deviceuuid` | UUID | the device's `di` |
//! | `devowneruuid` | UUID | the owner (the Mediator's certificate CN `uuid:<…>`), nil UUID while unowned |
//! | `rowneruuid` | UUID | resource owner, = `devowneruuid` once owned |
//!
//! **The ownership transfer method.** The OCF OTMs (Just Works 0, random PIN 1, manufacturer
//! certificate 2, …) run over DTLS, which rustls does not have. This device offers a vendor
//! method instead, `x.org.ocfpi.spake2`, with the integer id 0xFF00 = 65280 from the range the
//! OCF Security spec reserves for vendor-specific OTMs (0xFF00–0xFFFF): SPAKE2 with the setup
//! PIN, confirmed over the TLS exporter (see [`super::otm`]). It is a documented deviation.
//!
//! Updates: `owned`, `deviceuuid`, `devowneruuid`, `oxms`, `sct` are read-only (ownership
//! changes only through [`super::otm`] or a factory reset); `oxmsel` may be written with the
//! value it already has; `rowneruuid` takes a UUID.

use serde::{Deserialize, Serialize};

use super::util::NIL_UUID;

/// Vendor OTM id of SPAKE2 + TLS-exporter confirmation (0xFF00, vendor range).
pub const OXM_SPAKE2: u16 = 0xFF00;
/// Its name, for documentation and logs.
pub const OXM_SPAKE2_NAME: &str = "x.org.ocfpi.spake2";
/// `sct` bit 8: asymmetric signing key with certificate.
pub const SCT_SIGNED_ASYMMETRIC: u8 = 8;

/// The doxm resource's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Doxm {
    pub owned: bool,
    /// The device UUID (`di`).
    pub deviceuuid: String,
    /// The owner's UUID, [`NIL_UUID`] while unowned.
    pub devowneruuid: String,
    /// The resource owner's UUID, [`NIL_UUID`] while unowned.
    pub rowneruuid: String,
}

impl Doxm {
    /// Factory state for device `di`.
    pub fn new(di: &str) -> Doxm {
        Doxm {
            owned: false,
            deviceuuid: di.to_owned(),
            devowneruuid: NIL_UUID.to_owned(),
            rowneruuid: NIL_UUID.to_owned(),
        }
    }

    /// `oxms`.
    pub fn oxms(&self) -> [u16; 1] {
        [OXM_SPAKE2]
    }

    /// Records the new owner.
    pub fn set_owner(&mut self, owner_uuid: &str) {
        self.owned = true;
        self.devowneruuid = owner_uuid.to_owned();
        self.rowneruuid = owner_uuid.to_owned();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factory_state_is_unowned_and_ownership_sets_both_owners() {
        let mut d = Doxm::new("aaaaaaaa-0000-0000-0000-000000000001");
        assert!(!d.owned);
        assert_eq!(d.devowneruuid, NIL_UUID);
        assert_eq!(d.oxms(), [65280]);
        d.set_owner("bbbbbbbb-0000-0000-0000-000000000002");
        assert!(d.owned);
        assert_eq!(d.devowneruuid, "bbbbbbbb-0000-0000-0000-000000000002");
        assert_eq!(d.rowneruuid, d.devowneruuid);
        assert_eq!(d.deviceuuid, "aaaaaaaa-0000-0000-0000-000000000001");
    }
}
