//! `cargo xtask image`: the QEMU `raspi3b` test image. Not the Yocto image: Debian's arm64
//! kernel, busybox-static as userland and init, the agent built static for
//! `aarch64-unknown-linux-musl`, `board/qemu-raspi3b.toml`, and a launcher generated from the
//! layer's `ocf-agent.service` (see `unit.rs`). Downloads and results are kept under
//! `target/qemu/`; nothing is downloaded or written again when nothing changed.
//!
//! Result, in `target/qemu/image/`: `Image` (the kernel), `bcm2837-rpi-3-b.dtb`,
//! `initramfs.cpio` (newc, uncompressed), `card.img` (a blank SD card: an MBR with an ext4 `/boot`
//! partition and an ext4 data partition for `/var/lib`; copy it before booting, it is the
//! template) and `cmdline` (the kernel command line).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{have_command, is_root, run, unit};

const AGENT_TARGET: &str = "aarch64-unknown-linux-musl";
const AGENT_CC_VAR: &str = "CC_aarch64_unknown_linux_musl";
const AGENT_LINKER_VAR: &str = "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER";
const UNIT: &str = "yocto/meta-ocf/recipes-ocf/ocf-agent/files/ocf-agent.service";
const REBOOT_HELPER: &str = "yocto/meta-ocf/recipes-ocf/ocf-agent/files/reboot-if-asked";
const BOARD: &str = "board/qemu-raspi3b.toml";
const DTB: &str = "broadcom/bcm2837-rpi-3-b.dtb";

/// Kernel modules to load, in this order (their dependencies are added before them from
/// modinfo). USB: phy-generic, or the dwc2 controller never starts; the network is QEMU's
/// usb-net (CDC Ethernet). I2C: the BSC controller and /dev/i2c-*. bcm2835_wdt carries the
/// SoC's restart handler: without it `reboot` does not reset the machine (and QEMU, run with
/// -no-reboot, would not exit). The SD card (sdhost and the Arasan SDHCI) and ext4.
const MODULES: &[&str] = &[
    "usb-common",
    "usbcore",
    "roles",
    "udc-core",
    "phy-generic",
    "dwc2",
    "mii",
    "usbnet",
    "cdc_ether",
    "i2c-bcm2835",
    "i2c-dev",
    "bcm2835_wdt",
    "bcm2835",
    "sdhci-iproc",
    // ext4's and jbd2's softdep "crypto-crc32c", which insmod does not follow.
    "crc32c_generic",
    "ext4",
];

/// SD card layout: QEMU wants a power-of-two size. Partition 1 (`/boot`) from 1 MiB to 16 MiB,
/// partition 2 (`/var/lib`) from 16 MiB to the end.
const CARD_SIZE: u64 = 64 << 20;
pub const BOOT_OFFSET: u64 = 1 << 20;
pub const DATA_OFFSET: u64 = 16 << 20;

/// The guest's init files (busybox init, sh).
const INITTAB: &str = include_str!("../guest/inittab");
const BOOT: &str = include_str!("../guest/boot");
const SHUTDOWN: &str = include_str!("../guest/shutdown");
const UDHCPC_SCRIPT: &str = include_str!("../guest/udhcpc.script");

/// `cargo xtask image [--refresh]`: `--refresh` asks Debian for newer packages.
pub fn command(args: &[String]) -> Result<(), String> {
    let refresh = args.iter().any(|a| a == "--refresh");
    let dir = build(&crate::workspace_root(), refresh)?;
    println!("{}", dir.display());
    Ok(())
}

