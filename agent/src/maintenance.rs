//! Maintenance in the daemon (issue 6, OCF-PROTOCOL.md §3.4, §9): carries out what `/oic/mnt`
//! ([`ocf::maintenance`], the rules) and the console (`ocf-agent factory-reset`,
//! [`crate::control`]) ask for.
//!
//! - **Factory reset**: [`Security::factory_reset`] (deregister, wipe, new identity, RFOTM).
//! - **Reboot**: sign out of the cloud (`login: false`, bounded by the request timeout), make sure
//!   every state file is on disk (each was written atomically when it changed; `sync(2)` flushes
//!   the rest of the system too), then run the reboot command (`--reboot-command`, default
//!   `systemctl reboot`, through `/bin/sh -c` with `OCF_AGENT_PID` set) and wait to be stopped.
//!   A command that fails, or a reboot that does not come within `--reboot-timeout`, is reported
//!   in `err` and the device signs in again: it must never stay signed out by mistake.
//!   With `--reboot-exit-status` the agent runs no command: the service runs unprivileged and
//!   cannot reboot, so it asks the process's end to stop with that status, and the service
//!   manager (the unit's `ExecStopPost=`, run privileged) reboots when it sees it. If the reboot
//!   does not come, systemd starts the agent again (`Restart=on-failure`), which signs in as
//!   after a boot.
//!   After the reboot the agent restores its cloud state, refreshes the token if it expires,
//!   signs in without signing up, and republishes only links that changed (§7.5).

use std::cell::{Cell, RefCell};
use std::process::Stdio;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ocf::maintenance::{self, Action, MaintenanceError, SharedMaintenance};
use ocf::resource::Resource;
use tokio::sync::{watch, Notify};
use tracing::{error, info, warn};

use crate::cloud::Cloud;
use crate::security::{ResetReport, Security};
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
    state: SharedMaintenance,
    wake: Rc<Notify>,
    reboot: RebootMethod,
    /// Set when a reboot by exit status is due; `exit_notify` wakes [`Maintenance::exit_requested`].
    exit_status: Cell<Option<u8>>,
    exit_notify: Notify,
    /// Completed factory resets, and the last one's report (for the console).
    resets: Cell<u64>,
    last_reset: RefCell<Option<ResetReport>>,
    reset_finished: Notify,
}

impl Maintenance {
    pub fn new(reboot: RebootMethod) -> Rc<Maintenance> {
        Rc::new(Maintenance {
            state: Rc::new(RefCell::new(maintenance::Maintenance::new())),
            wake: Rc::new(Notify::new()),
            reboot,
            exit_status: Cell::new(None),
            exit_notify: Notify::new(),
            resets: Cell::new(0),
            last_reset: RefCell::new(None),
            reset_finished: Notify::new(),
        })
    }

    /// The `/oic/mnt` resource. A factory reset is recorded (`security.cbor`, RESET) before the
    /// 2.04 is sent: once a client has its answer, a power cut cannot lose the reset.
    pub fn resource(&self, security: Rc<Security>) -> Resource {
        let wake = self.wake.clone();
        maintenance::resource(
            self.state.clone(),
            Box::new(move |action| {
                if action == Action::FactoryReset {
                    security.record_factory_reset();
                }
                wake.notify_one();
            }),
        )
    }

