//! Harness for the QEMU system test: the image `cargo xtask image` assembles, booted on QEMU's
//! `raspi3b` machine with its SD card, serial console to a file, QMP on a Unix socket, and user
//! networking that reaches only 127.0.0.1 through forwards:
//!
//! - hostfwd `127.0.0.1:<free port>` → guest 5684 (coaps+tcp) and the same for UDP 5683;
//! - guestfwd 10.0.2.100:5684 → the dev cloud's coaps+tcp listener on the host, and
//!   10.0.2.101:37 → the host's time (RFC 868), both through `ocf-qemu-relay` (one process per
//!   guest connection).
//!
//! QEMU is killed (SIGKILL, by PID) when a [`Guest`] is dropped.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

/// The environment variable naming the image directory (`cargo xtask test` sets it).
pub const IMAGE_ENV: &str = "OCF_QEMU_IMAGE";
/// The guest's address for the cloud (a guestfwd), which the dev cloud must advertise.
pub const GUEST_CLOUD_CIS: &str = "coaps+tcp://10.0.2.100:5684";

/// The image directory: `$OCF_QEMU_IMAGE`, or an error with the exact commands to run.
pub fn image_dir() -> Result<PathBuf, String> {
    let how = "build it with `cargo xtask image` and run the test with \
               OCF_QEMU_IMAGE=target/qemu/image, or run the whole suite with `cargo xtask test`, \
               which does both";
    let dir = std::env::var_os(IMAGE_ENV)
        .map(PathBuf::from)
        .ok_or_else(|| format!("{IMAGE_ENV} is not set: {how}"))?;
    for f in [
        "Image",
        "initramfs.cpio",
        "bcm2837-rpi-3-b.dtb",
        "card.img",
        "cmdline",
    ] {
        if !dir.join(f).exists() {
            return Err(format!(
                "the QEMU image is incomplete ({} is missing): {how}",
                dir.join(f).display()
            ));
        }
    }
    Ok(dir)
}

/// Copies the image's blank SD card to `path` (a fresh, unprovisioned device).
pub fn fresh_card(image: &Path, path: &Path) -> Result<(), String> {
    std::fs::copy(image.join("card.img"), path)
        .map(|_| ())
        .map_err(|e| format!("copy the blank card to {}: {e}", path.display()))
}

/// How to boot.
#[derive(Clone, Debug)]
pub struct Boot {
    pub image: PathBuf,
    /// The SD card image (raw), kept between boots.
    pub card: PathBuf,
    /// The serial console log of this boot (QEMU truncates it).
    pub console: PathBuf,
    /// The QMP socket.
    pub qmp: PathBuf,
    /// The dev cloud's coaps+tcp listener on the host, for the guestfwd.
    pub cloud: Option<SocketAddr>,
    /// `ocf-qemu-relay`.
    pub relay: PathBuf,
    /// Appended to the kernel command line (e.g. `ocf.log=debug`).
    pub cmdline: String,
}

/// A running guest.
pub struct Guest {
    pub child: Child,
    /// Host side of the guest's coaps+tcp endpoint.
    pub coaps: SocketAddr,
    /// Host side of the guest's CoAP over UDP endpoint.
    pub udp: SocketAddr,
    pub console: PathBuf,
    pub qmp: PathBuf,
    pub started: Instant,
}

fn free_tcp_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn free_udp_port() -> Result<u16, String> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    Ok(s.local_addr().map_err(|e| e.to_string())?.port())
}

/// A comma in a QEMU option value is written twice.
fn qemu_escape(s: &str) -> String {
    s.replace(',', ",,")
}