/// Builds (or brings up to date) the image; returns its directory.
pub fn build(root: &Path, refresh: bool) -> Result<PathBuf, String> {
    let work = root.join("target").join("qemu");
    ensure_host_tools()?;
    let debs = download(&work, refresh)?;
    let kernel = extract(&work, "kernel", &debs.kernel)?;
    let busybox = extract(&work, "busybox", &debs.busybox)?;
    let agent = build_agent(root)?;
    let out = work.join("image");
    mkdir(&out)?;

    let kver = only_dir(&kernel.join("lib").join("modules"))?;
    let moddir = kernel.join("lib").join("modules").join(&kver);
    let vmlinuz = kernel.join("boot").join(format!("vmlinuz-{kver}"));
    let dtb = kernel
        .join("usr")
        .join("lib")
        .join(format!("linux-image-{kver}"))
        .join(DTB);
    update(&out.join("Image"), &read(&vmlinuz)?)?;
    update(&out.join("bcm2837-rpi-3-b.dtb"), &read(&dtb)?)?;

    let service = unit::parse(&read_text(&root.join(UNIT))?).map_err(|e| format!("{UNIT}: {e}"))?;
    for d in &service.ignored {
        eprintln!("xtask: image: {UNIT}: not carried out by the busybox launcher: {d}");
    }
    let modules = module_order(&moddir)?;

    let mut cpio = Cpio::default();
    for d in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "usr/libexec",
        "etc",
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "var",
        "var/lib",
        "boot",
        "lib",
        "lib/modules",
        "root",
    ] {
        cpio.dir(d, 0o755);
    }
    // The kernel opens /dev/console for init before devtmpfs is mounted.
    cpio.node("dev/console", 0o020600, 5, 1);
    cpio.file(
        "bin/busybox",
        0o755,
        read(&busybox.join("bin").join("busybox"))?,
    );
    for applet in busybox_applets() {
        cpio.symlink(&applet, "/bin/busybox");
    }
    cpio.symlink("init", "/bin/busybox");
    cpio.file("etc/inittab", 0o644, INITTAB.into());
    cpio.dir("etc/ocf-init", 0o755);
    cpio.file("etc/ocf-init/boot", 0o755, BOOT.into());
    cpio.file("etc/ocf-init/shutdown", 0o755, SHUTDOWN.into());
    cpio.file("etc/ocf-init/udhcpc.script", 0o755, UDHCPC_SCRIPT.into());
    cpio.file(
        "etc/ocf-init/ocf-agent.service.sh",
        0o755,
        service.launcher("ocf-agent").into_bytes(),
    );
    cpio.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
    );
    cpio.file("etc/group", 0o644, b"root:x:0:\n".to_vec());
    cpio.dir("etc/ocf-agent", 0o755);
    cpio.file("etc/ocf-agent/board.toml", 0o644, read(&root.join(BOARD))?);
    cpio.file("usr/bin/ocf-agent", 0o755, read(&agent)?);
    cpio.dir("usr/libexec/ocf-agent", 0o755);
    cpio.file(
        "usr/libexec/ocf-agent/reboot-if-asked",
        0o755,
        read(&root.join(REBOOT_HELPER))?,
    );
    let mut list = String::new();
    for rel in &modules {
        let name = Path::new(rel)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        cpio.file(
            &format!("lib/modules/{name}"),
            0o644,
            read(&moddir.join(rel))?,
        );
        list.push_str(&name);
        list.push('\n');
    }
    cpio.file("etc/ocf-init/modules", 0o644, list.into_bytes());
    update(&out.join("initramfs.cpio"), &cpio.finish())?;
    update(&out.join("cmdline"), b"console=ttyAMA0 panic=-1 loglevel=5")?;
    make_card(&out.join("card.img"))?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Host tools
// ---------------------------------------------------------------------------------------------

