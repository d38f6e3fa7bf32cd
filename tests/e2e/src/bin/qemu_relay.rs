//! `ocf-qemu-relay`: what a QEMU user-network `guestfwd=…-cmd:` runs for each guest connection,
//! its stdin and stdout being that connection (QEMU `-netdev user`, "guestfwd").
//!
//! - `ocf-qemu-relay tcp ADDR:PORT`: relays the connection to a TCP server on the host. The
//!   `guestfwd=…-tcp:` form cannot serve here: it is one character device, connected once when
//!   QEMU starts, so a second guest connection (a reconnect, a retried TLS handshake) would be
//!   spliced into the first one's stream.
//! - `ocf-qemu-relay time`: answers with the host's time as the Time Protocol does (RFC 868:
//!   32-bit seconds since 1900-01-01, big-endian), for busybox `rdate`.
//!
//! Nothing is written to stderr: QEMU hands the guest connection to it as well.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds from 1900-01-01 to 1970-01-01 (RFC 868).
const RFC868_EPOCH: u64 = 2_208_988_800;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["time"] => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let t = (now + RFC868_EPOCH) as u32;
            let mut out = std::io::stdout();
            if out
                .write_all(&t.to_be_bytes())
                .and_then(|()| out.flush())
                .is_err()
            {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        ["tcp", addr] => {
            let Ok(up) = TcpStream::connect(addr) else {
                return ExitCode::FAILURE;
            };
            let _ = up.set_nodelay(true);
            let Ok(mut up_w) = up.try_clone() else {
                return ExitCode::FAILURE;
            };
            let to_host = std::thread::spawn(move || {
                let mut stdin = std::io::stdin().lock();
                let mut buf = [0u8; 16384];
                while let Ok(n) = stdin.read(&mut buf) {
                    if n == 0 || up_w.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                // The guest side is gone (or QEMU is): end the host side too, so this relay
                // never outlives QEMU waiting on a peer that keeps the connection open.
                let _ = up_w.shutdown(Shutdown::Both);
            });
            let mut up_r = up;
            let mut stdout = std::io::stdout().lock();
            let mut buf = [0u8; 16384];
            while let Ok(n) = up_r.read(&mut buf) {
                if n == 0
                    || stdout
                        .write_all(&buf[..n])
                        .and_then(|()| stdout.flush())
                        .is_err()
                {
                    break;
                }
            }
            // The host side closed: end the guest connection too (exiting closes stdin/stdout).
            drop(to_host);
            ExitCode::SUCCESS
        }
        _ => ExitCode::from(2),
    }
}
