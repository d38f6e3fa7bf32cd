//! Project tasks: `cargo xtask test | demo | bench | fuzz SECONDS`.
//!
//! `test` is the one command that sets up a fresh Debian machine for the whole suite (Debian
//! packages for the interop peers, a Python virtual environment with aiocoap) and runs it; CI
//! calls exactly this.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

/// Debian packages the test suite needs, with the command each one provides.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("libcoap3-bin", "coap-client-openssl"),
    ("iproute2", "ip"),
    ("util-linux", "unshare"),
    ("python3-venv", ""),
];

/// Python packages for the aiocoap interop client, pinned.
const PYTHON_PACKAGES: &[&str] = &["aiocoap==0.4.17", "cbor2==6.3.0"];

fn main() {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("demo") => demo(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("fuzz") => fuzz(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 test             install what the suite needs, then run every test\n  \
                 demo             run the agent on the simulated board\n  \
                 bench            run the benchmarks and print the README table rows\n  \
                 fuzz SECONDS     run each cargo-fuzz target for SECONDS (needs nightly)"
            );
            exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("xtask: {e}");
        exit(1);
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().map_err(|e| format!("cannot run {shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed with {status}"))
    }
}

fn have_command(name: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name} >/dev/null 2>&1"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Installs the Debian packages the suite needs, or says exactly how to.
fn ensure_debian_packages() -> Result<(), String> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(pkg, cmd)| {
            if cmd.is_empty() {
                !package_installed(pkg)
            } else {
                !have_command(cmd)
            }
        })
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let install = format!("apt-get install -y --no-install-recommends {}", missing.join(" "));
    if !is_root() || !have_command("apt-get") {
        return Err(format!(
            "the test suite needs Debian packages {missing:?}; run:\n  sudo apt-get update && sudo {install}"
        ));
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("sh").arg("-c").arg(format!("DEBIAN_FRONTEND=noninteractive {install} -qq")))
}

/// Creates the virtual environment with aiocoap; returns its python.
fn ensure_python_venv(root: &Path) -> Result<PathBuf, String> {
    let venv = root.join("target").join("interop-venv");
    let python = venv.join("bin").join("python");
    let stamp = venv.join(".packages");
    let wanted = PYTHON_PACKAGES.join(" ");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) && python.exists() {
        return Ok(python);
    }
    // Debian's own interpreter, so the venv module from python3-venv is the one used.
    let base = if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
    run(Command::new(base).args(["-m", "venv", "--clear"]).arg(&venv))?;
    run(Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .args(PYTHON_PACKAGES))?;
    std::fs::write(&stamp, wanted).map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
    Ok(python)
}

fn test(extra: &[String]) -> Result<(), String> {
    let root = workspace_root();
    ensure_debian_packages()?;
    let python = ensure_python_venv(&root)?;
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The end-to-end tests start the real binaries: build them first, once.
    run(Command::new(&cargo).current_dir(&root).args(["build", "--workspace", "--bins", "--locked"]))?;
    run(Command::new(&cargo)
        .current_dir(&root)
        .env("OCF_INTEROP_PYTHON", &python)
        .env("OCF_COAP_CLIENT", "coap-client-openssl")
        .args(["test", "--workspace", "--locked"])
        .args(extra))
}

fn demo(extra: &[String]) -> Result<(), String> {
    let root = workspace_root();
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let state = root.join("target").join("demo-state");
    run(Command::new(&cargo)
        .current_dir(&root)
        .args(["run", "--release", "--package", "ocf-agent", "--", "--board", "sim", "--state-dir"])
        .arg(&state)
        .args(extra))
}

fn bench(extra: &[String]) -> Result<(), String> {
    let root = workspace_root();
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(&cargo)
        .current_dir(&root)
        .args(["build", "--profile", "bench-release", "--package", "ocf-agent", "--package", "ocf-e2e", "--bins"]))?;
    // The shipped, size-tuned build, so its size can be reported.
    run(Command::new(&cargo).current_dir(&root).args(["build", "--release", "--package", "ocf-agent"]))?;
    run(Command::new(&cargo)
        .current_dir(&root)
        .args(["run", "--profile", "bench-release", "--package", "ocf-e2e", "--bin", "ocf-bench", "--"])
        .args(extra))
}

fn fuzz(extra: &[String]) -> Result<(), String> {
    let seconds: u64 = extra
        .first()
        .and_then(|s| s.parse().ok())
        .ok_or("usage: cargo xtask fuzz SECONDS")?;
    let root = workspace_root();
    let fuzz_dir = root.join("agent").join("ocf").join("fuzz");
    if !have_command("cargo-fuzz") {
        return Err("cargo-fuzz is not installed; run:\n  cargo install cargo-fuzz && rustup toolchain install nightly".into());
    }
    let list = Command::new("cargo")
        .current_dir(&fuzz_dir)
        .args(["+nightly", "fuzz", "list"])
        .output()
        .map_err(|e| format!("cannot run cargo fuzz list: {e}"))?;
    let targets = String::from_utf8_lossy(&list.stdout).to_string();
    for target in targets.lines().map(str::trim).filter(|t| !t.is_empty()) {
        eprintln!("xtask: fuzzing {target} for {seconds} s");
        run(Command::new("cargo")
            .current_dir(&fuzz_dir)
            .args(["+nightly", "fuzz", "run", target, "--"])
            .arg(format!("-max_total_time={seconds}")))?;
    }
    Ok(())
}
