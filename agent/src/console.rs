//! What a person at the board must read and the log must never hold: a new PIN, on the
//! console.

use tracing::{info, warn};

/// Shows a new PIN (`what`: the setup PIN, or a Random PIN) once, on the console, never
/// through the log. Under systemd stdout is the journal (`JOURNAL_STREAM` is set,
/// systemd.exec(5)), which is a log: the PIN then goes to the system console `/dev/console`
/// instead, where a person at the board (serial line or screen) reads it, and the journal only
/// says where to look.
pub fn show_pin(what: &str, pin: &ocf::security::otm::Pin) {
    let line = format!("ocf-agent: {what} {}\n", pin.expose());
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        use std::io::Write;
        let shown = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/console")
            .and_then(|mut console| console.write_all(line.as_bytes()));
        match shown {
            Ok(()) if what == "setup PIN" => info!("a new setup PIN was created; it is shown on the system console and kept in the state directory"),
            Ok(()) => info!("a new {what} is shown on the system console"),
            Err(_) if what == "setup PIN" => warn!("a new setup PIN was created but no console could show it; read it from the state directory (pin, mode 0600)"),
            Err(_) => warn!("a new {what} was made but no console could show it"),
        }
    } else {
        print!("{line}");
    }
}
