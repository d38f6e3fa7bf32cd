//! Maintenance in the daemon (OCF-PROTOCOL.md §3.4, §9): carries out, step by step,
//! the sans-IO procedures of [`ocf::maintenance`] that `/oic/mnt`, pstat and the console
//! (`ocf-agent factory-reset`, [`crate::control`]) ask for. What comes next and every bound
//! (deregistration timeout, sign-out bound, reboot command limit, reboot timeout) are the
//! procedures'; this module only executes their steps: files, sockets, the reboot command or
//! the exit status, and reports back with the time things happened.
//!
//! - **Factory reset** ([`FactoryReset`]): record it, deregister, wipe the state directory and
//!   make the new identity ([`wipe_and_renew`]), renew the running device's identity (tree,
//!   server certificate, CSR, cloud session), close every secure connection.
//! - **Reboot** ([`Reboot`]): sign out of the cloud, `sync(2)`, then run the reboot command
//!   (`--reboot-command`, default `systemctl reboot`, through `/bin/sh -c` with
//!   `OCF_AGENT_PID` set) and wait to be stopped, or (`--reboot-exit-status`) stop the process
//!   with that status for the service manager to reboot. A command that fails, or a reboot that
//!   does not come within `--reboot-timeout`, is reported in `err` and the device signs in
//!   again: it must never stay signed out by mistake. After the reboot the agent restores its
//!   cloud state, refreshes the token if it expires, signs in without signing up, and
//!   republishes only links that changed (§7.5).

use std::cell::{Cell, RefCell};
use std::process::{Child, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use ocf::maintenance::{
    Action, FactoryReset, MaintenanceError, Reboot, RebootMethod as Procedure, RebootStep,
    ResetStep, ResetTiming,
};
use tokio::sync::{watch, Notify};
use tracing::{error, info, warn};

use crate::cloud::Cloud;
use crate::security::{wipe_and_renew, Credentials, ResetReport};
use crate::server::Agent;

/// How long the reboot command itself may run (`systemctl reboot` only queues the job).
const REBOOT_COMMAND_LIMIT: Duration = Duration::from_secs(30);

/// How `rb` reboots once the device has signed out and synced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RebootMethod {
    /// Run this through `/bin/sh -c` and wait (`--reboot-timeout`) to be stopped.
    Command { command: String, timeout: Duration },
    /// End the process with this status (`--reboot-exit-status`); the service manager reboots.
    ExitStatus(u8),
}

/// What the daemon needs to carry out maintenance actions.
pub struct Maintenance {
    reboot: RebootMethod,
    /// Set when a reboot by exit status is due; `exit_notify` wakes [`Maintenance::exit_requested`].
    exit_status: Cell<Option<u8>>,
    exit_notify: Notify,
    /// The last factory reset's report (for the console), and its end.
    last_reset: RefCell<Option<ResetReport>>,
    reset_finished: Notify,
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

impl Maintenance {
    pub fn new(reboot: RebootMethod) -> Rc<Maintenance> {
        Rc::new(Maintenance {
            reboot,
            exit_status: Cell::new(None),
            exit_notify: Notify::new(),
            last_reset: RefCell::new(None),
            reset_finished: Notify::new(),
        })
    }

    /// A factory reset asked for on the console: recorded and queued like a POST of
    /// `{"fr":true}` (so `/oic/mnt` shows it), or joined to the reset under way; then its real
    /// outcome is awaited. `Err` if a reboot is under way.
    pub async fn console_factory_reset(&self, agent: &Agent) -> Result<ResetReport, String> {
        let (ticket, events) = agent
            .server
            .borrow_mut()
            .request_factory_reset(Instant::now())
            .map_err(|e| e.to_string())?;
        agent.execute(events);
        agent.flush_notifications();
        loop {
            let finished = self.reset_finished.notified();
            let outcome = agent.server.borrow().maintenance().borrow().outcome(ticket);
            if outcome.is_some() {
                return self
                    .last_reset
                    .borrow()
                    .clone()
                    .ok_or_else(|| "the factory reset left no report".to_string());
            }
            finished.await;
        }
    }

    /// Resolves with the exit status once a reboot by exit status has signed out and synced:
    /// the process is then to stop (cleanly: STOPPING=1, Releases) and exit with it.
    pub async fn exit_requested(&self) -> u8 {
        loop {
            if let Some(status) = self.exit_status.get() {
                return status;
            }
            self.exit_notify.notified().await;
        }
    }

