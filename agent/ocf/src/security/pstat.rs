//! `/oic/sec/pstat` (rt `oic.r.pstat`): the device onboarding state `dos`.
//!
//! States (OCF Security §8.4, swagger `oic.sec.pstat`): 0 RESET, 1 RFOTM (ready for ownership
//! transfer), 2 RFPRO (ready for provisioning), 3 RFNOP (normal operation), 4 SRESET (soft
//! reset).
//!
//! Transitions ([`check_transition`]):
//!
//! | from | to | how |
//! |---|---|---|
//! | any | RESET | factory reset (POST `dos.s=0`, `/oic/mnt` `fr`, or the daemon) |
//! | RESET | RFOTM | automatic, when the reset has been carried out ([`super::SecurityState::reset`]); never by a POST |
//! | RFOTM | RFPRO | after ownership transfer (done by the OTM itself; a POST is accepted only once owned) |
//! | RFPRO | RFNOP | POST, provisioning finished |
//! | RFNOP | RFPRO | POST, re-provisioning |
//! | RFPRO, RFNOP | SRESET | POST |
//! | SRESET | RFPRO | POST |
//!
//! Everything else is refused with [`TransitionError`] (4.00 with the reason). A POST of the
//! state the device is already in is a successful no-op (a Mediator may repeat `dos.s=2` after
//! the OTM already moved the device to RFPRO).
//!
//! Other properties: `dos.p` (read-only "pending": true while a factory reset is under way),
//! `isop` (true exactly in RFNOP), `cm` (current mode, informational: 1 "reset" in RESET, 2
//! "owner transfer needed" in RFOTM, else 0), `tm` (target mode, always 0), `om`/`sm`
//! (operational / supported mode: 4, client-directed — the Mediator drives provisioning) and
//! `rowneruuid` (the resource owner, the device owner once owned).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::util::NIL_UUID;

/// `dos.s`, the device onboarding state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DosState {
    /// 0: factory reset in progress.
    Reset,
    /// 1: ready for ownership transfer (unowned).
    Rfotm,
    /// 2: ready for provisioning (owned, not operational).
    Rfpro,
    /// 3: normal operation (cloud traffic allowed).
    Rfnop,
    /// 4: soft reset.
    Sreset,
}

impl DosState {
    /// All states, in number order.
    pub const ALL: [DosState; 5] = [
        DosState::Reset,
        DosState::Rfotm,
        DosState::Rfpro,
        DosState::Rfnop,
        DosState::Sreset,
    ];

    /// The wire number (`dos.s`).
    pub fn number(self) -> u8 {
        match self {
            DosState::Reset => 0,
            DosState::Rfotm => 1,
            DosState::Rfpro => 2,
            DosState::Rfnop => 3,
            DosState::Sreset => 4,
        }
    }

    pub fn from_number(n: u64) -> Option<DosState> {
        DosState::ALL
            .into_iter()
            .find(|s| u64::from(s.number()) == n)
    }

    /// The spec's name.
    pub fn name(self) -> &'static str {
        match self {
            DosState::Reset => "RESET",
            DosState::Rfotm => "RFOTM",
            DosState::Rfpro => "RFPRO",
            DosState::Rfnop => "RFNOP",
            DosState::Sreset => "SRESET",
        }
    }
}

impl fmt::Display for DosState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.number())
    }
}

/// Who asks for a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A POST to `/oic/sec/pstat`.
    Request,
    /// The device itself (end of a reset, end of the ownership transfer).
    Internal,
}

/// A refused transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransitionError {
    /// The pair is not in the table.
    NotAllowed { from: DosState, to: DosState },
    /// RFOTM → RFPRO before the ownership transfer completed.
    NotOwned,
    /// RESET → RFOTM is the device's own step at the end of a reset, not a request's.
    Automatic { to: DosState },
}

impl fmt::Display for TransitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransitionError::NotAllowed { from, to } => {
                write!(f, "dos.s cannot change from {from} to {to}")
            }
            TransitionError::NotOwned => {
                f.write_str("dos.s cannot leave RFOTM before the ownership transfer completed")
            }
            TransitionError::Automatic { to } => write!(
                f,
                "the device enters {to} by itself when a reset completes; it cannot be requested"
            ),
        }
    }
}

impl std::error::Error for TransitionError {}

/// Whether `from → to` is allowed (see the module table). `owned` is doxm's `owned`.
pub fn check_transition(
    from: DosState,
    to: DosState,
    owned: bool,
    trigger: Trigger,
) -> Result<(), TransitionError> {
    use DosState::*;
    match (from, to) {
        (_, Reset) => Ok(()),
        (Reset, Rfotm) if trigger == Trigger::Internal => Ok(()),
        (Reset, Rfotm) => Err(TransitionError::Automatic { to }),
        (Rfotm, Rfpro) if owned => Ok(()),
        (Rfotm, Rfpro) => Err(TransitionError::NotOwned),
        (Rfpro, Rfnop) | (Rfnop, Rfpro) | (Rfpro, Sreset) | (Rfnop, Sreset) | (Sreset, Rfpro) => {
            Ok(())
        }
        _ => Err(TransitionError::NotAllowed { from, to }),
    }
}

