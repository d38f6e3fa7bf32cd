//! The part of a systemd service file (systemd.service(5), systemd.exec(5)) that the QEMU test
//! image's busybox init carries out: parsed on the host when the image is assembled, and turned
//! into the shell launcher the guest's init runs. The Yocto image runs the same file under
//! systemd, so what the test boots cannot drift from what ships.

use std::fmt::Write as _;
use std::time::Duration;

/// What the launcher takes from the unit's `[Service]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// `ExecStart=`: the command line, split into words.
    pub exec_start: Vec<String>,
    /// `Environment=`: assignments in order.
    pub environment: Vec<(String, String)>,
    /// `EnvironmentFile=`: (path, optional: the `-` prefix).
    pub environment_files: Vec<(String, bool)>,
    /// `Restart=` (default `no`).
    pub restart: Restart,
    /// `RestartSec=` (default 100 ms).
    pub restart_sec: Duration,
    /// `ExecStopPost=`: command lines, in order.
    pub exec_stop_post: Vec<Vec<String>>,
    /// `StateDirectory=` names (under /var/lib) and `StateDirectoryMode=` (default 0755).
    pub state_directories: Vec<String>,
    pub state_directory_mode: u32,
    /// `UMask=` (default 0022).
    pub umask: u32,
    /// Directives of the file this launcher does not carry out, as written (`Key=value`).
    pub ignored: Vec<String>,
}

/// `Restart=` (systemd.service(5), table 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    No,
    Always,
    OnSuccess,
    OnFailure,
    OnAbnormal,
    OnAbort,
}

impl Restart {
    fn parse(v: &str) -> Result<Restart, String> {
        Ok(match v {
            "no" => Restart::No,
            "always" => Restart::Always,
            "on-success" => Restart::OnSuccess,
            "on-failure" => Restart::OnFailure,
            "on-abnormal" => Restart::OnAbnormal,
            "on-abort" => Restart::OnAbort,
            // on-watchdog needs a watchdog, which the launcher does not run.
            other => return Err(format!("Restart={other} is not supported by the launcher")),
        })
    }

    /// The `case "$result"` patterns (SERVICE_RESULT values) that restart the service.
    fn results(self) -> &'static [&'static str] {
        match self {
            Restart::No => &[],
            Restart::Always => &["success", "exit-code", "signal", "core-dump"],
            Restart::OnSuccess => &["success"],
            Restart::OnFailure => &["exit-code", "signal", "core-dump"],
            Restart::OnAbnormal | Restart::OnAbort => &["signal", "core-dump"],
        }
    }
}

/// Parses a unit file. Unknown `[Service]` directives and other sections are recorded in
/// [`Service::ignored`]; a directive the launcher takes but cannot carry out faithfully
/// (`$VAR` or `%` specifiers in a command line, an `@` prefix) is an error, so that the test
/// never silently runs something other than the unit says.
pub fn parse(text: &str) -> Result<Service, String> {
    let mut s = Service {
        exec_start: Vec::new(),
        environment: Vec::new(),
        environment_files: Vec::new(),
        restart: Restart::No,
        restart_sec: Duration::from_millis(100),
        exec_stop_post: Vec::new(),
        state_directories: Vec::new(),
        state_directory_mode: 0o755,
        umask: 0o022,
        ignored: Vec::new(),
    };
    let mut section = String::new();
    let mut exec_start = None;
    // Continuation lines (a trailing backslash) are joined first (systemd.syntax(7)).
    let mut logical = Vec::new();
    let mut acc = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if acc.is_empty() && (line.starts_with('#') || line.starts_with(';')) {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            acc.push_str(head);
            acc.push(' ');
            continue;
        }
        acc.push_str(line);
        logical.push((i + 1, std::mem::take(&mut acc)));
    }
    for (n, line) in logical {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') && line.ends_with(']') {
            section = line[1..line.len() - 1].to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
            .ok_or_else(|| format!("line {n}: not Key=value: {line:?}"))?;
        if section != "Service" {
            continue;
        }
        let at = |e: String| format!("line {n}: {key}=: {e}");
        match key {
            "ExecStart" => {
                if exec_start.is_some() {
                    return Err(at(
                        "more than one ExecStart= (only Type=oneshot allows it)".into()
                    ));
                }
                exec_start = Some(command(value).map_err(at)?);
            }
            "ExecStopPost" if value.is_empty() => s.exec_stop_post.clear(),
            "ExecStopPost" => s.exec_stop_post.push(command(value).map_err(at)?),
            "Environment" if value.is_empty() => s.environment.clear(),
            "Environment" => {
                for word in words(value).map_err(at)? {
                    let (k, v) = word
                        .split_once('=')
                        .ok_or_else(|| at(format!("{word:?} is not NAME=VALUE")))?;
                    s.environment.push((k.to_string(), v.to_string()));
                }
            }
            "EnvironmentFile" if value.is_empty() => s.environment_files.clear(),
            "EnvironmentFile" => {
                let (path, optional) = match value.strip_prefix('-') {
                    Some(p) => (p, true),
                    None => (value, false),
                };
                s.environment_files.push((path.to_string(), optional));
            }
            "Restart" => s.restart = Restart::parse(value).map_err(at)?,
            "RestartSec" => s.restart_sec = timespan(value).map_err(at)?,
            "StateDirectory" if value.is_empty() => s.state_directories.clear(),
            "StateDirectory" => {
                for d in value.split_whitespace() {
                    if d.contains("..") || d.starts_with('/') || d.contains(':') {
                        return Err(at(format!(
                            "{d:?}: only plain relative names are supported"
                        )));
                    }
                    s.state_directories.push(d.to_string());
                }
            }
            "StateDirectoryMode" => s.state_directory_mode = octal(value).map_err(at)?,
            "UMask" => s.umask = octal(value).map_err(at)?,
            _ => s.ignored.push(format!("{key}={value}")),
        }
    }
    s.exec_start = exec_start.ok_or("the unit has no ExecStart=")?;
    Ok(s)
}