    /// Carries out the actions asked for, one at a time, until shutdown.
    pub async fn run(
        self: Rc<Self>,
        agent: Rc<Agent>,
        credentials: Rc<Credentials>,
        cloud: Option<Rc<Cloud>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let action = agent.server.borrow_mut().take_maintenance_request();
            let Some(action) = action else {
                tokio::select! {
                    _ = agent.maintenance_wake.notified() => continue,
                    _ = shutdown.changed() => return,
                }
            };
            agent.flush_notifications();
            let outcome = match action {
                Action::FactoryReset => {
                    let (outcome, report) = self
                        .factory_reset(&agent, &credentials, cloud.as_deref())
                        .await;
                    *self.last_reset.borrow_mut() = Some(report);
                    outcome
                }
                Action::Reboot => {
                    tokio::select! {
                        outcome = self.reboot(&agent, cloud.as_deref()) => outcome,
                        // Being stopped is how a reboot ends.
                        _ = shutdown.changed() => return,
                    }
                }
            };
            agent.server.borrow_mut().maintenance_finished(outcome);
            self.reset_finished.notify_waiters();
            agent.flush_notifications();
        }
    }

    /// Runs [`FactoryReset`] to its end (OCF-PROTOCOL.md §9; README "Maintenance").
    async fn factory_reset(
        &self,
        agent: &Agent,
        credentials: &Credentials,
        cloud: Option<&Cloud>,
    ) -> (Option<MaintenanceError>, ResetReport) {
        info!("factory reset");
        let timing = ResetTiming {
            deregister_timeout: cloud.map_or(Duration::ZERO, Cloud::deregister_bound),
        };
        let mut reset = FactoryReset::start(timing, Instant::now());
        let mut deregistering = false;
        loop {
            while let Some(step) = reset.poll_step() {
                match step {
                    ResetStep::RecordReset => {
                        let events = agent
                            .server
                            .borrow_mut()
                            .record_factory_reset(Instant::now());
                        agent.execute(events);
                    }
                    ResetStep::Deregister => match cloud {
                        Some(c) => {
                            c.start_deregister(agent);
                            deregistering = true;
                        }
                        None => reset.deregistered(true, Instant::now()),
                    },
                    ResetStep::Wipe => {
                        deregistering = false;
                        if !reset.cloud_told() {
                            warn!("the cloud was not told of the factory reset (unreachable or no answer); wiping the cloud state anyway");
                        }
                        let security = agent.server.borrow().security().clone();
                        let renewed = wipe_and_renew(agent.state_dir(), &mut security.borrow_mut());
                        if let Some(e) = &renewed.error {
                            error!("the factory reset is not fully written ({e}); it is finished on the next start");
                        }
                        if let Some(key) = renewed.key {
                            credentials.set_key(key);
                        }
                        reset.wiped(renewed.error, Instant::now());
                    }
                    ResetStep::NewIdentity => {
                        let events = agent.server.borrow_mut().renew_identity(Instant::now());
                        agent.execute(events);
                        let di = agent.server.borrow().device().info().di.clone();
                        credentials.renew_endpoints(agent, &di);
                        if let Some(c) = cloud {
                            c.renewed(agent);
                        }
                        agent.flush_notifications();
                    }
                    ResetStep::CloseSecureConnections => {
                        let ids = agent.server.borrow().tls_connections();
                        for id in ids {
                            agent.disconnect(id);
                        }
                    }
                    ResetStep::Done(outcome) => {
                        let di = agent.server.borrow().device().info().di.clone();
                        // The new di on the console, like the one printed at start.
                        println!("ocf-agent: di {di}");
                        info!(di = %di, "factory reset done: the device is unowned (RFOTM) with a new identity");
                        let report = ResetReport {
                            di,
                            cloud_told: reset.cloud_told(),
                            error: reset.error().map(str::to_string),
                        };
                        return (outcome, report);
                    }
                }
            }
            let deadline = reset.poll_timeout();
            tokio::select! {
                told = async { cloud.expect("deregistering").deregistered().await }, if deregistering => {
                    reset.deregistered(told, Instant::now());
                }
                _ = sleep_until_opt(deadline) => reset.handle_timeout(Instant::now()),
            }
        }
    }