/// QEMU 9 or later (for raspi3b's BSC I2C controller), e2fsprogs, dpkg-deb and a C cross
/// compiler for ring; installed when run as root, else the exact command is given.
fn ensure_host_tools() -> Result<(), String> {
    let mut install: Vec<&str> = Vec::new();
    for (cmd, pkg) in [
        ("mkfs.ext4", "e2fsprogs"),
        ("dpkg-deb", "dpkg"),
        ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
    ] {
        if !have_command(cmd) && !Path::new("/usr/sbin").join(cmd).exists() {
            install.push(pkg);
        }
    }
    let qemu_ok = qemu_version().is_some_and(|(major, _)| major >= 9);
    if install.is_empty() && qemu_ok {
        return Ok(());
    }
    let codename = os_codename()?;
    let backports = format!("{codename}-backports");
    let mut steps = Vec::new();
    if !install.is_empty() {
        steps.push(format!(
            "apt-get install -y --no-install-recommends {}",
            install.join(" ")
        ));
    }
    if !qemu_ok {
        steps.push(format!(
            "apt-get install -y --no-install-recommends -t {backports} qemu-system-arm"
        ));
    }
    if !is_root() || !have_command("apt-get") {
        return Err(format!(
            "the QEMU image needs QEMU >= 9 (qemu-system-arm from {backports}) and {install:?}; \
             as root, add {BACKPORTS_FILE} (Types: deb, the URIs and Signed-By of your Debian \
             entry, Suites: {backports}, Components: main), then run:\n  apt-get update && {}",
            steps.join(" && ")
        ));
    }
    if !qemu_ok {
        write_backports_entry(&codename)?;
    }
    eprintln!("xtask: installing {}", steps.join("; "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    for step in steps {
        run(Command::new("sh")
            .arg("-c")
            .arg(format!("DEBIAN_FRONTEND=noninteractive {step} -qq")))?;
    }
    match qemu_version() {
        Some((major, _)) if major >= 9 => Ok(()),
        v => Err(format!(
            "qemu-system-aarch64 is {v:?} after installing; QEMU >= 9 is needed"
        )),
    }
}

const BACKPORTS_FILE: &str = "/etc/apt/sources.list.d/ocf-pi-backports.sources";

/// `qemu-system-aarch64 --version` as (major, minor).
pub fn qemu_version() -> Option<(u32, u32)> {
    let out = Command::new("qemu-system-aarch64")
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.split("version ").nth(1)?.split_whitespace().next()?;
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??))
}

fn os_codename() -> Result<String, String> {
    let text = read_text(Path::new("/etc/os-release"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| "/etc/os-release has no VERSION_CODENAME".into())
}

/// One apt source (deb822 stanza or one-line entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptSource {
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    pub signed_by: Option<String>,
}

/// The system's `deb` sources: deb822 `*.sources` and one-line `sources.list`/`*.list`.
fn system_sources() -> Vec<AptSource> {
    let mut out = Vec::new();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        let name = f.to_string_lossy();
        if name.ends_with(".sources") {
            out.extend(parse_deb822(&text));
        } else if name.ends_with(".list") {
            out.extend(parse_one_line(&text));
        }
    }
    out
}

/// deb822 stanzas of Types `deb` (sources.list(5)); `Enabled: no` stanzas are skipped.
pub fn parse_deb822(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut fields = BTreeMap::new();
        let mut last: Option<String> = None;
        for line in stanza.lines() {
            if line.starts_with('#') {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                if let Some(k) = &last {
                    let v: &mut String = fields.entry(k.clone()).or_default();
                    v.push(' ');
                    v.push_str(line.trim());
                }
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                fields.insert(k.clone(), v.trim().to_string());
                last = Some(k);
            }
        }
        let list = |k: &str| -> Vec<String> {
            fields
                .get(k)
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        };
        if !list("types").iter().any(|t| t == "deb")
            || fields.get("enabled").is_some_and(|v| v == "no")
        {
            continue;
        }
        out.push(AptSource {
            uris: list("uris"),
            suites: list("suites"),
            components: list("components"),
            signed_by: fields.get("signed-by").cloned(),
        });
    }
    out
}

/// One-line `deb [options] uri suite component...` entries.
pub fn parse_one_line(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let mut rest = rest.trim();
        let mut signed_by = None;
        if let Some(opts) = rest.strip_prefix('[') {
            let Some((opts, tail)) = opts.split_once(']') else {
                continue;
            };
            for o in opts.split_whitespace() {
                if let Some(v) = o.strip_prefix("signed-by=") {
                    signed_by = Some(v.to_string());
                }
            }
            rest = tail.trim();
        }
        let mut w = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (w.next(), w.next()) else {
            continue;
        };
        out.push(AptSource {
            uris: vec![uri.to_string()],
            suites: vec![suite.to_string()],
            components: w.map(str::to_string).collect(),
            signed_by,
        });
    }
    out
}

