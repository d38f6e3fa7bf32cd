//! Project tasks: `cargo xtask test | demo | bench | fuzz SECONDS`.
//!
//! `test` is the one command that sets up a fresh Debian machine for the whole suite (Debian
//! packages for the interop peers, a Python virtual environment with aiocoap) and runs it; CI
//! calls exactly this.

mod drivers;
mod soak;
mod yocto;

use std::env;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

mod image;
mod qemu;
mod unit;

/// Debian packages the test suite needs, with the command each one provides.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("libcoap3-bin", "coap-client-openssl"),
    ("iproute2", "ip"),
    ("util-linux", "unshare"),
    ("python3-venv", ""),
    // The console's browser test (tests/e2e/tests/console.rs): headless Chromium through
    // chromedriver's WebDriver API.
    ("chromium", "chromium"),
    ("chromium-driver", "chromedriver"),
    // The Yocto layer's checks (yocto.rs): the agent cross-built for aarch64, and the service
    // checked with systemd-analyze.
    ("gcc-aarch64-linux-gnu", "aarch64-linux-gnu-gcc"),
    ("libc6-dev-arm64-cross", ""),
    // The agent's DTLS endpoint links the system's OpenSSL (the openssl crate), found with
    // pkg-config: for the host, and for the aarch64 build of the Yocto checks (Debian
    // multiarch, the architecture is added first).
    ("libssl-dev", ""),
    ("pkg-config", "pkg-config"),
    ("libssl-dev:arm64", ""),
    ("systemd", "systemd-analyze"),
];

/// Python packages, pinned: the aiocoap interop client, and the Yocto layer's linter and kas
/// (whose JSON schema the kas files are validated against).
const PYTHON_PACKAGES: &[&str] = &[
    "aiocoap==0.4.17",
    "cbor2==6.3.0",
    "oelint-adv==9.11.2",
    "kas==5.5",
    "jsonschema==4.26.0",
];