    /// Runs [`Reboot`] (see the module docs). Returns only if the reboot did not happen.
    async fn reboot(&self, agent: &Agent, cloud: Option<&Cloud>) -> Option<MaintenanceError> {
        info!("reboot requested");
        let method = match &self.reboot {
            RebootMethod::Command { timeout, .. } => Procedure::Command {
                command_limit: REBOOT_COMMAND_LIMIT,
                timeout: *timeout,
            },
            RebootMethod::ExitStatus(status) => Procedure::ExitStatus(*status),
        };
        let bound = cloud.map_or(Duration::ZERO, |c| {
            c.request_timeout() + Duration::from_secs(1)
        });
        let mut reboot = Reboot::start(method, bound, Instant::now());
        let mut signing_out = false;
        let mut child: Option<Child> = None;
        loop {
            while let Some(step) = reboot.poll_step() {
                match step {
                    RebootStep::SignOut => match cloud {
                        Some(c) => {
                            c.start_sign_out(agent);
                            signing_out = true;
                        }
                        None => reboot.signed_out(Instant::now()),
                    },
                    RebootStep::Sync => {
                        if signing_out && !reboot.signed_out_in_time() {
                            warn!(
                                "the cloud did not confirm the sign-out in time; rebooting anyway"
                            );
                        }
                        signing_out = false;
                        // Every state file was written (and fsynced) when it changed; this
                        // flushes whatever else the system has buffered before the board goes
                        // down.
                        // SAFETY: sync(2) has no preconditions.
                        unsafe { libc::sync() };
                    }
                    RebootStep::RunCommand => {
                        let RebootMethod::Command { command, .. } = &self.reboot else {
                            continue;
                        };
                        info!(%command, "running the reboot command");
                        match spawn_reboot_command(command) {
                            Ok(c) => child = Some(c),
                            Err(e) => {
                                error!("the reboot command failed: {e}; signing in again");
                                reboot.command_finished(false, Instant::now());
                            }
                        }
                    }
                    RebootStep::KillCommand => {
                        if let Some(mut c) = child.take() {
                            let _ = c.kill();
                            let _ = c.wait();
                        }
                        error!(
                            "the reboot command failed: it did not finish within {} s; signing in again",
                            REBOOT_COMMAND_LIMIT.as_secs()
                        );
                    }
                    RebootStep::Exit(status) => {
                        info!(
                            status,
                            "stopping with the reboot exit status; the service manager reboots"
                        );
                        self.exit_status.set(Some(status));
                        self.exit_notify.notify_one();
                    }
                    RebootStep::Resume => {
                        if let Some(c) = cloud {
                            c.resume(agent);
                        }
                    }
                    RebootStep::Done(outcome) => {
                        if outcome == Some(MaintenanceError::RebootDidNotHappen) {
                            error!("the reboot did not happen in time; signing in again");
                        }
                        return outcome;
                    }
                }
            }
            let deadline = reboot.poll_timeout();
            tokio::select! {
                _ = async { cloud.expect("signing out").signed_out().await }, if signing_out => {
                    reboot.signed_out(Instant::now());
                }
                result = wait_child(child.as_mut()), if child.is_some() => {
                    child = None;
                    match &result {
                        Ok(()) => info!("the reboot command succeeded; waiting to be stopped"),
                        Err(e) => error!("the reboot command failed: {e}; signing in again"),
                    }
                    reboot.command_finished(result.is_ok(), Instant::now());
                }
                _ = sleep_until_opt(deadline) => reboot.handle_timeout(Instant::now()),
            }
        }
    }
}

/// Starts `command` through `/bin/sh -c` with `OCF_AGENT_PID` set.
fn spawn_reboot_command(command: &str) -> Result<Child, String> {
    std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .env("OCF_AGENT_PID", std::process::id().to_string())
        // The notification socket and the watchdog are this process's, not the command's.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start /bin/sh: {e}"))
}

/// Waits for the command to end; `Err` says why it failed.
async fn wait_child(child: Option<&mut Child>) -> Result<(), String> {
    let Some(child) = child else {
        return std::future::pending().await;
    };
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("it ended with {status}")),
            Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Runs `command` to its end (the reboot's own steps, for the tests).
#[cfg(test)]
async fn run_reboot_command(command: &str) -> Result<(), String> {
    let mut child = spawn_reboot_command(command)?;
    wait_child(Some(&mut child)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_reboot_by_exit_status_asks_for_the_exit_and_never_returns() {
        let dir = std::env::temp_dir().join(format!("ocf-reboot-agent-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::state::ensure_dir(&dir).unwrap();
        let (agent, _) = crate::cloud::tests::agent(&dir, false);
        let m = Maintenance::new(RebootMethod::ExitStatus(85));
        let status = block_on(async {
            tokio::select! {
                outcome = m.reboot(&agent, None) => panic!("the reboot returned {outcome:?}"),
                status = m.exit_requested() => status,
            }
        });
        assert_eq!(status, 85);
        // Asked once, it stays asked (main may only start waiting later).
        assert_eq!(block_on(m.exit_requested()), 85);
        // A command reboot never asks for an exit.
        let m = Maintenance::new(RebootMethod::Command {
            command: "exit 1".into(),
            timeout: Duration::from_secs(1),
        });
        let outcome = block_on(async {
            tokio::select! {
                outcome = m.reboot(&agent, None) => outcome,
                status = m.exit_requested() => panic!("exit {status} asked for"),
            }
        });
        assert_eq!(outcome, Some(MaintenanceError::RebootCommandFailed));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_reboot_command_gets_the_agent_pid_and_its_status_counts() {
        let dir = std::env::temp_dir().join(format!("ocf-reboot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("pid");
        let cmd = format!("echo $OCF_AGENT_PID > '{}'", out.display());
        assert_eq!(block_on(run_reboot_command(&cmd)), Ok(()));
        assert_eq!(
            std::fs::read_to_string(&out).unwrap().trim(),
            std::process::id().to_string()
        );
        let e = block_on(run_reboot_command("exit 3")).unwrap_err();
        assert!(e.contains("exit status: 3"), "{e}");
        let e = block_on(run_reboot_command("no-such-command-here")).unwrap_err();
        assert!(e.contains("127"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