/// The system's entries for this Debian release (suites `CODENAME`, `CODENAME-updates`,
/// `CODENAME-security`), so the private apt and the backports entry use the mirror this machine
/// is configured with.
fn release_sources(codename: &str) -> Result<Vec<AptSource>, String> {
    let ours = |x: &String| {
        x == codename || (x.starts_with(&format!("{codename}-")) && !x.ends_with("-backports"))
    };
    let found: Vec<AptSource> = system_sources()
        .into_iter()
        .filter(|s| s.components.iter().any(|c| c == "main"))
        .filter_map(|mut s| {
            s.suites.retain(ours);
            (!s.suites.is_empty()).then_some(s)
        })
        .collect();
    if found.is_empty() {
        return Err(format!(
            "no apt source for Debian {codename} main in /etc/apt/sources.list(.d)"
        ));
    }
    Ok(found)
}

fn deb822(s: &AptSource, suites: &[String], arch: Option<&str>) -> String {
    let mut o = String::from("Types: deb\n");
    if let Some(a) = arch {
        o.push_str(&format!("Architectures: {a}\n"));
    }
    o.push_str(&format!(
        "URIs: {}\nSuites: {}\nComponents: main\n",
        s.uris.join(" "),
        suites.join(" ")
    ));
    if let Some(k) = &s.signed_by {
        o.push_str(&format!("Signed-By: {k}\n"));
    }
    o
}

/// Adds `CODENAME-backports` with the URIs of the system's entry for `CODENAME` itself.
fn write_backports_entry(codename: &str) -> Result<(), String> {
    let main = release_sources(codename)?
        .into_iter()
        .find(|s| s.suites.iter().any(|x| x == codename))
        .ok_or_else(|| format!("no apt source with suite {codename}"))?;
    let text = format!(
        "# Added by `cargo xtask image` (ocf-pi): QEMU >= 9 for the raspi3b system test.\n{}",
        deb822(&main, &[format!("{codename}-backports")], None)
    );
    eprintln!("xtask: writing {BACKPORTS_FILE}");
    std::fs::write(BACKPORTS_FILE, text).map_err(|e| format!("{BACKPORTS_FILE}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Debian packages (arm64), through a private apt state under target/qemu/apt
// ---------------------------------------------------------------------------------------------

struct Debs {
    kernel: PathBuf,
    busybox: PathBuf,
}

/// apt-get/apt-cache options that keep everything (sources, lists, caches) under `apt`, with
/// arm64 enabled for these commands only; the system's apt state is not touched.
fn apt_options(apt: &Path) -> Vec<String> {
    let p = |d: &str| apt.join(d).display().to_string();
    [
        "Dir::Etc::SourceList=/dev/null".to_string(),
        format!("Dir::Etc::SourceParts={}", p("sources.list.d")),
        "Dir::Etc::Preferences=/dev/null".into(),
        "Dir::Etc::PreferencesParts=/dev/null".into(),
        format!("Dir::State::Lists={}", p("lists")),
        format!("Dir::Cache={}", p("cache")),
        "APT::Architectures::=amd64".into(),
        "APT::Architectures::=arm64".into(),
        // The private dirs belong to this user, not to apt's sandbox user.
        "APT::Sandbox::User=root".into(),
    ]
    .into_iter()
    .flat_map(|o| ["-o".to_string(), o])
    .collect()
}

fn download(work: &Path, refresh: bool) -> Result<Debs, String> {
    let apt = work.join("apt");
    let debs = apt.join("debs");
    let find = |prefix: &str| -> Option<PathBuf> {
        std::fs::read_dir(&debs)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix) && n.ends_with("_arm64.deb"))
            })
    };
    if !refresh {
        if let (Some(kernel), Some(busybox)) = (find("linux-image-"), find("busybox-static_")) {
            return Ok(Debs { kernel, busybox });
        }
    }
    if !have_command("apt-get") {
        return Err("apt-get is needed to fetch Debian's arm64 kernel and busybox-static".into());
    }
    let codename = os_codename()?;
    let sources = release_sources(&codename)?;
    for d in ["sources.list.d", "lists/partial", "cache/archives/partial"] {
        mkdir(&apt.join(d))?;
    }
    let text: Vec<String> = sources
        .iter()
        .map(|s| deb822(s, &s.suites, Some("arm64")))
        .collect();
    update(
        &apt.join("sources.list.d").join("debian-arm64.sources"),
        text.join("\n").as_bytes(),
    )?;
    let opts = apt_options(&apt);
    run(Command::new("apt-get").args(&opts).args(["update", "-qq"]))?;
    let deps = Command::new("apt-cache")
        .args(&opts)
        .args(["depends", "linux-image-arm64:arm64"])
        .output()
        .map_err(|e| format!("apt-cache: {e}"))?;
    let text = String::from_utf8_lossy(&deps.stdout);
    let kernel_pkg = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(|p| p.split(':').next().unwrap_or(p).to_string())
        .ok_or_else(|| format!("linux-image-arm64 depends on no linux-image-*: {text}"))?;
    let _ = std::fs::remove_dir_all(&debs);
    mkdir(&debs)?;
    run(Command::new("apt-get")
        .current_dir(&debs)
        .args(&opts)
        .args(["download", "-qq"])
        .arg(format!("{kernel_pkg}:arm64"))
        .arg("busybox-static:arm64"))?;
    match (find("linux-image-"), find("busybox-static_")) {
        (Some(kernel), Some(busybox)) => Ok(Debs { kernel, busybox }),
        _ => Err(format!(
            "apt-get download left no .debs in {}",
            debs.display()
        )),
    }
}