impl Guest {
    /// Starts QEMU. Host ports are picked by binding port 0 and releasing it; should QEMU lose
    /// the race for one, it exits at once and another set is tried.
    pub fn boot(b: &Boot) -> Result<Guest, String> {
        let mut last = String::new();
        for _ in 0..3 {
            match Guest::try_boot(b) {
                Ok(g) => return Ok(g),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn try_boot(b: &Boot) -> Result<Guest, String> {
        let (tcp, udp) = (free_tcp_port()?, free_udp_port()?);
        let relay = qemu_escape(&b.relay.display().to_string());
        let mut netdev = format!(
            "user,id=n0,restrict=on,\
             hostfwd=tcp:127.0.0.1:{tcp}-:5684,hostfwd=udp:127.0.0.1:{udp}-:5683,\
             guestfwd=tcp:10.0.2.101:37-cmd:{relay} time"
        );
        if let Some(cloud) = b.cloud {
            netdev.push_str(&format!(
                ",guestfwd=tcp:10.0.2.100:5684-cmd:{relay} tcp {cloud}"
            ));
        }
        let base = std::fs::read_to_string(b.image.join("cmdline"))
            .map_err(|e| format!("cmdline: {e}"))?;
        let cmdline = format!("{} {}", base.trim(), b.cmdline).trim().to_string();
        let _ = std::fs::remove_file(&b.qmp);
        let img = |f: &str| b.image.join(f).display().to_string();
        let mut cmd = Command::new("qemu-system-aarch64");
        cmd.args(["-M", "raspi3b", "-m", "1G"])
            // Single-threaded TCG boots in seconds; multi-threaded TCG on a loaded 2-core host
            // took 20–37 s.
            .args(["-accel", "tcg,thread=single"])
            .args(["-kernel", &img("Image")])
            .args(["-initrd", &img("initramfs.cpio")])
            .args(["-dtb", &img("bcm2837-rpi-3-b.dtb")])
            .args(["-append", &cmdline])
            .arg("-drive")
            .arg(format!(
                "if=sd,format=raw,file={}",
                qemu_escape(&b.card.display().to_string())
            ))
            .args(["-device", "usb-net,netdev=n0"])
            .args(["-netdev", &netdev])
            .args(["-device", "tmp105,id=t0,bus=i2c-bus.1,address=0x48"])
            .arg("-serial")
            .arg(format!("file:{}", b.console.display()))
            .args(["-display", "none", "-monitor", "none"])
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                qemu_escape(&b.qmp.display().to_string())
            ))
            // A guest reset (reboot through bcm2835_wdt) or power-off ends QEMU.
            .arg("-no-reboot")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start qemu-system-aarch64: {e}"))?;
        let err = child.stderr.take();
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(err) = err {
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        // QEMU creates the QMP socket once it is set up; it exits at once on a bad option or
        // a port it cannot bind.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                let text: Vec<String> = rx.try_iter().collect();
                return Err(format!(
                    "QEMU exited at once ({status}): {}",
                    text.join("\n")
                ));
            }
            if b.qmp.exists() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("QEMU did not create its QMP socket within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Guest {
            child,
            coaps: SocketAddr::from(([127, 0, 0, 1], tcp)),
            udp: SocketAddr::from(([127, 0, 0, 1], udp)),
            console: b.console.clone(),
            qmp: b.qmp.clone(),
            started,
        })
    }

    /// `coaps+tcp://127.0.0.1:PORT`: the guest's secure endpoint as the host reaches it.
    pub fn ep(&self) -> String {
        format!("coaps+tcp://{}", self.coaps)
    }

    /// Everything on the serial console during this boot.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    /// Polls the console every 20 ms until `f` finds something, or fails after `timeout`
    /// (or when QEMU exits).
    pub fn wait_console<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&str) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f(&self.console()) {
                return Ok(v);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // One last look: the line may have come with the exit.
                return f(&self.console())
                    .ok_or_else(|| format!("QEMU exited ({status}) while waiting for {what}"));
            }
            if Instant::now() > deadline {
                return Err(format!("timed out after {timeout:?} waiting for {what}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The setup PIN the agent printed on the console during this boot.
    pub fn pin(&self) -> Option<String> {
        console_value(&self.console(), "ocf-agent: setup PIN ")
    }

    /// The last `di` the agent printed during this boot.
    pub fn di(&self) -> Option<String> {
        console_values(&self.console(), "ocf-agent: di ").pop()
    }

    /// One QMP command (a fresh connection each time): its `return` value.
    pub fn qmp(&self, execute: &str, arguments: Json) -> Result<Json, String> {
        let s = UnixStream::connect(&self.qmp).map_err(|e| format!("QMP connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut w = s.try_clone().map_err(|e| e.to_string())?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line)
            .map_err(|e| format!("QMP greeting: {e}"))?;
        let mut call = |cmd: Json| -> Result<Json, String> {
            writeln!(w, "{cmd}").map_err(|e| format!("QMP send: {e}"))?;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line)
                    .map_err(|e| format!("QMP read: {e}"))?
                    == 0
                {
                    return Err("QMP closed".into());
                }
                let v: Json =
                    serde_json::from_str(&line).map_err(|e| format!("QMP answer {line:?}: {e}"))?;
                if let Some(ret) = v.get("return") {
                    return Ok(ret.clone());
                }
                if let Some(err) = v.get("error") {
                    return Err(format!("QMP {cmd}: {err}"));
                }
            }
        };
        call(json!({"execute": "qmp_capabilities"}))?;
        call(json!({"execute": execute, "arguments": arguments}))
    }

    /// Sets the TMP105's temperature (millidegrees Celsius).
    pub fn set_temperature(&self, millidegrees: i64) -> Result<(), String> {
        self.qmp(
            "qom-set",
            json!({"path": "/machine/peripheral/t0", "property": "temperature", "value": millidegrees}),
        )
        .map(|_| ())
    }

    /// Pulls the plug: SIGKILL to QEMU, nothing is flushed.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for QEMU to exit by itself (a guest reboot or power-off).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(format!("QEMU still running after {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The value after the last `prefix` on a console line.
pub fn console_value(console: &str, prefix: &str) -> Option<String> {
    console_values(console, prefix).pop()
}

/// The values after `prefix` on every console line that has it, in order.
pub fn console_values(console: &str, prefix: &str) -> Vec<String> {
    console
        .lines()
        .filter_map(|l| l.split_once(prefix))
        .filter_map(|(_, v)| v.split_whitespace().next().map(str::to_string))
        .collect()
}
