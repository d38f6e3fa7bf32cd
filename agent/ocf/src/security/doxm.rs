//! `/oic/sec/doxm` (rt `oic.r.doxm`): device ownership transfer method and ownership.
//!
//! Properties (swagger `oic.sec.doxm`):
//!
//! | key | type | here |
//! |---|---|---|
//! | `oxms` | array of int | the methods offered: 1 Random PIN, 2 Manufacturer Certificate, 65280 [`OXM_SPAKE2`] |
//! | `oxmsel` | int | the method selected for the next ownership transfer ([`OXM_SPAKE2`] by default) |
//! | `sct` | int (bitmask) | 8: asymmetric signing keys with certificates (the only credential type accepted) |
//! | `owned` | bool | true after the ownership transfer |
//! | `deviceuuid` | UUID | the device's `di` |
//! | `devowneruuid` | UUID | the owner (the Mediator's certificate CN `uuid:<…>`), nil UUID while unowned |
//! | `rowneruuid` | UUID | resource owner, = `devowneruuid` once owned |
//!
//! **The ownership transfer methods.** OCF's Random PIN (1) and Manufacturer Certificate (2)
//! run over a DTLS session (Mfg also over coaps+tcp) in which the Mediator then writes
//! `devowneruuid`, `owned` and the owner credential itself ([`super::doc`]). Just Works (0) is
//! never offered: it needs the anonymous suite 0xFF00 that only a patched mbedTLS has. Beside
//! them the device offers a vendor method, `x.org.ocfpi.spake2`, id 0xFF00 = 65280 from the
//! vendor range (0xFF00–0xFFFF): SPAKE2 with the setup PIN, confirmed over the TLS exporter
//! ([`super::otm`]); it is the Mediator's default, since a PIN it protects cannot be tested
//! offline.
//!
//! Updates: `oxms` and `sct` are read-only. While unowned (RFOTM), `oxmsel` may be set in the
//! clear to an offered method, and a Device Ownership Connection ([`super::doc`]) may write
//! `devowneruuid`, `deviceuuid`, `rowneruuid` and `owned`; otherwise those change only through
//! [`super::otm`] or a factory reset. `rowneruuid` takes a UUID.

use serde::{Deserialize, Serialize};

use super::util::NIL_UUID;

/// Vendor OTM id of SPAKE2 + TLS-exporter confirmation (0xFF00, vendor range).
pub const OXM_SPAKE2: u16 = 0xFF00;
/// OCF Random PIN (`oic.sec.doxm.rdp`).
pub const OXM_RANDOM_PIN: u16 = 1;
/// OCF Manufacturer Certificate (`oic.sec.doxm.mfgcert`).
pub const OXM_MFG_CERT: u16 = 2;
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
    /// The method selected for the ownership transfer.
    #[serde(default = "spake2")]
    pub oxmsel: u16,
}

fn spake2() -> u16 {
    OXM_SPAKE2
}

impl Doxm {
    /// Factory state for device `di`.
    pub fn new(di: &str) -> Doxm {
        Doxm {
            owned: false,
            deviceuuid: di.to_owned(),
            devowneruuid: NIL_UUID.to_owned(),
            rowneruuid: NIL_UUID.to_owned(),
            oxmsel: OXM_SPAKE2,
        }
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
        assert_eq!(d.oxmsel, 65280);
        d.set_owner("bbbbbbbb-0000-0000-0000-000000000002");
        assert!(d.owned);
        assert_eq!(d.devowneruuid, "bbbbbbbb-0000-0000-0000-000000000002");
        assert_eq!(d.rowneruuid, d.devowneruuid);
        assert_eq!(d.deviceuuid, "aaaaaaaa-0000-0000-0000-000000000001");
    }
}