/// Unpacks a .deb once (re-done when the .deb changes).
fn extract(work: &Path, name: &str, deb: &Path) -> Result<PathBuf, String> {
    let dir = work.join("extract").join(name);
    let stamp = work.join("extract").join(format!("{name}.from"));
    let from = deb.display().to_string();
    if dir.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(from.as_str()) {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    mkdir(&dir)?;
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&dir))?;
    std::fs::write(&stamp, from).map_err(|e| format!("{}: {e}", stamp.display()))?;
    Ok(dir)
}

// ---------------------------------------------------------------------------------------------
// The agent
// ---------------------------------------------------------------------------------------------

fn build_agent(root: &Path) -> Result<PathBuf, String> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == AGENT_TARGET)
        })
        .unwrap_or(false);
    if !installed {
        eprintln!("xtask: adding the rustup target {AGENT_TARGET}");
        run(Command::new("rustup").args(["target", "add", AGENT_TARGET]))
            .map_err(|e| format!("{e}; run:\n  rustup target add {AGENT_TARGET}"))?;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root).args([
        "build",
        "--release",
        "--locked",
        "--target",
        AGENT_TARGET,
        "--package",
        "ocf-agent",
        "--bin",
        "ocf-agent",
        // Static musl has no system OpenSSL to link: this image's agent has no DTLS endpoint
        // (SPAKE2 and Manufacturer Certificate over coaps+tcp remain).
        "--no-default-features",
    ]);
    // ring's C code needs a C compiler for the target; rust-lld (shipped with rustc) links the
    // static binary, so no aarch64 libc is needed on the host.
    if std::env::var_os(AGENT_CC_VAR).is_none() {
        cmd.env(AGENT_CC_VAR, "aarch64-linux-gnu-gcc");
    }
    if std::env::var_os(AGENT_LINKER_VAR).is_none() {
        cmd.env(AGENT_LINKER_VAR, "rust-lld");
    }
    run(&mut cmd)?;
    Ok(root
        .join("target")
        .join(AGENT_TARGET)
        .join("release")
        .join("ocf-agent"))
}

// ---------------------------------------------------------------------------------------------
// Kernel modules
// ---------------------------------------------------------------------------------------------