/// Operational / supported mode 4: client-directed provisioning (the Mediator drives it).
pub const MODE_CLIENT_DIRECTED: u8 = 4;

/// The pstat resource's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pstat {
    /// `dos.s`.
    pub state: DosState,
    /// `rowneruuid`.
    pub rowneruuid: String,
}

impl Default for Pstat {
    fn default() -> Self {
        Pstat::new()
    }
}

impl Pstat {
    /// Factory state: RFOTM, no resource owner.
    pub fn new() -> Pstat {
        Pstat {
            state: DosState::Rfotm,
            rowneruuid: NIL_UUID.to_owned(),
        }
    }

    /// `dos.p`: a transition is pending (a factory reset the daemon has not finished yet).
    pub fn pending(&self) -> bool {
        self.state == DosState::Reset
    }

    /// `isop`: the device is operational.
    pub fn isop(&self) -> bool {
        self.state == DosState::Rfnop
    }

    /// `cm`, the current mode bitmask (1 reset, 2 owner transfer needed).
    pub fn cm(&self) -> u8 {
        match self.state {
            DosState::Reset => 1,
            DosState::Rfotm => 2,
            _ => 0,
        }
    }

    /// Moves to `to` if [`check_transition`] allows it. Moving to the current state is an
    /// accepted no-op. Returns whether the state changed.
    pub fn transition(
        &mut self,
        to: DosState,
        owned: bool,
        trigger: Trigger,
    ) -> Result<bool, TransitionError> {
        if to == self.state {
            return Ok(false);
        }
        check_transition(self.state, to, owned, trigger)?;
        self.state = to;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DosState::*;

    /// The full 5×5 table, for requests by an owner's Mediator (owned = true).
    #[test]
    fn every_transition_is_allowed_or_refused_as_specified() {
        let allowed = [
            (Reset, Reset),
            (Rfotm, Reset),
            (Rfpro, Reset),
            (Rfnop, Reset),
            (Sreset, Reset),
            (Rfotm, Rfpro),
            (Rfpro, Rfnop),
            (Rfnop, Rfpro),
            (Rfpro, Sreset),
            (Rfnop, Sreset),
            (Sreset, Rfpro),
        ];
        for from in DosState::ALL {
            for to in DosState::ALL {
                let r = check_transition(from, to, true, Trigger::Request);
                assert_eq!(
                    r.is_ok(),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}: {r:?}"
                );
                if let Err(e) = r {
                    assert!(!e.to_string().is_empty());
                }
            }
        }
    }

    #[test]
    fn reset_to_rfotm_is_automatic_only() {
        assert_eq!(
            check_transition(Reset, Rfotm, false, Trigger::Request),
            Err(TransitionError::Automatic { to: Rfotm })
        );
        assert!(check_transition(Reset, Rfotm, false, Trigger::Internal).is_ok());
        // Internal does not widen anything else.
        assert!(check_transition(Rfotm, Rfnop, true, Trigger::Internal).is_err());
        assert!(check_transition(Reset, Rfpro, true, Trigger::Internal).is_err());
    }

    #[test]
    fn rfotm_to_rfpro_needs_ownership() {
        assert_eq!(
            check_transition(Rfotm, Rfpro, false, Trigger::Request),
            Err(TransitionError::NotOwned)
        );
        assert!(check_transition(Rfotm, Rfpro, true, Trigger::Internal).is_ok());
    }

    #[test]
    fn refused_pairs_name_both_states() {
        let e = check_transition(Rfotm, Rfnop, true, Trigger::Request).unwrap_err();
        assert_eq!(
            e,
            TransitionError::NotAllowed {
                from: Rfotm,
                to: Rfnop
            }
        );
        assert_eq!(
            e.to_string(),
            "dos.s cannot change from RFOTM (1) to RFNOP (3)"
        );
        for (from, to) in [
            (Sreset, Rfnop),
            (Sreset, Rfotm),
            (Rfpro, Rfotm),
            (Rfnop, Rfotm),
            (Reset, Rfnop),
        ] {
            assert!(
                check_transition(from, to, true, Trigger::Request).is_err(),
                "{from}->{to}"
            );
        }
    }

    #[test]
    fn same_state_is_a_no_op_and_flags_follow_the_state() {
        let mut p = Pstat::new();
        assert_eq!(p.state, Rfotm);
        assert!(!p.isop() && !p.pending());
        assert_eq!(p.cm(), 2);
        assert_eq!(p.transition(Rfotm, false, Trigger::Request), Ok(false));
        assert!(p.transition(Rfpro, false, Trigger::Request).is_err());
        assert_eq!(p.transition(Rfpro, true, Trigger::Internal), Ok(true));
        assert_eq!(p.transition(Rfpro, true, Trigger::Request), Ok(false));
        assert_eq!(p.transition(Rfnop, true, Trigger::Request), Ok(true));
        assert!(p.isop());
        assert_eq!(p.cm(), 0);
        assert_eq!(p.transition(Reset, true, Trigger::Request), Ok(true));
        assert!(p.pending() && !p.isop());
        assert_eq!(p.cm(), 1);
    }

    #[test]
    fn numbers_round_trip() {
        for s in DosState::ALL {
            assert_eq!(DosState::from_number(u64::from(s.number())), Some(s));
        }
        assert_eq!(DosState::from_number(5), None);
    }
}
