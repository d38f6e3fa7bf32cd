//! The console's way in: `ocf-agent factory-reset` (OCF-PROTOCOL.md §9).
//!
//! A running agent listens on `STATE/control.sock`, a Unix socket of mode 0600 in the 0700 state
//! directory, so only the account that runs the agent (root on the image) can use it: being at
//! the console is the authorisation, as with a reset button. The protocol is one request line
//! and answer lines:
//!
//! ```text
//! > factory-reset
//! < resetting
//! < done di=<new di> cloud=told|not-told
//! ```
//!
//! or `error <text>`. With no agent running (the state lock is free) the command resets the
//! state directory itself, the same way the agent finishes an interrupted reset at start; it
//! cannot tell the cloud then, and says so.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::maintenance::Maintenance;
use crate::security::{save_state, wipe_and_renew};
use crate::server::Agent;
use crate::state::StateLock;

/// The socket in the state directory.
pub const SOCKET: &str = "control.sock";
/// Longest request line.
const MAX_LINE: usize = 64;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `STATE/control.sock` (mode 0600). The caller holds the state lock, so a socket file
/// already there was left by an agent that died: it is replaced.
pub fn listen(dir: &Path) -> io::Result<UnixListener> {
    let path = dir.join(SOCKET);
    match std::fs::remove_file(&path) {
        Ok(()) => debug!("removed a stale {}", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves console requests until shutdown; removes the socket then.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    agent: Rc<Agent>,
    maintenance: Rc<Maintenance>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::task::spawn_local(handle(stream, agent.clone(), maintenance.clone()));
                }
                Err(e) => {
                    warn!("control socket: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    let _ = std::fs::remove_file(&path);
}

async fn handle(stream: UnixStream, agent: Rc<Agent>, maintenance: Rc<Maintenance>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read.take(MAX_LINE as u64));
    let request = match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 && line.ends_with('\n') => line.trim().to_string(),
        _ => {
            let _ = write.write_all(b"error no request line\n").await;
            return;
        }
    };
    let reply = match request.as_str() {
        "factory-reset" => {
            info!("factory reset asked for on the console");
            let _ = write.write_all(b"resetting\n").await;
            match maintenance.console_factory_reset(&agent).await {
                Ok(report) => {
                    let mut text = format!(
                        "done di={} cloud={}\n",
                        report.di,
                        if report.cloud_told {
                            "told"
                        } else {
                            "not-told"
                        }
                    );
                    if let Some(e) = report.error {
                        text = format!("error the reset is not fully written ({e}); it is finished on the next start\n");
                    }
                    text
                }
                Err(e) => format!("error {e}\n"),
            }
        }
        other => format!(
            "error unknown request {:?}\n",
            other.chars().take(32).collect::<String>()
        ),
    };
    let _ = write.write_all(reply.as_bytes()).await;
    let _ = write.shutdown().await;
}

/// `ocf-agent factory-reset --state-dir DIR` (see the module docs). Returns the message for a
/// failure.
pub fn factory_reset_command(dir: &Path) -> Result<(), String> {
    if !dir.is_dir() {
        return Err(format!("{}: no such state directory", dir.display()));
    }
    let lock = StateLock::try_acquire(dir)
        .map_err(|e| format!("{}: {e}", dir.join(crate::state::LOCK_FILE).display()))?;
    match lock {
        None => reset_through_agent(dir),
        Some(_lock) => reset_offline(dir),
    }
}

fn reset_through_agent(dir: &Path) -> Result<(), String> {
    let path = dir.join(SOCKET);
    let mut stream = std::os::unix::net::UnixStream::connect(&path).map_err(|e| {
        format!(
            "{}: {e} (an agent holds the state lock but does not answer)",
            path.display()
        )
    })?;
    stream
        .write_all(b"factory-reset\n")
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut done = false;
    for line in BufReader::new(stream).lines() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        if line == "resetting" {
            println!("ocf-agent: the running agent is resetting the device");
        } else if let Some(rest) = line.strip_prefix("done ") {
            let di = field(rest, "di").unwrap_or("?");
            println!("ocf-agent: factory reset done; the device is unowned with di {di}");
            if field(rest, "cloud") == Some("not-told") {
                println!(
                    "ocf-agent: the cloud could not be told (unreachable or no answer): remove the old device there"
                );
            }
            done = true;
        } else if let Some(e) = line.strip_prefix("error ") {
            return Err(e.to_string());
        }
    }
    if done {
        Ok(())
    } else {
        Err("the agent closed the control connection before the reset finished".into())
    }
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// With no agent running: load (and repair) the state directory as a start would, record the
/// reset, then carry it out locally.
fn reset_offline(dir: &Path) -> Result<(), String> {
    let mut boot = crate::boot::prepare(dir, false)?;
    if !boot.security.reset_pending() {
        boot.security.begin_factory_reset();
        save_state(dir, &boot.security).map_err(|e| {
            format!(
                "{}: cannot write: {e}",
                dir.join(crate::security::STATE_FILE).display()
            )
        })?;
    }
    let renewed = wipe_and_renew(dir, &mut boot.security);
    if let Some(e) = renewed.error {
        return Err(format!(
            "the reset is not fully written ({e}); the agent finishes it at its next start"
        ));
    }
    println!(
        "ocf-agent: no agent is running: the state directory was reset; the device is unowned with di {}",
        boot.security.di()
    );
    println!(
        "ocf-agent: the cloud was not told (that needs a running agent): if the device was registered, remove it there"
    );
    Ok(())
}