/// The `.ko` files for [`MODULES`] with their dependencies first (modinfo `depends=`), as paths
/// relative to the modules directory. Debian ships no modules.dep; this replaces depmod.
fn module_order(moddir: &Path) -> Result<Vec<String>, String> {
    let mut index = BTreeMap::new();
    let mut stack = vec![moddir.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))? {
            let p = e.map_err(|e| e.to_string())?.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(stem) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".ko"))
            {
                let rel = p
                    .strip_prefix(moddir)
                    .map_err(|e| e.to_string())?
                    .display()
                    .to_string();
                index.insert(stem.replace('-', "_"), rel);
            }
        }
    }
    fn visit(
        name: &str,
        moddir: &Path,
        index: &BTreeMap<String, String>,
        out: &mut Vec<String>,
        path: &mut Vec<String>,
    ) -> Result<(), String> {
        let key = name.replace('-', "_");
        let rel = index
            .get(&key)
            .ok_or_else(|| format!("kernel module {name} not found"))?;
        if out.contains(rel) {
            return Ok(());
        }
        if path.contains(&key) {
            return Err(format!("module dependency loop: {path:?}"));
        }
        path.push(key);
        let bytes = read(&moddir.join(rel))?;
        for dep in modinfo_depends(&bytes) {
            visit(&dep, moddir, index, out, path)?;
        }
        path.pop();
        out.push(rel.clone());
        Ok(())
    }
    let mut out = Vec::new();
    for m in MODULES {
        visit(m, moddir, &index, &mut out, &mut Vec::new())?;
    }
    Ok(out)
}

/// `depends=a,b` from a module's .modinfo strings.
fn modinfo_depends(ko: &[u8]) -> Vec<String> {
    ko.split(|b| *b == 0)
        .find_map(|s| s.strip_prefix(b"depends="))
        .map(|d| {
            String::from_utf8_lossy(d)
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// busybox, cpio, SD card
// ---------------------------------------------------------------------------------------------

/// The applets the guest's scripts use, linked in /bin (busybox runs the one argv[0] names).
fn busybox_applets() -> Vec<String> {
    [
        "sh",
        "ash",
        "mount",
        "umount",
        "mkdir",
        "insmod",
        "lsmod",
        "ip",
        "udhcpc",
        "sleep",
        "cat",
        "echo",
        "ls",
        "tr",
        "hostname",
        "rdate",
        "date",
        "sync",
        "reboot",
        "poweroff",
        "halt",
        "kill",
        "rm",
        "chmod",
        "mv",
        "cp",
        "ps",
        "dmesg",
        "grep",
        "sed",
        "head",
        "tail",
        "ln",
        "uname",
        "df",
        "du",
        "find",
        "stat",
        "wc",
        "touch",
        "vi",
        "less",
        "more",
        "true",
        "false",
        "test",
        "[",
        "env",
        "nc",
        "netstat",
        "ping",
        "ifconfig",
        "route",
        "i2cget",
        "i2cset",
        "i2cdetect",
        "free",
        "top",
        "uptime",
        "watch",
        "hexdump",
        "od",
        "xxd",
        "sha256sum",
    ]
    .iter()
    .map(|a| format!("bin/{a}"))
    .collect()
}

/// A newc cpio archive (the initramfs format, kernel `Documentation/driver-api/early-userspace/
/// buffer-format.rst`), deterministic: entries in the order added, mtime 0.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str, perm: u32) {
        self.entry(name, 0o040000 | perm, &[], (0, 0));
    }

    fn file(&mut self, name: &str, perm: u32, data: Vec<u8>) {
        self.entry(name, 0o100000 | perm, &data, (0, 0));
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, target.as_bytes(), (0, 0));
    }

    fn node(&mut self, name: &str, mode: u32, major: u32, minor: u32) {
        self.entry(name, mode, &[], (major, minor));
    }

    fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        while !self.out.len().is_multiple_of(512) {
            self.out.push(0);
        }
        self.out
    }
}