/// A command line of ExecStart=/ExecStopPost=: prefixes that only change privileges (`+`, `!`,
/// `!!`: the image runs everything as root) or ignore the exit status (`-`: the launcher never
/// acts on ExecStopPost='s status) are dropped.
fn command(value: &str) -> Result<Vec<String>, String> {
    let mut v = value;
    loop {
        if let Some(rest) = v.strip_prefix(['+', '!', '-', ':']) {
            v = rest;
        } else if v.starts_with('@') {
            return Err("the @ prefix (another argv[0]) is not supported by the launcher".into());
        } else {
            break;
        }
    }
    let w = words(v)?;
    if w.is_empty() {
        return Err("empty command line".into());
    }
    for word in &w {
        if word.contains('$') || word.contains('%') {
            return Err(format!(
                "{word:?}: variables and specifiers are not supported by the launcher"
            ));
        }
    }
    Ok(w)
}

/// Splits a value into words with systemd's quoting: "double" and 'single' quotes, backslash
/// escapes (systemd.syntax(7), "Quoting").
fn words(value: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut word = String::new();
        let mut quote = None;
        while let Some(c) = chars.next() {
            match (c, quote) {
                ('\\', _) => match chars.next() {
                    Some('n') => word.push('\n'),
                    Some('t') => word.push('\t'),
                    Some(e) => word.push(e),
                    None => return Err("a trailing backslash".into()),
                },
                ('"' | '\'', None) => quote = Some(c),
                (q, Some(open)) if q == open => quote = None,
                (w, None) if w.is_whitespace() => break,
                (other, _) => word.push(other),
            }
        }
        if quote.is_some() {
            return Err(format!("unbalanced quotes in {value:?}"));
        }
        out.push(word);
    }
}

/// A time span (systemd.time(7)): "2", "2s", "500ms", "1min 30s".
fn timespan(value: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    for part in value.split_whitespace() {
        let split = part
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(part.len());
        let (num, unit) = part.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("{value:?} is not a time span"))?;
        let secs = match unit {
            "" | "s" | "sec" | "second" | "seconds" => n,
            "ms" | "msec" => n / 1000.0,
            "m" | "min" | "minute" | "minutes" => n * 60.0,
            "h" | "hr" | "hour" | "hours" => n * 3600.0,
            _ => return Err(format!("{value:?}: unknown time unit {unit:?}")),
        };
        total += Duration::from_secs_f64(secs);
    }
    Ok(total)
}

fn octal(value: &str) -> Result<u32, String> {
    u32::from_str_radix(value, 8).map_err(|_| format!("{value:?} is not an octal mode"))
}