fn main() {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("demo") => demo(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("fuzz") => fuzz(&args[1..]),
        Some("soak") => soak::soak(&args[1..]),
        Some("yocto-crates") => yocto::write_crates_inc(&workspace_root()),
        Some("drivers-test") => drivers::test(&workspace_root()),
        Some("yocto-test") => ensure_debian_packages()
            .and_then(|()| ensure_python_venv(&workspace_root()))
            .and_then(|python| yocto::test(&workspace_root(), &python)),
        Some("image") => image::command(&args[1..]),
        Some("qemu") => qemu::command(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 test             install what the suite needs, then run every test\n  \
                 demo             run the agent on the simulated board\n  \
                 bench            run the benchmarks and print the README table rows\n  \
                 fuzz SECONDS|--runs N [--asan] [TARGET..]  run cargo-fuzz targets (needs nightly)\n  \
                 soak [--minutes N]  the agent and the cloud under load with cloud cuts\n  \
                 yocto-crates     write the Yocto recipe's crate list from Cargo.lock\n  \
                 yocto-test       only the Yocto layer's checks (part of test)\n  \
                 image            assemble the QEMU raspi3b test image (target/qemu/image)\n  \
                 qemu             boot the test image in QEMU with the dev cloud on the host\n  \
                 drivers-test     only the no_std chip build and the rppal feature's tests (part of test)"
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
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
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
    let install = format!(
        "apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    if !is_root() || !have_command("apt-get") {
        let arch = if missing.iter().any(|p| p.ends_with(":arm64")) {
            "sudo dpkg --add-architecture arm64 && "
        } else {
            ""
        };
        return Err(format!(
            "the test suite needs Debian packages {missing:?}; run:\n  {arch}sudo apt-get update && sudo {install}"
        ));
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    if missing.iter().any(|p| p.ends_with(":arm64")) {
        run(Command::new("dpkg").args(["--add-architecture", "arm64"]))?;
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("sh")
        .arg("-c")
        .arg(format!("DEBIAN_FRONTEND=noninteractive {install} -qq")))
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
    let base = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    run(Command::new(base)
        .args(["-m", "venv", "--clear"])
        .arg(&venv))?;
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(PYTHON_PACKAGES))?;
    std::fs::write(&stamp, wanted).map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
    Ok(python)
}

/// Runs one stage of `test`, printing how long it took (the suite must stay well inside CI's
/// 90 minutes on 2 cores: the times show where they go).
fn stage<T>(name: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let start = std::time::Instant::now();
    eprintln!("xtask: stage {name}");
    let result = f();
    let took = start.elapsed().as_secs_f64();
    match &result {
        Ok(_) => eprintln!("xtask: stage {name}: done in {took:.1} s"),
        Err(_) => eprintln!("xtask: stage {name}: FAILED after {took:.1} s"),
    }
    result
}

fn test(extra: &[String]) -> Result<(), String> {
    let root = workspace_root();
    let started = std::time::Instant::now();
    stage("Debian packages", ensure_debian_packages)?;
    let python = stage("Python environment", || ensure_python_venv(&root))?;
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    stage("build with the Yocto release's Rust", || {
        check_rust_version(&root)
    })?;
    // The QEMU system test boots this image (tests/e2e/tests/system_qemu.rs).
    let image = stage("QEMU test image", || image::build(&root, false))?;
    // The end-to-end tests start the real binaries: build them first, once.
    stage("build the binaries", || {
        run(Command::new(&cargo).current_dir(&root).args([
            "build",
            "--workspace",
            "--bins",
            "--locked",
        ]))
    })?;
    stage("cargo test", || {
        run(Command::new(&cargo)
            .current_dir(&root)
            .env("OCF_INTEROP_PYTHON", &python)
            .env("OCF_COAP_CLIENT", "coap-client-openssl")
            .env("OCF_QEMU_IMAGE", &image)
            .args(["test", "--workspace", "--locked"])
            .args(extra))
    })?;
    stage("no_std chip drivers and the rppal feature", || {
        drivers::test(&root)
    })?;
    stage("Yocto layer checks", || yocto::test(&root, &python))?;
    eprintln!(
        "xtask: test: every stage passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The Rust the Yocto layer's release ships (wrynose, 6.0 LTS: 1.94.1), for the workspace's
/// `rust-version`. Checking with that toolchain keeps the declaration honest as dependencies move.
use yocto::YOCTO_RUST;

fn check_rust_version(root: &Path) -> Result<(), String> {
    if !have_command("rustup") {
        return Err(format!(
            "rustup is needed to check the build with Rust {YOCTO_RUST} (the Yocto release's); install it from rustup.rs"
        ));
    }
    let installed = Command::new("rustup")
        .args(["run", YOCTO_RUST, "rustc", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !installed {
        eprintln!(
            "xtask: installing Rust {YOCTO_RUST} (the Yocto release's) to check rust-version"
        );
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            YOCTO_RUST,
            "--profile",
            "minimal",
        ]))?;
    }
    run(Command::new("rustup")
        .current_dir(root)
        .env(
            "CARGO_TARGET_DIR",
            root.join("target").join("rust-version-check"),
        )
        .args([
            "run",
            YOCTO_RUST,
            "cargo",
            "check",
            "--workspace",
            "--all-targets",
            "--locked",
            "--quiet",
        ]))
}

/// `cargo xtask demo [--keep] [--readings N]`: builds the release binaries, then becomes
/// `ocf-demo` (exec, as `cargo run` does too), which starts the dev cloud and the agent on the
/// sim board in its secure mode with state under `target/demo/`, onboards the device with
/// `ocf-mediator` and the setup PIN the agent printed, and shows it working through the cloud
/// until Ctrl-C. Exec rather than wait: Ctrl-C then reaches only the demo, which stops both
/// processes in order, and the demo's exit status is this command's.
fn demo(extra: &[String]) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let root = workspace_root();
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let dir = root.join("target").join("demo");
    run(Command::new(&cargo).current_dir(&root).args([
        "build",
        "--release",
        "--package",
        "ocf-agent",
        "--package",
        "ocf-dev-cloud",
        "--package",
        "ocf-mediator",
        "--package",
        "ocf-e2e",
        "--bin",
        "ocf-agent",
        "--bin",
        "ocf-dev-cloud",
        "--bin",
        "ocf-mediator",
        "--bin",
        "ocf-demo",
    ]))?;
    let err = Command::new(&cargo)
        .current_dir(&root)
        .args([
            "run",
            "--quiet",
            "--release",
            "--package",
            "ocf-e2e",
            "--bin",
            "ocf-demo",
            "--",
            "--dir",
        ])
        .arg(&dir)
        .args(extra)
        .exec();
    Err(format!("cannot run ocf-demo: {err}"))
}

/// `cargo xtask bench [SECONDS]`: builds the agent, the dev cloud and `ocf-bench` with the
/// `bench-release` profile, and the shipped `release` agent twice (x86_64 glibc, and static
/// x86_64 musl, adding the rustup target and finding a C compiler for ring as needed), then runs
/// `ocf-bench`, which prints the README's table rows (the figures beside their goals and the
/// reference device's). SECONDS (default 5) per load run.
fn bench(extra: &[String]) -> Result<(), String> {
    const MUSL: &str = "x86_64-unknown-linux-musl";
    const MUSL_CC: &str = "CC_x86_64_unknown_linux_musl";

    /// The rustup target for the static build, added if missing.
    fn ensure_musl_target() -> Result<(), String> {
        let installed = Command::new("rustup")
            .args(["target", "list", "--installed"])
            .output()
            .map_err(|e| {
                format!(
                    "cannot run rustup ({e}); install the target with:\n  rustup target add {MUSL}"
                )
            })?;
        if String::from_utf8_lossy(&installed.stdout)
            .lines()
            .any(|l| l.trim() == MUSL)
        {
            return Ok(());
        }
        eprintln!("xtask: adding the rustup target {MUSL}");
        run(Command::new("rustup").args(["target", "add", MUSL]))
            .map_err(|e| format!("{e}; run:\n  rustup target add {MUSL}"))
    }

    /// A C compiler for ring's C code on the musl target: $CC_x86_64_unknown_linux_musl if set,
    /// else musl-gcc (Debian's musl-tools), else the host gcc (ring's C needs no libc headers
    /// beyond the compiler's own); installs musl-tools if neither is there and it can.
    fn musl_cc() -> Result<String, String> {
        if let Ok(cc) = env::var(MUSL_CC) {
            return Ok(cc);
        }
        for cc in ["musl-gcc", "gcc"] {
            if have_command(cc) {
                return Ok(cc.into());
            }
        }
        let install = "apt-get install -y --no-install-recommends musl-tools";
        if !is_root() || !have_command("apt-get") {
            return Err(format!(
                "the static musl build needs a C compiler for ring; run:\n  sudo apt-get update && sudo {install}"
            ));
        }
        eprintln!("xtask: installing musl-tools");
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("sh")
            .arg("-c")
            .arg(format!("DEBIAN_FRONTEND=noninteractive {install} -qq")))?;
        Ok("musl-gcc".into())
    }

    build_bench_release(&["ocf-agent", "ocf-dev-cloud", "ocf-e2e"])?;
    let root = workspace_root();
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The shipped, size-tuned builds (the agent alone, so only its own features are on), for
    // their size and their RSS signed in.
    run(Command::new(&cargo).current_dir(&root).args([
        "build",
        "--release",
        "--package",
        "ocf-agent",
    ]))?;
    ensure_musl_target()?;
    let cc = musl_cc()?;
    run(Command::new(&cargo)
        .current_dir(&root)
        .env(MUSL_CC, &cc)
        .args([
            "build",
            "--release",
            "--target",
            MUSL,
            "--package",
            "ocf-agent",
            // Static: no system OpenSSL to link, so no DTLS endpoint.
            "--no-default-features",
        ]))
    .map_err(|e| {
        format!(
            "{e}\nthe static build needs the rustup target and a C compiler for ring:\n  \
             rustup target add {MUSL} && sudo apt-get install musl-tools   (or set {MUSL_CC}=gcc)"
        )
    })?;
    run_bench_release("ocf-bench", extra)
}

/// Builds the binaries of `packages` with the `bench-release` profile (the release build tuned
/// for speed instead of size, which the bench and soak figures are measured with).
fn build_bench_release(packages: &[&str]) -> Result<(), String> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "--profile", "bench-release"]);
    for p in packages {
        cmd.args(["--package", p]);
    }
    run(cmd.arg("--bins"))
}

