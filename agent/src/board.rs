//! The board's live resources in the agent: load the board description, open its hardware
//! (or its simulation), put each resource into the tree, and drive samplers and GPIO edges on
//! the runtime.

use std::rc::Rc;
use std::time::Instant;

use ocf::resource::Resource;
use ocf_drivers::board::Board;
use ocf_drivers::contact::ContactTask;
use ocf_drivers::device::{Device as LiveDevice, HardwareEnv, LiveDriver};
use ocf_drivers::sampler::{LogLevel, SampleReport, SensorTask};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::server::Agent;

/// Loads a built-in board by name or a board file by path. Errors name file, line and field.
pub fn load(spec: &str) -> Result<Board, String> {
    Board::load(spec).map_err(|e| e.to_string())
}

/// Something the runtime drives for one resource.
pub enum DriverTask {
    Sensor(SensorTask),
    Contact(ContactTask),
}

/// Opens the board's hardware and adds its resources to the agent's tree.
pub fn populate(board: &Board, agent: &Rc<Agent>) -> Result<Vec<DriverTask>, String> {
    let live = LiveDevice::build(board, &HardwareEnv::default(), Instant::now())
        .map_err(|e| e.to_string())?;
    let mut tasks = Vec::new();
    let mut device = agent.device();
    for r in live.resources {
        let types: Vec<&str> = r.resource_types.iter().map(String::as_str).collect();
        let mut resource = Resource::new(&r.href, &types, &r.interfaces, r.policy, r.backend);
        resource.name = r.name.clone();
        device
            .add(resource)
            .map_err(|e| format!("{}: resource {:?}: {e}", board.file, r.href))?;
        match r.driver {
            LiveDriver::Actuator => {}
            LiveDriver::Sensor(mut task) => {
                // Take the first reading now, so the resource has a value the moment the
                // agent says it is ready (sensors that need settling read later).
                let now = Instant::now();
                if task.poll_timeout() <= now {
                    if let Some(report) = task.handle_timeout(now) {
                        if let Some(log) = report.log {
                            warn!(resource = %r.href, "{}", log.message);
                        }
                    }
                }
                tasks.push(DriverTask::Sensor(task));
            }
            LiveDriver::Input(task) => tasks.push(DriverTask::Contact(task)),
        }
    }
    // Adding resources queued a change of /oic/res; nobody observes yet.
    drop(device.take_notifications());
    info!(board = %board.name, resources = board.resources.len(), "board ready");
    Ok(tasks)
}

fn apply(agent: &Agent, href: &str, report: SampleReport) {
    if let Some(log) = report.log {
        match log.level {
            LogLevel::Warn => warn!(resource = href, "{}", log.message),
            _ => info!(resource = href, "{}", log.message),
        }
    }
    if report.notify {
        agent.device().mark_changed(href);
        agent.flush_notifications();
    }
}

impl DriverTask {
    /// Runs until shutdown: sensors on their sampling schedule, inputs on kernel edge events
    /// (no polling) plus the debouncer's settle timer.
    pub async fn run(self, agent: Rc<Agent>, mut shutdown: watch::Receiver<bool>) {
        match self {
            DriverTask::Sensor(mut task) => loop {
                let at = tokio::time::Instant::from_std(task.poll_timeout());
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {
                        if let Some(report) = task.handle_timeout(Instant::now()) {
                            let href = task.href().to_string();
                            apply(&agent, &href, report);
                        }
                    }
                    _ = shutdown.changed() => return,
                }
            },
            DriverTask::Contact(mut task) => {
                let href = task.href().to_string();
                let fd = match task.edge_fd() {
                    // SAFETY: the edge fd belongs to `task`, which outlives this AsyncFd: both are
                    // locals of this async block and `fd` is declared (so dropped) after it.
                    Some(fd) => match unsafe { AsyncFd::register(fd) } {
                        Ok(fd) => Some(fd),
                        Err(e) => {
                            warn!(resource = %href, "cannot wait for GPIO edges: {e}");
                            None
                        }
                    },
                    None => None,
                };
                loop {
                    let timeout = task.poll_timeout();
                    let sleep = async {
                        match timeout {
                            Some(t) => {
                                tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await
                            }
                            None => std::future::pending().await,
                        }
                    };
                    let readable = async {
                        match &fd {
                            Some(fd) => fd.readable().await.map(Some),
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        ready = readable => {
                            if let Ok(Some(mut guard)) = ready {
                                let report = task.handle_readable(Instant::now());
                                guard.clear_ready();
                                apply(&agent, &href, report);
                            }
                        }
                        _ = sleep => {
                            let report = task.handle_timeout(Instant::now());
                            apply(&agent, &href, report);
                        }
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    }
}

/// `/oic/p` optional fields from the board, and the device's name and type.
pub struct BoardFacts {
    pub device_name: String,
    pub device_type: String,
    pub manufacturer: String,
    pub platform_extra: ocf::resource::Props,
}

pub fn facts(board: &Board) -> BoardFacts {
    BoardFacts {
        device_name: board
            .device_name
            .clone()
            .unwrap_or_else(|| format!("ocf-agent ({})", board.name)),
        device_type: board.device_type.clone(),
        manufacturer: board
            .platform
            .mnmn
            .clone()
            .unwrap_or_else(|| "OCF-Pi project".into()),
        platform_extra: board.platform.extra_props(),
    }
}