/// Single-quoted for sh.
fn sh(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

fn sh_line(words: &[String]) -> String {
    words.iter().map(|w| sh(w)).collect::<Vec<_>>().join(" ")
}

impl Service {
    /// The busybox sh launcher: sets up the state directories and umask, then starts
    /// ExecStart= with the unit's environment, and after every exit runs ExecStopPost= with
    /// SERVICE_RESULT, EXIT_CODE and EXIT_STATUS set as systemd.exec(5) describes, and restarts
    /// as Restart= says after RestartSec=. The main PID goes to /run/<name>.pid (for the
    /// shutdown step). `ocf.log=LEVEL` on the kernel command line overrides `OCF_LOG` after the
    /// unit's environment, as a drop-in would.
    pub fn launcher(&self, name: &str) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "#!/bin/sh");
        let _ = writeln!(
            o,
            "# Generated by `cargo xtask image` from {name}.service; do not edit. The busybox init of\n\
             # the QEMU test image runs it in place of systemd."
        );
        if !self.ignored.is_empty() {
            let _ = writeln!(o, "# Directives of the unit not carried out here:");
            for d in &self.ignored {
                let _ = writeln!(o, "#   {d}");
            }
        }
        let _ = writeln!(o, "umask {:04o}", self.umask);
        for d in &self.state_directories {
            let path = format!("/var/lib/{d}");
            let _ = writeln!(
                o,
                "mkdir -p {p} && chmod {m:04o} {p}",
                p = sh(&path),
                m = self.state_directory_mode
            );
        }
        let pidfile = format!("/run/{name}.pid");
        let _ = writeln!(o, "while :; do");
        let _ = writeln!(o, "\t(");
        for (k, v) in &self.environment {
            let _ = writeln!(o, "\t\texport {}", sh(&format!("{k}={v}")));
        }
        for (path, optional) in &self.environment_files {
            if *optional {
                let _ = writeln!(
                    o,
                    "\t\t[ -r {p} ] && {{ set -a; . {p}; set +a; }}",
                    p = sh(path)
                );
            } else {
                let _ = writeln!(o, "\t\tset -a; . {} || exit 1; set +a", sh(path));
            }
        }
        let _ = writeln!(
            o,
            "\t\tfor arg in $(cat /proc/cmdline); do\n\
             \t\t\tcase \"$arg\" in ocf.log=*) export OCF_LOG=\"${{arg#ocf.log=}}\" ;; esac\n\
             \t\tdone"
        );
        let _ = writeln!(o, "\t\texec {}", sh_line(&self.exec_start));
        let _ = writeln!(o, "\t) &");
        let _ = writeln!(o, "\tpid=$!");
        let _ = writeln!(o, "\techo \"$pid\" > {}", sh(&pidfile));
        let _ = writeln!(o, "\twait \"$pid\"");
        let _ = writeln!(o, "\tstatus=$?");
        let _ = writeln!(o, "\trm -f {}", sh(&pidfile));
        // systemd.exec(5), "$SERVICE_RESULT": SIGHUP, SIGINT, SIGTERM and SIGPIPE count as a
        // clean exit (systemd.service(5), SuccessExitStatus=).
        let _ = writeln!(
            o,
            "\tif [ \"$status\" -gt 128 ]; then\n\
             \t\tcode=killed; st=$(kill -l $((status - 128)))\n\
             \t\tcase \"$st\" in HUP | INT | TERM | PIPE) result=success ;; *) result=signal ;; esac\n\
             \telif [ \"$status\" -eq 0 ]; then\n\
             \t\tcode=exited; st=0; result=success\n\
             \telse\n\
             \t\tcode=exited; st=$status; result=exit-code\n\
             \tfi"
        );
        let _ = writeln!(
            o,
            "\techo \"ocf-init: {name}.service: main process exited, code=$code, status=$st, result=$result\""
        );
        for cmd in &self.exec_stop_post {
            let _ = writeln!(
                o,
                "\tSERVICE_RESULT=\"$result\" EXIT_CODE=\"$code\" EXIT_STATUS=\"$st\" {}",
                sh_line(cmd)
            );
        }
        let restart = self.restart.results();
        if restart.is_empty() {
            let _ = writeln!(o, "\tbreak");
        } else {
            let _ = writeln!(
                o,
                "\tcase \"$result\" in {}) ;; *) break ;; esac",
                restart.join(" | ")
            );
        }
        let _ = writeln!(o, "\tsleep {:.3}", self.restart_sec.as_secs_f64());
        let _ = writeln!(o, "done");
        let _ = writeln!(
            o,
            "echo \"ocf-init: {name}.service: not restarted ($result)\""
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYER_UNIT: &str =
        include_str!("../../yocto/meta-ocf/recipes-ocf/ocf-agent/files/ocf-agent.service");

    #[test]
    fn the_layer_unit_parses_with_the_contract() {
        let s = parse(LAYER_UNIT).unwrap();
        assert_eq!(s.exec_start[0], "/usr/bin/ocf-agent");
        for want in ["--state-dir", "/var/lib/ocf-agent", "--reboot-exit-status"] {
            assert!(s.exec_start.iter().any(|w| w == want), "{:?}", s.exec_start);
        }
        assert!(s.environment.iter().any(|(k, _)| k == "OCF_LOG"));
        assert_eq!(s.restart, Restart::OnFailure);
        assert_eq!(s.restart_sec, Duration::from_secs(2));
        assert_eq!(
            s.exec_stop_post[0][0],
            "/usr/libexec/ocf-agent/reboot-if-asked"
        );
    }

    #[test]
    fn quoting_prefixes_continuations_and_unknown_directives() {
        let s = parse(
            "[Unit]\nDescription=x\n[Service]\n# comment\nEnvironment=\"A=b c\" D=e\n\
             Environment=F='g h'\nEnvironmentFile=-/etc/default/x\n\
             ExecStart=/bin/x --a \"b c\" \\\n  --d\nExecStopPost=-+/bin/y 85\n\
             Restart=always\nRestartSec=500ms\nUser=nobody\nProtectSystem=strict\n\
             StateDirectory=a b\nStateDirectoryMode=0700\nUMask=0077\n",
        )
        .unwrap();
        assert_eq!(s.exec_start, ["/bin/x", "--a", "b c", "--d"]);
        assert_eq!(
            s.environment,
            [
                ("A".into(), "b c".into()),
                ("D".into(), "e".into()),
                ("F".into(), "g h".into())
            ]
        );
        assert_eq!(s.environment_files, [("/etc/default/x".into(), true)]);
        assert_eq!(s.exec_stop_post, [vec!["/bin/y".to_string(), "85".into()]]);
        assert_eq!(s.restart, Restart::Always);
        assert_eq!(s.restart_sec, Duration::from_millis(500));
        assert_eq!(s.ignored, ["User=nobody", "ProtectSystem=strict"]);
        assert_eq!(s.state_directories, ["a", "b"]);
        assert_eq!((s.state_directory_mode, s.umask), (0o700, 0o077));
        let sh = s.launcher("x");
        assert!(sh.contains("exec '/bin/x' '--a' 'b c' '--d'"), "{sh}");
        assert!(sh.contains("export 'A=b c'"), "{sh}");
        assert!(sh.contains("#   User=nobody"), "{sh}");
    }

    #[test]
    fn hardening_lines_are_ignored_not_refused() {
        let mut text = LAYER_UNIT.to_string();
        text.push_str(
            "NoNewPrivileges=yes\nCapabilityBoundingSet=\nProtectSystem=strict\n\
             ReadWritePaths=-/sys/devices/platform\nDeviceAllow=char-i2c rw\n\
             SystemCallFilter=~@privileged @resources\n[Install]\nWantedBy=multi-user.target\n",
        );
        let s = parse(&text).unwrap();
        assert_eq!(
            s,
            Service {
                ignored: s.ignored.clone(),
                ..parse(LAYER_UNIT).unwrap()
            }
        );
        for d in [
            "CapabilityBoundingSet=",
            "SystemCallFilter=~@privileged @resources",
        ] {
            assert!(s.ignored.iter().any(|i| i == d), "{:?}", s.ignored);
        }
    }

    #[test]
    fn what_the_launcher_cannot_do_is_refused() {
        for bad in [
            "[Service]\nExecStart=/bin/x $FOO\n",
            "[Service]\nExecStart=/bin/x %i\n",
            "[Service]\nExecStart=@/bin/x y\n",
            "[Service]\nExecStart=/bin/x\nRestart=on-watchdog\n",
            "[Service]\nRestart=always\n",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
