//! The service manager's notification protocol, sd_notify(3), without libsystemd: `READY=1`
//! once every endpoint listens, `WATCHDOG=1` while the runtime runs, `STOPPING=1` on the way
//! out. With `NOTIFY_SOCKET` unset (not started by systemd as `Type=notify`) nothing is sent.

use std::cell::Cell;
use std::ffi::OsStr;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, warn};

/// Where `NOTIFY_SOCKET` points: sd_notify(3) accepts a file system path (`/...`) or a Linux
/// abstract socket name (`@...`, the `@` standing for the leading NUL byte).
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

impl Target {
    /// `None` for an unset or empty variable (nothing to notify), `Err` for an address this
    /// implementation cannot use (e.g. `vsock:`).
    fn parse(value: Option<&OsStr>) -> Result<Option<Target>, String> {
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let bytes = value.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            Ok(Some(Target::Abstract(name.to_vec())))
        } else if bytes.starts_with(b"/") {
            Ok(Some(Target::Path(PathBuf::from(value))))
        } else {
            Err(format!(
                "NOTIFY_SOCKET={}: neither a path nor an abstract socket name",
                value.to_string_lossy()
            ))
        }
    }
}

/// Sends notifications to the service manager, or nothing when there is none.
pub struct Notifier {
    socket: Option<(UnixDatagram, Target)>,
    /// The last send failed: the next failure is not logged again (the watchdog would repeat it
    /// every few seconds).
    failing: Cell<bool>,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` asks for.
    pub fn from_env() -> Notifier {
        Notifier::new(std::env::var_os("NOTIFY_SOCKET").as_deref())
    }

    fn new(notify_socket: Option<&OsStr>) -> Notifier {
        let target = match Target::parse(notify_socket) {
            Ok(Some(t)) => t,
            Ok(None) => return Notifier::disabled(),
            Err(e) => {
                warn!("{e}; the service manager is not notified");
                return Notifier::disabled();
            }
        };
        // Non-blocking: a service manager that does not read its socket must not stall the
        // runtime (the datagram is dropped and the failure logged instead).
        let socket = UnixDatagram::unbound().and_then(|s| s.set_nonblocking(true).map(|()| s));
        match socket {
            Ok(s) => Notifier {
                socket: Some((s, target)),
                failing: Cell::new(false),
            },
            Err(e) => {
                warn!("cannot open a socket to notify the service manager: {e}");
                Notifier::disabled()
            }
        }
    }

    fn disabled() -> Notifier {
        Notifier {
            socket: None,
            failing: Cell::new(false),
        }
    }

    /// Whether notifications go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends one notification (`READY=1`, `WATCHDOG=1`, `STOPPING=1`, ...) as one datagram.
    pub fn notify(&self, message: &str) {
        let Some((socket, target)) = &self.socket else {
            return;
        };
        let sent = match target {
            Target::Path(path) => socket.send_to(message.as_bytes(), path),
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .and_then(|addr| socket.send_to_addr(message.as_bytes(), &addr))
            }
        };
        match sent {
            Ok(_) => {
                if self.failing.replace(false) {
                    debug!("the service manager is notified again");
                }
            }
            Err(e) => {
                if !self.failing.replace(true) {
                    warn!("cannot notify the service manager ({message}): {e}");
                }
            }
        }
    }
}

/// How often to send `WATCHDOG=1`, as sd_watchdog_enabled(3) decides whether the service
/// manager expects it: `WATCHDOG_USEC` set (microseconds, neither 0 nor infinity) and
/// `WATCHDOG_PID` unset or our pid. The ping goes every half timeout, as that page advises.
/// `Ok(None)`: no watchdog for this process; `Err`: an unusable value.
pub fn watchdog_interval(
    usec: Option<&OsStr>,
    pid: Option<&OsStr>,
    own_pid: u32,
) -> Result<Option<Duration>, String> {
    let Some(usec) = usec else {
        return Ok(None);
    };
    let text = usec.to_string_lossy();
    let micros: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("WATCHDOG_USEC={text}: not a number of microseconds"))?;
    if micros == 0 || micros == u64::MAX {
        return Err(format!("WATCHDOG_USEC={text}: not a watchdog timeout"));
    }
    if let Some(pid) = pid {
        let text = pid.to_string_lossy();
        let pid: u32 = text
            .trim()
            .parse()
            .map_err(|_| format!("WATCHDOG_PID={text}: not a process id"))?;
        if pid != own_pid {
            // Meant for another process (e.g. the shell that started us).
            return Ok(None);
        }
    }
    // At least 1 ms, so that an absurd 1 µs timeout cannot make a busy loop.
    Ok(Some(
        Duration::from_micros(micros / 2).max(Duration::from_millis(1)),
    ))
}

/// The watchdog interval the environment asks for (see [`watchdog_interval`]); an unusable value
/// is logged and means no watchdog.
pub fn watchdog_from_env() -> Option<Duration> {
    let usec = std::env::var_os("WATCHDOG_USEC");
    let pid = std::env::var_os("WATCHDOG_PID");
    watchdog_interval(usec.as_deref(), pid.as_deref(), std::process::id()).unwrap_or_else(|e| {
        warn!("{e}; no watchdog pings");
        None
    })
}

/// Sends `WATCHDOG=1` every `every` until shutdown. It runs as a task of the agent's own
/// (current-thread) runtime: if the runtime is stuck, the pings stop and systemd's watchdog
/// restarts the service, which is the point (systemd.service(5), `WatchdogSec=`).
pub async fn ping_watchdog(
    notifier: std::rc::Rc<Notifier>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        notifier.notify("WATCHDOG=1");
        // sleep, not interval: its deadline saturates where an interval's could overflow.
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn os(s: &str) -> OsString {
        OsString::from(s)
    }

    #[test]
    fn notify_socket_addresses() {
        assert_eq!(Target::parse(None), Ok(None));
        assert_eq!(Target::parse(Some(&os(""))), Ok(None));
        assert_eq!(
            Target::parse(Some(&os("/run/systemd/notify"))),
            Ok(Some(Target::Path("/run/systemd/notify".into())))
        );
        assert_eq!(
            Target::parse(Some(&os("@/org/freedesktop/systemd1/notify/1"))),
            Ok(Some(Target::Abstract(
                b"/org/freedesktop/systemd1/notify/1".to_vec()
            )))
        );
        assert!(Target::parse(Some(&os("vsock:2:1234"))).is_err());
        assert!(Target::parse(Some(&os("relative/path"))).is_err());
        assert!(!Notifier::new(None).is_enabled());
        assert!(!Notifier::new(Some(&os("vsock:2:1234"))).is_enabled());
    }

    #[test]
    fn the_watchdog_follows_sd_watchdog_enabled() {
        let me = 4242;
        let w = |usec: Option<&str>, pid: Option<&str>| {
            watchdog_interval(usec.map(os).as_deref(), pid.map(os).as_deref(), me)
        };
        assert_eq!(w(None, None), Ok(None));
        assert_eq!(w(None, Some("4242")), Ok(None));
        assert_eq!(w(Some("30000000"), None), Ok(Some(Duration::from_secs(15))));
        assert_eq!(
            w(Some("200000"), Some("4242")),
            Ok(Some(Duration::from_millis(100)))
        );
        // For another process: not ours to ping.
        assert_eq!(w(Some("200000"), Some("1")), Ok(None));
        assert_eq!(w(Some("1"), None), Ok(Some(Duration::from_millis(1))));
        for bad in [
            "0",
            "-5",
            "abc",
            "",
            "18446744073709551615",
            "99999999999999999999",
        ] {
            assert!(w(Some(bad), None).is_err(), "WATCHDOG_USEC={bad}");
        }
        assert!(w(Some("200000"), Some("me")).is_err());
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ocf-sd-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn received(socket: &UnixDatagram) -> Vec<String> {
        socket.set_nonblocking(true).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = socket.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    #[test]
    fn notifications_reach_path_and_abstract_sockets() {
        let dir = temp_dir("notify");
        let path = dir.join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(Some(path.as_os_str()));
        n.notify("READY=1");
        n.notify("STOPPING=1");
        assert_eq!(received(&server), ["READY=1", "STOPPING=1"]);

        use std::os::linux::net::SocketAddrExt;
        let name = format!("ocf-agent-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::new(Some(&os(&format!("@{name}"))));
        n.notify("WATCHDOG=1");
        assert_eq!(received(&server), ["WATCHDOG=1"]);

        // A socket that went away: logged once, no panic, and it works again when it is back.
        drop(server);
        n.notify("WATCHDOG=1");
        assert!(n.failing.get());
        n.notify("WATCHDOG=1");
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        n.notify("WATCHDOG=1");
        assert!(!n.failing.get());
        assert_eq!(received(&server), ["WATCHDOG=1"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_watchdog_task_pings_until_shutdown() {
        let dir = temp_dir("watchdog");
        let path = dir.join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let notifier = std::rc::Rc::new(Notifier::new(Some(path.as_os_str())));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut pings = Vec::new();
        rt.block_on(async {
            // The first ping goes at once, the next after `every`: with an hour, only one.
            let (stop_tx, stop_rx) = watch::channel(false);
            let task = ping_watchdog(notifier.clone(), Duration::from_secs(3600), stop_rx);
            let stop = async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = stop_tx.send(true);
            };
            tokio::join!(task, stop);
            pings.extend(received(&server));
            assert_eq!(pings, ["WATCHDOG=1"]);
            // Every millisecond: repeated pings, and none once it has returned.
            let (stop_tx, stop_rx) = watch::channel(false);
            let task = ping_watchdog(notifier, Duration::from_millis(1), stop_rx);
            let stop = async {
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                while pings.len() < 5 && std::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    pings.extend(received(&server));
                }
                let _ = stop_tx.send(true);
            };
            tokio::join!(task, stop);
        });
        assert!(pings.len() >= 5, "{pings:?}");
        received(&server);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            received(&server),
            Vec::<String>::new(),
            "pings after the stop"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