/// The blank SD card: an MBR with two Linux partitions, each ext4 made by mkfs.ext4 at its
/// offset in the file (no loop device, no root). Made once; the test copies it.
fn make_card(path: &Path) -> Result<(), String> {
    if path.exists() {
        return Ok(());
    }
    let tmp = path.with_extension("img.tmp");
    let mut mbr = vec![0u8; 512];
    let part = |i: usize, start: u64, end: u64, mbr: &mut Vec<u8>| {
        let e = 446 + 16 * i;
        mbr[e + 4] = 0x83; // Linux
                           // CHS fields left at their "use LBA" maximum.
        mbr[e + 1..e + 4].copy_from_slice(&[0xfe, 0xff, 0xff]);
        mbr[e + 5..e + 8].copy_from_slice(&[0xfe, 0xff, 0xff]);
        mbr[e + 8..e + 12].copy_from_slice(&((start / 512) as u32).to_le_bytes());
        mbr[e + 12..e + 16].copy_from_slice(&(((end - start) / 512) as u32).to_le_bytes());
    };
    part(0, BOOT_OFFSET, DATA_OFFSET, &mut mbr);
    part(1, DATA_OFFSET, CARD_SIZE, &mut mbr);
    mbr[440..444].copy_from_slice(&0x0cf0_0cf1u32.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    {
        let f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        f.set_len(CARD_SIZE).map_err(|e| e.to_string())?;
        use std::os::unix::fs::FileExt;
        f.write_all_at(&mbr, 0).map_err(|e| e.to_string())?;
    }
    let mkfs = if have_command("mkfs.ext4") {
        "mkfs.ext4".to_string()
    } else {
        "/usr/sbin/mkfs.ext4".to_string()
    };
    for (label, start, end) in [
        ("ocf-boot", BOOT_OFFSET, DATA_OFFSET),
        ("ocf-data", DATA_OFFSET, CARD_SIZE),
    ] {
        run(Command::new(&mkfs)
            .args(["-q", "-F", "-L", label, "-b", "1024", "-E"])
            .arg(format!("offset={start}"))
            .arg(&tmp)
            .arg(format!("{}k", (end - start) / 1024)))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

fn mkdir(p: &Path) -> Result<(), String> {
    std::fs::create_dir_all(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn read(p: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn read_text(p: &Path) -> Result<String, String> {
    std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// Writes `data` only if the file differs (so an unchanged image keeps its mtime).
fn update(p: &Path, data: &[u8]) -> Result<(), String> {
    if std::fs::read(p).ok().as_deref() == Some(data) {
        return Ok(());
    }
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, p).map_err(|e| format!("{}: {e}", p.display()))
}

fn only_dir(p: &Path) -> Result<String, String> {
    let names: Vec<String> = std::fs::read_dir(p)
        .map_err(|e| format!("{}: {e}", p.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(format!(
            "expected one kernel version in {}: {names:?}",
            p.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_sources_both_formats() {
        let s = parse_deb822(
            "Types: deb\n# c\nURIs: http://m/debian\nSuites: bookworm bookworm-updates\n\
             Components: main\nSigned-By: /k.gpg\n\nTypes: deb-src\nURIs: x\nSuites: y\n\
             Components: main\n\nTypes: deb\nEnabled: no\nURIs: z\nSuites: bookworm\nComponents: main\n",
        );
        assert_eq!(
            s,
            [AptSource {
                uris: vec!["http://m/debian".into()],
                suites: vec!["bookworm".into(), "bookworm-updates".into()],
                components: vec!["main".into()],
                signed_by: Some("/k.gpg".into()),
            }]
        );
        let l = parse_one_line("deb [arch=amd64 signed-by=/k.gpg] http://m/debian bookworm main contrib\n# deb x y z\n");
        assert_eq!(l[0].uris, ["http://m/debian"]);
        assert_eq!(l[0].suites, ["bookworm"]);
        assert_eq!(l[0].signed_by.as_deref(), Some("/k.gpg"));
        let text = deb822(&s[0], &["bookworm-backports".into()], None);
        assert!(text.contains("Suites: bookworm-backports\n"), "{text}");
        assert!(text.contains("URIs: http://m/debian\n"), "{text}");
    }

    #[test]
    fn modinfo_and_cpio() {
        assert_eq!(
            modinfo_depends(b"\0license=GPL\0depends=usbcore,mii\0vermagic=x\0"),
            ["usbcore", "mii"]
        );
        assert!(modinfo_depends(b"\0depends=\0").is_empty());
        let mut c = Cpio::default();
        c.file("a", 0o644, b"xyz".to_vec());
        let out = c.finish();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 512, 0);
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
