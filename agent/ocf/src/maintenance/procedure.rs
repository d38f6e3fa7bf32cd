//! The factory reset and the reboot as sans-IO procedures (OCF-PROTOCOL.md §9, README
//! "Maintenance").
//!
//! Each procedure is a state machine on the caller's clock, in the manner of quinn-proto: the
//! daemon takes the next step with `poll_step`, carries it out (a file, a socket, a command),
//! reports what came of it with the `now` it happened, and wakes the procedure at
//! `poll_timeout` with `handle_timeout(now)`. Every bound (the deregistration timeout, the
//! sign-out bound, the reboot command's limit, the reboot timeout) is kept here, so each is
//! tested without sleeping, and the daemon never decides what comes next.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::MaintenanceError;

/// The bounds of a factory reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetTiming {
    /// How long the cloud may take to answer the deregistration before the reset goes on
    /// without it (the session's deregistration timeout, OCF-PROTOCOL.md §4: 10 s, plus the
    /// driver's turn).
    pub deregister_timeout: Duration,
}

/// A step of the factory reset, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetStep {
    /// Record the reset (`security.cbor`: `dos.s` RESET, `p` set) before anything is wiped, so
    /// a crash from here on is finished on the next start. Already done for `/oic/mnt` (before
    /// its 2.04), in which case doing it again changes nothing.
    RecordReset,
    /// Deregister from the cloud (`DELETE /oic/sec/account` through the cloud session, which
    /// wipes its state whether or not the cloud answers). Report with
    /// [`FactoryReset::deregistered`]; the reset goes on without it after
    /// [`ResetTiming::deregister_timeout`].
    Deregister,
    /// Wipe the cloud configuration and tokens, credentials, ACEs and ownership; make a new
    /// identity key and `di`. Report with [`FactoryReset::wiped`].
    Wipe,
    /// The running device takes the new identity (resource tree, server certificate, ownership
    /// transfer, cloud session); CoAPCloudConf observers see `cps` uninitialized.
    NewIdentity,
    /// Close every secure connection: whatever its peer was allowed, it is a stranger now.
    CloseSecureConnections,
    /// The reset ended; `err` of `/oic/mnt` becomes this.
    Done(Option<MaintenanceError>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResetPhase {
    Deregistering { deadline: Instant },
    Wiping,
    Finished,
}

/// One factory reset (see [`ResetStep`] for its steps).
#[derive(Debug)]
pub struct FactoryReset {
    phase: ResetPhase,
    steps: VecDeque<ResetStep>,
    cloud_told: bool,
    error: Option<String>,
}

impl FactoryReset {
    /// Starts a factory reset at `now`.
    pub fn start(timing: ResetTiming, now: Instant) -> FactoryReset {
        FactoryReset {
            phase: ResetPhase::Deregistering {
                deadline: now + timing.deregister_timeout,
            },
            steps: VecDeque::from([ResetStep::RecordReset, ResetStep::Deregister]),
            cloud_told: false,
            error: None,
        }
    }

    /// The next step to carry out, if any.
    pub fn poll_step(&mut self) -> Option<ResetStep> {
        self.steps.pop_front()
    }

    /// When to call [`FactoryReset::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            ResetPhase::Deregistering { deadline } => Some(deadline),
            _ => None,
        }
    }

    /// Time passed: a deregistration without an answer by its deadline is given up (the cloud
    /// was not told).
    pub fn handle_timeout(&mut self, now: Instant) {
        if let ResetPhase::Deregistering { deadline } = self.phase {
            if now >= deadline {
                self.cloud_told = false;
                self.wipe();
            }
        }
    }

    /// The deregistration completed: `told` if the cloud answered (or there was no
    /// registration to tell it about). Late reports (after the timeout) change nothing.
    pub fn deregistered(&mut self, told: bool, now: Instant) {
        if let ResetPhase::Deregistering { deadline } = self.phase {
            // The report and the deadline raced: the deadline won.
            self.cloud_told = told && now <= deadline;
            self.wipe();
        }
    }

    fn wipe(&mut self) {
        self.phase = ResetPhase::Wiping;
        self.steps.push_back(ResetStep::Wipe);
    }

    /// The wipe is done; `error` says what could not be written (the reset is then finished on
    /// the next start). The state in memory is reset either way.
    pub fn wiped(&mut self, error: Option<String>, _now: Instant) {
        if self.phase != ResetPhase::Wiping {
            return;
        }
        self.error = error;
        self.phase = ResetPhase::Finished;
        let outcome = if self.error.is_some() {
            Some(MaintenanceError::ResetNotPersisted)
        } else if !self.cloud_told {
            Some(MaintenanceError::DeregistrationIncomplete)
        } else {
            None
        };
        self.steps.extend([
            ResetStep::NewIdentity,
            ResetStep::CloseSecureConnections,
            ResetStep::Done(outcome),
        ]);
    }

    /// Whether the cloud was told (meaningful once the wipe was asked for).
    pub fn cloud_told(&self) -> bool {
        self.cloud_told
    }

    /// What the wipe could not write.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Whether every step was handed out.
    pub fn is_finished(&self) -> bool {
        self.phase == ResetPhase::Finished && self.steps.is_empty()
    }
}