    /// A factory reset asked for on the console: queued like a POST of `{"fr":true}` (so
    /// `/oic/mnt` shows it), then awaited. `Err` if a reboot is under way.
    pub async fn console_factory_reset(&self, agent: &Agent) -> Result<ResetReport, String> {
        let before = self.resets.get();
        let queued = self
            .state
            .borrow_mut()
            .request(Action::FactoryReset)
            .map_err(|e| e.to_string())?;
        if queued {
            self.wake.notify_one();
            agent.device.borrow_mut().mark_changed(maintenance::HREF);
            agent.flush_notifications();
        }
        while self.resets.get() == before {
            self.reset_finished.notified().await;
        }
        self.last_reset
            .borrow()
            .clone()
            .ok_or_else(|| "the factory reset left no report".to_string())
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
        security: Rc<Security>,
        cloud: Option<Rc<Cloud>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let action = self.state.borrow_mut().take_request();
            let Some(action) = action else {
                tokio::select! {
                    _ = self.wake.notified() => continue,
                    _ = shutdown.changed() => return,
                }
            };
            agent.device.borrow_mut().mark_changed(maintenance::HREF);
            agent.flush_notifications();
            let outcome = match action {
                Action::FactoryReset => {
                    let report = security.factory_reset(&agent).await;
                    let outcome = if report.error.is_some() {
                        Some(MaintenanceError::ResetNotPersisted)
                    } else if !report.cloud_told {
                        Some(MaintenanceError::DeregistrationIncomplete)
                    } else {
                        None
                    };
                    *self.last_reset.borrow_mut() = Some(report);
                    self.resets.set(self.resets.get() + 1);
                    self.reset_finished.notify_waiters();
                    outcome
                }
                Action::Reboot => {
                    tokio::select! {
                        outcome = self.reboot(cloud.as_deref()) => outcome,
                        // Being stopped is how a reboot ends.
                        _ = shutdown.changed() => return,
                    }
                }
            };
            self.state.borrow_mut().finished(outcome);
            agent.device.borrow_mut().mark_changed(maintenance::HREF);
            agent.flush_notifications();
        }
    }

    /// The reboot (see the module docs). Returns only if the reboot did not happen.
    async fn reboot(&self, cloud: Option<&Cloud>) -> Option<MaintenanceError> {
        info!("reboot requested");
        if let Some(cloud) = cloud {
            let limit = cloud.request_timeout() + Duration::from_secs(1);
            if !cloud.sign_out(limit).await {
                warn!("the cloud did not confirm the sign-out in time; rebooting anyway");
            }
        }
        // Every state file was written (and fsynced) when it changed; this flushes whatever
        // else the system has buffered before the board goes down.
        // SAFETY: sync(2) has no preconditions.
        unsafe { libc::sync() };
        let (command, timeout) = match &self.reboot {
            RebootMethod::ExitStatus(status) => {
                info!(
                    status,
                    "stopping with the reboot exit status; the service manager reboots"
                );
                self.exit_status.set(Some(*status));
                self.exit_notify.notify_one();
                // The process ends from here: being stopped is how this reboot ends.
                return std::future::pending().await;
            }
            RebootMethod::Command { command, timeout } => (command, *timeout),
        };
        info!(%command, "running the reboot command");
        let failure = match run_reboot_command(command).await {
            Ok(()) => {
                info!(
                    "the reboot command succeeded; waiting up to {} s to be stopped",
                    timeout.as_secs()
                );
                tokio::time::sleep(timeout).await;
                error!(
                    "the reboot did not happen within {} s; signing in again",
                    timeout.as_secs()
                );
                MaintenanceError::RebootDidNotHappen
            }
            Err(e) => {
                error!("the reboot command failed: {e}; signing in again");
                MaintenanceError::RebootCommandFailed
            }
        };
        if let Some(cloud) = cloud {
            cloud.resume();
        }
        Some(failure)
    }
}

/// Runs `command` through `/bin/sh -c` with `OCF_AGENT_PID` set; `Err` says why it failed.
async fn run_reboot_command(command: &str) -> Result<(), String> {
    let mut child = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .env("OCF_AGENT_PID", std::process::id().to_string())
        // The notification socket and the watchdog are this process's, not the command's.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start /bin/sh: {e}"))?;
    let deadline = Instant::now() + REBOOT_COMMAND_LIMIT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("it ended with {status}")),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "it did not finish within {} s",
                    REBOOT_COMMAND_LIMIT.as_secs()
                ));
            }
            Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => return Err(e.to_string()),
        }
    }
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
        let m = Maintenance::new(RebootMethod::ExitStatus(85));
        let status = block_on(async {
            tokio::select! {
                outcome = m.reboot(None) => panic!("the reboot returned {outcome:?}"),
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
                outcome = m.reboot(None) => outcome,
                status = m.exit_requested() => panic!("exit {status} asked for"),
            }
        });
        assert_eq!(outcome, Some(MaintenanceError::RebootCommandFailed));
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