/// Runs an ocf-e2e binary built with the `bench-release` profile, with `extra` as its arguments.
fn run_bench_release(bin: &str, extra: &[String]) -> Result<(), String> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "run",
            "--profile",
            "bench-release",
            "--package",
            "ocf-e2e",
            "--bin",
            bin,
            "--",
        ])
        .args(extra))
}

fn fuzz(extra: &[String]) -> Result<(), String> {
    const USAGE: &str = "usage: cargo xtask fuzz (SECONDS | --runs N) [--asan] [TARGET...]";
    let mut limit = None;
    let mut asan = false;
    let mut only = Vec::new();
    let mut args = extra.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => {
                let n: u64 = args.next().and_then(|s| s.parse().ok()).ok_or(USAGE)?;
                limit = Some(format!("-runs={n}"));
            }
            "--asan" => asan = true,
            s if limit.is_none() && s.parse::<u64>().is_ok() => {
                limit = Some(format!("-max_total_time={s}"));
            }
            s => only.push(s.to_string()),
        }
    }
    let limit = limit.ok_or(USAGE)?;
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
        if !only.is_empty() && !only.iter().any(|o| o == target) {
            continue;
        }
        eprintln!("xtask: fuzzing {target} ({limit})");
        let started = std::time::Instant::now();
        // The core forbids `unsafe`, so by default the targets run without AddressSanitizer
        // (about 7 times the executions per second) but with overflow checks and debug
        // assertions on; `--asan` brings the sanitizer back for the unsafe code in dependencies.
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&fuzz_dir).args([
            "+nightly",
            "fuzz",
            "run",
            "--release",
            "--debug-assertions",
        ]);
        if !asan {
            cmd.args(["--sanitizer", "none"]);
        }
        run(cmd
            .args([target, "--"])
            .arg(&limit)
            .arg("-print_final_stats=1"))?;
        eprintln!(
            "xtask: {target} done in {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