/// How `rb` reboots once the device has signed out and synced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RebootMethod {
    /// Run the reboot command (`--reboot-command`), which may take up to `command_limit`
    /// (`systemctl reboot` only queues the job), then wait up to `timeout`
    /// (`--reboot-timeout`) to be stopped.
    Command {
        command_limit: Duration,
        timeout: Duration,
    },
    /// End the process with this status (`--reboot-exit-status`); the service manager reboots.
    ExitStatus(u8),
}

/// A step of the reboot, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebootStep {
    /// Sign out of the cloud (`login: false`); report with [`Reboot::signed_out`]. The reboot
    /// goes on without it after the sign-out bound.
    SignOut,
    /// Flush the system's buffers (`sync(2)`): every state file was written atomically already.
    Sync,
    /// Run the reboot command; report with [`Reboot::command_finished`].
    RunCommand,
    /// The command overran its limit: kill it (and count it as failed).
    KillCommand,
    /// Stop the process with this status (STOPPING=1, Releases, exit).
    Exit(u8),
    /// The reboot did not happen: sign in again (the device never stays signed out by mistake).
    Resume,
    /// The reboot did not happen; `err` of `/oic/mnt` becomes this.
    Done(Option<MaintenanceError>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RebootPhase {
    SigningOut { deadline: Instant },
    Commanding { deadline: Instant },
    AwaitingStop { deadline: Option<Instant> },
    Finished,
}

/// One reboot (see [`RebootStep`] for its steps). With a command it returns only if the reboot
/// did not happen; with an exit status it ends in [`RebootStep::Exit`] and waits for good.
#[derive(Debug)]
pub struct Reboot {
    method: RebootMethod,
    phase: RebootPhase,
    steps: VecDeque<RebootStep>,
    signed_out_in_time: bool,
}

impl Reboot {
    /// Starts a reboot at `now`; the sign-out may take up to `sign_out_bound` (the cloud
    /// request timeout and a little more).
    pub fn start(method: RebootMethod, sign_out_bound: Duration, now: Instant) -> Reboot {
        Reboot {
            method,
            phase: RebootPhase::SigningOut {
                deadline: now + sign_out_bound,
            },
            steps: VecDeque::from([RebootStep::SignOut]),
            signed_out_in_time: false,
        }
    }

    /// The next step to carry out, if any.
    pub fn poll_step(&mut self) -> Option<RebootStep> {
        self.steps.pop_front()
    }

    /// When to call [`Reboot::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            RebootPhase::SigningOut { deadline } | RebootPhase::Commanding { deadline } => {
                Some(deadline)
            }
            RebootPhase::AwaitingStop { deadline } => deadline,
            RebootPhase::Finished => None,
        }
    }

    /// Time passed: a sign-out without an answer is given up (the reboot goes on), a command
    /// that overran is killed, and a reboot that did not come in time is reported.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            RebootPhase::SigningOut { deadline } if now >= deadline => self.reboot(now),
            RebootPhase::Commanding { deadline } if now >= deadline => {
                self.steps.push_back(RebootStep::KillCommand);
                self.fail(MaintenanceError::RebootCommandFailed);
            }
            RebootPhase::AwaitingStop {
                deadline: Some(deadline),
            } if now >= deadline => self.fail(MaintenanceError::RebootDidNotHappen),
            _ => {}
        }
    }

    /// The sign-out finished (answered, failed, or there was nothing to sign out from).
    pub fn signed_out(&mut self, now: Instant) {
        if let RebootPhase::SigningOut { deadline } = self.phase {
            self.signed_out_in_time = now <= deadline;
            self.reboot(now);
        }
    }

    fn reboot(&mut self, now: Instant) {
        self.steps.push_back(RebootStep::Sync);
        match self.method {
            RebootMethod::Command { command_limit, .. } => {
                self.phase = RebootPhase::Commanding {
                    deadline: now + command_limit,
                };
                self.steps.push_back(RebootStep::RunCommand);
            }
            RebootMethod::ExitStatus(status) => {
                // Being stopped is how this reboot ends: no deadline.
                self.phase = RebootPhase::AwaitingStop { deadline: None };
                self.steps.push_back(RebootStep::Exit(status));
            }
        }
    }

    /// The reboot command ended: `ok` if it succeeded (then the reboot is awaited for the
    /// reboot timeout). Late reports (after it was killed) change nothing.
    pub fn command_finished(&mut self, ok: bool, now: Instant) {
        if !matches!(self.phase, RebootPhase::Commanding { .. }) {
            return;
        }
        match (ok, &self.method) {
            (true, RebootMethod::Command { timeout, .. }) => {
                self.phase = RebootPhase::AwaitingStop {
                    deadline: Some(now + *timeout),
                };
            }
            _ => self.fail(MaintenanceError::RebootCommandFailed),
        }
    }

    fn fail(&mut self, error: MaintenanceError) {
        self.phase = RebootPhase::Finished;
        self.steps
            .extend([RebootStep::Resume, RebootStep::Done(Some(error))]);
    }

    /// Whether the cloud confirmed the sign-out within its bound.
    pub fn signed_out_in_time(&self) -> bool {
        self.signed_out_in_time
    }

    /// Whether every step was handed out (only for a reboot that did not happen).
    pub fn is_finished(&self) -> bool {
        self.phase == RebootPhase::Finished && self.steps.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const TIMING: ResetTiming = ResetTiming {
        deregister_timeout: Duration::from_secs(12),
    };

    fn steps_reset(r: &mut FactoryReset) -> Vec<ResetStep> {
        std::iter::from_fn(|| r.poll_step()).collect()
    }

    fn steps_reboot(r: &mut Reboot) -> Vec<RebootStep> {
        std::iter::from_fn(|| r.poll_step()).collect()
    }

    #[test]
    fn a_reset_records_deregisters_wipes_renews_and_closes_in_order() {
        let t0 = Instant::now();
        let mut r = FactoryReset::start(TIMING, t0);
        assert_eq!(
            steps_reset(&mut r),
            [ResetStep::RecordReset, ResetStep::Deregister]
        );
        assert_eq!(r.poll_timeout(), Some(t0 + 12 * S));
        // Nothing happens before the cloud answers or the deadline.
        r.handle_timeout(t0 + 11 * S);
        assert_eq!(r.poll_step(), None);
        r.deregistered(true, t0 + 2 * S);
        assert_eq!(steps_reset(&mut r), [ResetStep::Wipe]);
        assert_eq!(r.poll_timeout(), None, "the wipe is not bounded by a timer");
        r.wiped(None, t0 + 2 * S);
        assert_eq!(
            steps_reset(&mut r),
            [
                ResetStep::NewIdentity,
                ResetStep::CloseSecureConnections,
                ResetStep::Done(None)
            ]
        );
        assert!(r.is_finished() && r.cloud_told());
    }

    #[test]
    fn the_deregistration_timeout_goes_on_without_the_cloud_and_says_so() {
        let t0 = Instant::now();
        let mut r = FactoryReset::start(TIMING, t0);
        steps_reset(&mut r);
        r.handle_timeout(t0 + 12 * S);
        assert_eq!(steps_reset(&mut r), [ResetStep::Wipe]);
        // The cloud's late answer changes nothing.
        r.deregistered(true, t0 + 13 * S);
        assert_eq!(r.poll_step(), None);
        assert!(!r.cloud_told());
        r.wiped(None, t0 + 13 * S);
        assert_eq!(
            steps_reset(&mut r).last(),
            Some(&ResetStep::Done(Some(
                MaintenanceError::DeregistrationIncomplete
            )))
        );
        // A session that gave up itself (no connection, refused) is the same outcome.
        let mut r = FactoryReset::start(TIMING, t0);
        steps_reset(&mut r);
        r.deregistered(false, t0 + S);
        r.wiped(None, t0 + S);
        assert_eq!(
            steps_reset(&mut r).last(),
            Some(&ResetStep::Done(Some(
                MaintenanceError::DeregistrationIncomplete
            )))
        );
    }

    #[test]
    fn a_wipe_that_cannot_write_still_renews_and_closes_and_reports_err_4() {
        let t0 = Instant::now();
        let mut r = FactoryReset::start(TIMING, t0);
        steps_reset(&mut r);
        r.deregistered(true, t0);
        steps_reset(&mut r);
        r.wiped(Some("security.cbor: cannot write".into()), t0);
        assert_eq!(
            steps_reset(&mut r),
            [
                ResetStep::NewIdentity,
                ResetStep::CloseSecureConnections,
                ResetStep::Done(Some(MaintenanceError::ResetNotPersisted))
            ]
        );
        assert_eq!(r.error(), Some("security.cbor: cannot write"));
    }

    fn command(limit: u64, timeout: u64) -> RebootMethod {
        RebootMethod::Command {
            command_limit: Duration::from_secs(limit),
            timeout: Duration::from_secs(timeout),
        }
    }

    #[test]
    fn a_reboot_signs_out_syncs_runs_the_command_and_waits_to_be_stopped() {
        let t0 = Instant::now();
        let mut r = Reboot::start(command(30, 120), 11 * S, t0);
        assert_eq!(steps_reboot(&mut r), [RebootStep::SignOut]);
        assert_eq!(r.poll_timeout(), Some(t0 + 11 * S));
        r.signed_out(t0 + S);
        assert!(r.signed_out_in_time());
        assert_eq!(
            steps_reboot(&mut r),
            [RebootStep::Sync, RebootStep::RunCommand]
        );
        assert_eq!(r.poll_timeout(), Some(t0 + 31 * S), "the command's limit");
        r.command_finished(true, t0 + 2 * S);
        assert_eq!(r.poll_step(), None);
        assert_eq!(r.poll_timeout(), Some(t0 + 122 * S), "the reboot timeout");
        r.handle_timeout(t0 + 121 * S);
        assert_eq!(r.poll_step(), None, "not yet");
        // The reboot did not come: err 2, and sign in again.
        r.handle_timeout(t0 + 122 * S);
        assert_eq!(
            steps_reboot(&mut r),
            [
                RebootStep::Resume,
                RebootStep::Done(Some(MaintenanceError::RebootDidNotHappen))
            ]
        );
        assert!(r.is_finished());
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn the_sign_out_bound_lets_the_reboot_go_on_without_the_cloud() {
        let t0 = Instant::now();
        let mut r = Reboot::start(command(30, 120), 11 * S, t0);
        steps_reboot(&mut r);
        r.handle_timeout(t0 + 10 * S);
        assert_eq!(r.poll_step(), None);
        r.handle_timeout(t0 + 11 * S);
        assert!(!r.signed_out_in_time());
        assert_eq!(
            steps_reboot(&mut r),
            [RebootStep::Sync, RebootStep::RunCommand]
        );
        // The session's late SignedOut changes nothing.
        r.signed_out(t0 + 12 * S);
        assert_eq!(r.poll_step(), None);
    }

    #[test]
    fn a_failing_or_overrunning_command_is_err_1_and_signs_in_again() {
        let t0 = Instant::now();
        let mut r = Reboot::start(command(30, 120), 11 * S, t0);
        steps_reboot(&mut r);
        r.signed_out(t0);
        steps_reboot(&mut r);
        r.command_finished(false, t0 + S);
        assert_eq!(
            steps_reboot(&mut r),
            [
                RebootStep::Resume,
                RebootStep::Done(Some(MaintenanceError::RebootCommandFailed))
            ]
        );

        let mut r = Reboot::start(command(30, 120), 11 * S, t0);
        steps_reboot(&mut r);
        r.signed_out(t0);
        steps_reboot(&mut r);
        r.handle_timeout(t0 + 30 * S);
        assert_eq!(
            steps_reboot(&mut r),
            [
                RebootStep::KillCommand,
                RebootStep::Resume,
                RebootStep::Done(Some(MaintenanceError::RebootCommandFailed))
            ]
        );
        // The killed command's exit is a late report.
        r.command_finished(false, t0 + 31 * S);
        assert_eq!(r.poll_step(), None);
    }

    #[test]
    fn a_reboot_by_exit_status_exits_and_never_comes_back() {
        let t0 = Instant::now();
        let mut r = Reboot::start(RebootMethod::ExitStatus(85), 11 * S, t0);
        steps_reboot(&mut r);
        r.signed_out(t0 + S);
        assert_eq!(
            steps_reboot(&mut r),
            [RebootStep::Sync, RebootStep::Exit(85)]
        );
        assert_eq!(r.poll_timeout(), None, "being stopped is how it ends");
        r.handle_timeout(t0 + 100_000 * S);
        r.command_finished(true, t0);
        assert_eq!(r.poll_step(), None);
        assert!(!r.is_finished());
    }
}
