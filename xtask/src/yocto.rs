//! The Yocto layer's checks (`yocto/`), run by `cargo xtask test`, and `cargo xtask yocto-crates`.
//!
//! A full bitbake build does not fit on the CI machine, so the layer is checked by what does
//! (DESIGN.md §7): oelint-adv on its metadata, its kas files against kas's JSON schema, its crate
//! list against Cargo.lock, an offline `--frozen` cross build of the agent from exactly that crate
//! list laid out as oe-core's cargo class lays it out, with the release's Rust, and
//! `systemd-analyze` on the service.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::{have_command, run};

/// The Rust of the layer's release (openembedded-core wrynose: `rust_1.94.1.bb`).
pub const YOCTO_RUST: &str = "1.94.1";
/// The target of the three machines (raspberrypi4-64, raspberrypi5, qemuarm64) with glibc.
const TARGET: &str = "aarch64-unknown-linux-gnu";
const CROSS_GCC: &str = "aarch64-linux-gnu-gcc";
/// Worst `systemd-analyze security` exposure the service may have (goal: 2.0 or less).
const MAX_EXPOSURE: f64 = 2.5;

const LAYER: &str = "yocto/meta-ocf";
const RECIPE_DIR: &str = "yocto/meta-ocf/recipes-ocf/ocf-agent";
const CRATES_INC: &str = "yocto/meta-ocf/recipes-ocf/ocf-agent/ocf-agent-crates.inc";
const OELINT_CONFIG: &str = "yocto/.oelint.cfg";
const KAS_DIR: &str = "yocto/kas";
/// The kas files a build starts from: each must be complete once its includes are merged, for
/// the machine its name says.
const KAS_MACHINES: &[&str] = &["raspberrypi4-64", "raspberrypi5", "qemuarm64"];

/// The prefix of a crate in SRC_URI: BitBake's crate fetcher, `crate://HOST/NAME/VERSION` with
/// the host oe-core's own generated lists name (lib/bb/fetch2/crate.py).
const CRATE_URI_PREFIX: &str = concat!("crate://", "crates.io/");

/// One crate of the lock file that the build system must fetch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Crate {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

/// The registry packages of a Cargo.lock, in its order (by name, then version). Path and git
/// packages are left out: the workspace's own crates come with the source, and the layer's
/// build has no git dependencies to fetch.
pub fn locked_crates(lock: &str) -> Result<Vec<Crate>, String> {
    let mut crates = Vec::new();
    for block in lock.split("[[package]]").skip(1) {
        let mut name = None;
        let mut version = None;
        let mut source = None;
        let mut checksum = None;
        for line in block.lines() {
            let Some((key, value)) = line.split_once(" = ") else {
                continue;
            };
            let value = value.trim().trim_matches('"').to_owned();
            match key.trim() {
                "name" => name = Some(value),
                "version" => version = Some(value),
                "source" => source = Some(value),
                "checksum" => checksum = Some(value),
                _ => {}
            }
        }
        let (Some(name), Some(version)) = (name, version) else {
            return Err("Cargo.lock: a [[package]] without name or version".into());
        };
        match source.as_deref() {
            None => continue,
            Some(s) if s.starts_with("registry+") => {}
            Some(s) => {
                return Err(format!(
                    "Cargo.lock: {name} {version} comes from {s}, which the layer's crate list cannot express"
                ))
            }
        }
        let sha256 = checksum
            .filter(|c| c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| format!("Cargo.lock: {name} {version} has no sha256 checksum"))?;
        crates.push(Crate {
            name,
            version,
            sha256,
        });
    }
    Ok(crates)
}

/// The text of `ocf-agent-crates.inc` for these crates, in the layout of oe-core's generated
/// lists (cargo-update-recipe-crates.bbclass): one SRC_URI block, then one checksum per crate,
/// named NAME-VERSION as the crate fetcher names it.
pub fn crates_inc(crates: &[Crate]) -> String {
    let mut out = String::from(
        "# Generated from Cargo.lock by `cargo xtask yocto-crates`; do not edit.\n\
         # Every crates.io package of the lock file: cargo resolves the whole workspace, so a\n\
         # `--frozen` build of the agent alone still needs all of them in its vendor directory.\n\
         \n\
         SRC_URI += \" \\\n",
    );
    for c in crates {
        let _ = writeln!(out, "    {CRATE_URI_PREFIX}{}/{} \\", c.name, c.version);
    }
    out.push_str("\"\n\n");
    for c in crates {
        let _ = writeln!(
            out,
            "SRC_URI[{}-{}.sha256sum] = \"{}\"",
            c.name, c.version, c.sha256
        );
    }
    out
}

/// The crates an `ocf-agent-crates.inc` lists: its `crate://` lines with their checksums. A line
/// without a checksum, or a checksum without its line, is an error, as it is for BitBake.
pub fn parse_crates_inc(text: &str) -> Result<Vec<Crate>, String> {
    let mut listed = Vec::new();
    let mut sums = std::collections::BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix(CRATE_URI_PREFIX) {
            let rest = rest.trim_end_matches('\\').trim();
            let (name, version) = rest
                .split_once('/')
                .ok_or_else(|| format!("bad crate line: {line}"))?;
            listed.push((name.to_owned(), version.to_owned()));
        } else if let Some(rest) = line.strip_prefix("SRC_URI[") {
            let (key, value) = rest
                .split_once("] = ")
                .ok_or_else(|| format!("bad checksum line: {line}"))?;
            let key = key
                .strip_suffix(".sha256sum")
                .ok_or_else(|| format!("not a sha256sum: {line}"))?;
            sums.insert(key.to_owned(), value.trim_matches('"').to_owned());
        }
    }
    let mut crates = Vec::new();
    for (name, version) in listed {
        let sha256 = sums
            .remove(&format!("{name}-{version}"))
            .ok_or_else(|| format!("{name} {version} has no SRC_URI[...sha256sum]"))?;
        crates.push(Crate {
            name,
            version,
            sha256,
        });
    }
    if let Some(key) = sums.keys().next() {
        return Err(format!("checksum for {key}, which SRC_URI does not list"));
    }
    Ok(crates)
}

fn read(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn generated_inc(root: &Path) -> Result<String, String> {
    Ok(crates_inc(&locked_crates(&read(
        &root.join("Cargo.lock"),
    )?)?))
}

/// `cargo xtask yocto-crates`: writes the recipe's crate list from Cargo.lock.
pub fn write_crates_inc(root: &Path) -> Result<(), String> {
    let text = generated_inc(root)?;
    let path = root.join(CRATES_INC);
    fs::write(&path, &text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let n = parse_crates_inc(&text)?.len();
    println!("xtask: wrote {} ({n} crates)", path.display());
    Ok(())
}

/// The checks of the layer, each timed. All run even if one fails, so one run shows every
/// problem; the result fails if any did.
pub fn test(root: &Path, python: &Path) -> Result<(), String> {
    type Stage = fn(&Path, &Path) -> Result<(), String>;
    let stages: [(&str, Stage); 7] = [
        ("crate list", |r, _| check_crates_inc(r)),
        ("recipe version and license", |r, _| check_recipe(r)),
        ("oelint-adv", check_oelint),
        ("kas schema", check_kas),
        ("offline cross build", |r, _| {
            build_from_crate_list(r).map(|_| ())
        }),
        ("offline check for the Raspberry Pi machines", |r, _| {
            check_rpi_build(r)
        }),
        ("systemd-analyze", |r, _| check_service(r)),
    ];
    let mut failed = Vec::new();
    for (name, stage) in stages {
        let start = Instant::now();
        let result = stage(root, python);
        let took = start.elapsed().as_secs_f64();
        match result {
            Ok(()) => eprintln!("xtask: yocto: {name}: ok ({took:.1} s)"),
            Err(e) => {
                eprintln!("xtask: yocto: {name}: FAILED ({took:.1} s)\n{e}");
                failed.push(name);
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("yocto checks failed: {}", failed.join(", ")))
    }
}

/// The recipe against the workspace: its file name carries the workspace's version, and its
/// LIC_FILES_CHKSUM still matches the license line of Cargo.toml it names.
fn check_recipe(root: &Path) -> Result<(), String> {
    let cargo_toml = read(&root.join("Cargo.toml"))?;
    let version = cargo_toml
        .split("[workspace.package]")
        .nth(1)
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .ok_or("Cargo.toml: no [workspace.package] version")?;
    let recipe = root
        .join(RECIPE_DIR)
        .join(format!("ocf-agent_{version}.bb"));
    let text = read(&recipe).map_err(|e| {
        format!("{e}\nthe recipe's file name carries the version (workspace version {version})")
    })?;
    let chksum = text
        .lines()
        .find_map(|l| l.strip_prefix("LIC_FILES_CHKSUM = \"file://Cargo.toml;"))
        .ok_or("the recipe's LIC_FILES_CHKSUM does not name Cargo.toml")?;
    let param = |name: &str| {
        chksum
            .trim_end_matches('"')
            .split(';')
            .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
            .ok_or(format!("LIC_FILES_CHKSUM has no {name}"))
    };
    let (begin, end) = (param("beginline")?, param("endline")?);
    let (begin, end): (usize, usize) = (
        begin.parse().map_err(|_| "bad beginline")?,
        end.parse().map_err(|_| "bad endline")?,
    );
    let lines: String = cargo_toml
        .split_inclusive('\n')
        .skip(begin.saturating_sub(1))
        .take(end + 1 - begin)
        .collect();
    let out = Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(lines.as_bytes())?;
            child.wait_with_output()
        })
        .map_err(|e| format!("cannot run md5sum: {e}"))?;
    let md5 = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned();
    if md5 != param("md5")? || !lines.contains("license") {
        return Err(format!(
            "LIC_FILES_CHKSUM of {} names Cargo.toml lines {begin}-{end} with md5 {}, but they are now {lines:?} (md5 {md5}): point it at the license line again",
            recipe.display(),
            param("md5")?
        ));
    }
    Ok(())
}

fn check_crates_inc(root: &Path) -> Result<(), String> {
    let wanted = generated_inc(root)?;
    let have = read(&root.join(CRATES_INC)).unwrap_or_default();
    if have == wanted {
        Ok(())
    } else {
        Err(format!(
            "{CRATES_INC} does not match Cargo.lock; run:\n  cargo xtask yocto-crates"
        ))
    }
}

/// The layer's metadata files oelint-adv checks: recipes, appends, classes and configuration.
fn layer_files(root: &Path) -> Result<Vec<PathBuf>, String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
        let entries =
            fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out)?;
            } else {
                let in_conf = path.parent().and_then(Path::file_name) == Some("conf".as_ref());
                match path.extension().and_then(|e| e.to_str()) {
                    Some("bb" | "bbappend" | "bbclass") => out.push(path),
                    // BitBake configuration lives in conf/; other *.conf are installed files.
                    Some("conf") if in_conf => out.push(path),
                    _ => {}
                }
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(&root.join(LAYER), &mut files)?;
    files.sort();
    Ok(files)
}

fn venv_tool(python: &Path, name: &str) -> PathBuf {
    python.with_file_name(name)
}

fn check_oelint(root: &Path, python: &Path) -> Result<(), String> {
    let files = layer_files(root)?;
    if files.is_empty() {
        return Err(format!("no recipes found under {LAYER}"));
    }
    let out = Command::new(venv_tool(python, "oelint-adv"))
        .current_dir(root)
        .env("OELINT_CONFIG", root.join(OELINT_CONFIG))
        .args(["--release", "wrynose", "--quiet", "--relpaths"])
        .args(&files)
        .output()
        .map_err(|e| format!("cannot run oelint-adv: {e}"))?;
    let findings = String::from_utf8_lossy(&out.stderr).trim().to_owned()
        + String::from_utf8_lossy(&out.stdout).trim();
    if out.status.success() && findings.is_empty() {
        eprintln!(
            "xtask: yocto: oelint-adv: {} files, no findings",
            files.len()
        );
        Ok(())
    } else {
        Err(format!(
            "oelint-adv findings (suppressions belong in {OELINT_CONFIG}, each with its reason):\n{findings}"
        ))
    }
}

/// Validates every kas file against the schema of the installed kas package, as kas does for
/// each file it reads (included files too, which need only a header), then merges each
/// machine's file with its includes and checks that the result is a complete build: the
/// machine its name says, the poky distro, a target, and every fetched repository pinned.
const KAS_CHECK: &str = r#"
import json, pathlib, sys
import jsonschema, kas, yaml
root = pathlib.Path(sys.argv[1])
kas_dir = root / sys.argv[2]
machines = sys.argv[3:]
schema = json.loads((pathlib.Path(kas.__file__).parent / "schema-kas.json").read_text())
validator = jsonschema.validators.validator_for(schema)(schema)
errors = []
docs = {}
for path in sorted(kas_dir.glob("*.yml")):
    doc = yaml.safe_load(path.read_text())
    docs[path] = doc
    for e in validator.iter_errors(doc):
        where = "/".join(str(p) for p in e.absolute_path) or "(top)"
        errors.append(f"{path.relative_to(root)}: {where}: {e.message}")
def merge(a, b):
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
def resolved(path, seen=()):
    if path in seen:
        raise ValueError(f"include loop at {path}")
    doc = docs.get(path)
    if doc is None:
        raise ValueError(f"{path.relative_to(root)} does not exist")
    merged = {}
    for inc in (doc.get("header") or {}).get("includes", []):
        if not isinstance(inc, str):
            raise ValueError(f"{path.relative_to(root)}: only includes from this repository are used")
        merged = merge(merged, resolved(root / inc, seen + (path,)))
    return merge(merged, doc)
for machine in machines:
    path = kas_dir / f"{machine}.yml"
    name = path.relative_to(root)
    try:
        conf = resolved(path)
    except ValueError as e:
        errors.append(str(e))
        continue
    for e in validator.iter_errors(conf):
        errors.append(f"{name} with its includes: {e.message}")
    if conf.get("machine") != machine:
        errors.append(f"{name}: machine is {conf.get('machine')!r}, not {machine!r}")
    if conf.get("distro") != "poky":
        errors.append(f"{name}: distro is {conf.get('distro')!r}; since format 22 kas defaults to nodistro, say poky")
    if not conf.get("target"):
        errors.append(f"{name}: no target")
    repos = conf.get("repos") or {}
    for repo in ("bitbake", "openembedded-core", "meta-yocto"):
        if repo not in repos:
            errors.append(f"{name}: no {repo} repository")
    for repo, spec in repos.items():
        if isinstance(spec, dict) and spec.get("url") and not (spec.get("commit") or spec.get("branch")):
            errors.append(f"{name}: repository {repo} is neither pinned to a commit nor to a branch")
    local = "\n".join((conf.get("local_conf_header") or {}).values())
    if 'INIT_MANAGER = "systemd"' not in local:
        errors.append(f"{name}: the poky distro defaults to sysvinit; set INIT_MANAGER = \"systemd\"")
for e in errors:
    print(e)
print(f"{len(docs)} kas files, {len(machines)} machine builds checked", file=sys.stderr)
sys.exit(1 if errors else 0)
"#;

fn check_kas(root: &Path, python: &Path) -> Result<(), String> {
    let out = Command::new(python)
        .current_dir(root)
        .arg("-c")
        .arg(KAS_CHECK)
        .arg(root)
        .arg(KAS_DIR)
        .args(KAS_MACHINES)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    let report = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if out.status.success() {
        eprintln!("xtask: yocto: kas: {report}");
        Ok(())
    } else {
        Err(format!("{}{report}", String::from_utf8_lossy(&out.stdout)))
    }
}

/// Installs the release's Rust and its aarch64 standard library with rustup if missing.
pub fn ensure_toolchain() -> Result<(), String> {
    if !have_command("rustup") {
        return Err(format!(
            "rustup is needed for Rust {YOCTO_RUST} (the Yocto release's); install it from rustup.rs"
        ));
    }
    let sysroot = || {
        Command::new("rustup")
            .args(["run", YOCTO_RUST, "rustc", "--print", "sysroot"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
    };
    let sysroot = match sysroot() {
        Some(s) => s,
        None => {
            eprintln!("xtask: installing Rust {YOCTO_RUST} (the Yocto release's)");
            run(Command::new("rustup").args([
                "toolchain",
                "install",
                YOCTO_RUST,
                "--profile",
                "minimal",
            ]))?;
            sysroot().ok_or(format!(
                "Rust {YOCTO_RUST} is still not usable after its installation"
            ))?
        }
    };
    if !sysroot.join("lib/rustlib").join(TARGET).is_dir() {
        eprintln!("xtask: adding the {TARGET} standard library to Rust {YOCTO_RUST}");
        run(Command::new("rustup").args(["target", "add", "--toolchain", YOCTO_RUST, TARGET]))
            .map_err(|e| {
                format!("{e}; run:\n  rustup target add --toolchain {YOCTO_RUST} {TARGET}")
            })?;
    }
    Ok(())
}

/// `$CARGO_HOME/registry/cache/*/`, where cargo keeps the `.crate` files it downloaded.
fn cargo_crate_caches() -> Vec<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default();
    fs::read_dir(home.join("registry").join("cache"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// The sha256 of each file, by `sha256sum` (coreutils).
fn sha256_files(files: &[PathBuf]) -> Result<Vec<String>, String> {
    let mut sums = Vec::with_capacity(files.len());
    for chunk in files.chunks(200) {
        let out = Command::new("sha256sum")
            .args(chunk)
            .output()
            .map_err(|e| format!("cannot run sha256sum: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "sha256sum failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            sums.push(line.split_whitespace().next().unwrap_or("").to_owned());
        }
    }
    Ok(sums)
}

/// Lays out the vendor directory as oe-core's cargo class gets it from BitBake's crate fetcher:
/// `$CARGO_HOME/bitbake/NAME-VERSION/`, each with a `.cargo-checksum.json` naming the `.crate`'s
/// sha256 and no file list (lib/bb/fetch2/crate.py), holding exactly the crates of `crates`.
fn vendor(root: &Path, crates: &[Crate], dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let wanted: BTreeSet<String> = crates
        .iter()
        .map(|c| format!("{}-{}", c.name, c.version))
        .collect();
    for entry in fs::read_dir(dir).map_err(|e| e.to_string())?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !wanted.contains(&name) {
            fs::remove_dir_all(entry.path())
                .map_err(|e| format!("cannot remove {}: {e}", entry.path().display()))?;
        }
    }
    // Each .crate once, from cargo's own download cache: the ordinary client fetches them.
    let caches = cargo_crate_caches();
    let find = |c: &Crate| {
        let file = format!("{}-{}.crate", c.name, c.version);
        caches.iter().map(|d| d.join(&file)).find(|p| p.is_file())
    };
    if crates.iter().any(|c| find(c).is_none()) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        run(Command::new(cargo)
            .current_dir(root)
            .args(["fetch", "--locked", "--quiet"]))?;
    }
    let caches = cargo_crate_caches();
    let mut files = Vec::new();
    for c in crates {
        let file = format!("{}-{}.crate", c.name, c.version);
        files.push(
            caches
                .iter()
                .map(|d| d.join(&file))
                .find(|p| p.is_file())
                .ok_or_else(|| format!("{file} is not in cargo's cache after `cargo fetch`"))?,
        );
    }
    let sums = sha256_files(&files)?;
    for ((c, file), sum) in crates.iter().zip(&files).zip(&sums) {
        if *sum != c.sha256 {
            return Err(format!(
                "{}: sha256 {sum}, but {CRATES_INC} says {}",
                file.display(),
                c.sha256
            ));
        }
        let unpacked = dir.join(format!("{}-{}", c.name, c.version));
        let checksum_file = unpacked.join(".cargo-checksum.json");
        let checksum = format!("{{\"files\": {{}}, \"package\": \"{}\"}}", c.sha256);
        if read(&checksum_file).ok().as_deref() == Some(checksum.as_str()) {
            continue;
        }
        if unpacked.exists() {
            fs::remove_dir_all(&unpacked).map_err(|e| e.to_string())?;
        }
        run(Command::new("tar")
            .args(["-xz", "--no-same-owner", "-f"])
            .arg(file)
            .arg("-C")
            .arg(dir))?;
        fs::write(&checksum_file, checksum)
            .map_err(|e| format!("cannot write {}: {e}", checksum_file.display()))?;
    }
    Ok(())
}

/// Runs `cargo SUBCOMMAND ARGS` on the agent as the recipe does, offline: the vendor directory
/// holds exactly the crates of the committed crate list, cargo's home has the configuration
/// oe-core's cargo_common class writes (the vendor directory replacing crates.io), and cargo
/// runs from the build directory with the class's flags (`--frozen`, the target, `--release`,
/// the agent's manifest) and Rust 1.94.1. Returns the build directory.
fn offline_cargo(root: &Path, subcommand: &str, args: &[String]) -> Result<PathBuf, String> {
    let crates = parse_crates_inc(&read(&root.join(CRATES_INC))?)?;
    ensure_toolchain()?;
    if !have_command(CROSS_GCC) {
        return Err(format!(
            "{CROSS_GCC} is missing; run:\n  sudo apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
        ));
    }
    let work = root.join("target").join("yocto");
    let cargo_home = work.join("cargo_home");
    let vendor_dir = cargo_home.join("bitbake");
    let build = work.join("build");
    vendor(root, &crates, &vendor_dir)?;
    fs::create_dir_all(&build).map_err(|e| e.to_string())?;
    let config = format!(
        "[source.bitbake]\ndirectory = \"{}\"\n\n\
         [source.crates-io]\nreplace-with = \"bitbake\"\nlocal-registry = \"/nonexistent\"\n\n\
         [target.{TARGET}]\nlinker = \"{CROSS_GCC}\"\n\n\
         [build]\ntarget-dir = \"{}\"\n",
        vendor_dir.display(),
        build.join("target").display()
    );
    fs::write(cargo_home.join("config.toml"), config).map_err(|e| e.to_string())?;
    let manifest = root.join("agent").join("Cargo.toml");
    run(Command::new("rustup")
        .current_dir(&build)
        .env("CARGO_HOME", &cargo_home)
        .env_remove("CARGO_TARGET_DIR")
        .env("CARGO_PROFILE_RELEASE_STRIP", "false")
        // openssl-sys finds the target's OpenSSL with pkg-config, as the recipe's pkgconfig
        // class has it look in the target sysroot; here Debian's arm64 libssl-dev.
        .env("PKG_CONFIG_ALLOW_CROSS", "1")
        .env("PKG_CONFIG_LIBDIR", "/usr/lib/aarch64-linux-gnu/pkgconfig")
        .env_remove("PKG_CONFIG_PATH")
        .env(format!("CC_{}", TARGET.replace('-', "_")), CROSS_GCC)
        .env(
            format!(
                "CARGO_TARGET_{}_LINKER",
                TARGET.replace('-', "_").to_uppercase()
            ),
            CROSS_GCC,
        )
        .args([
            "run", YOCTO_RUST, "cargo", subcommand, "--frozen", "--target", TARGET,
        ])
        .arg("--release")
        .arg(format!("--manifest-path={}", manifest.display()))
        .args(args))
    .map_err(|e| {
        format!("{e}\n(an offline --frozen build from the crates of {CRATES_INC} only)")
    })?;
    eprintln!(
        "xtask: yocto: cargo {} for {TARGET} from {} crates with Rust {YOCTO_RUST}: ok",
        [subcommand.to_owned()]
            .iter()
            .chain(args)
            .cloned()
            .collect::<Vec<_>>()
            .join(" "),
        crates.len()
    );
    Ok(build)
}

/// The cargo arguments the recipe adds for the Raspberry Pi machines: of each PACKAGECONFIG
/// option that `PACKAGECONFIG:rpi` turns on, what it passes when on (the first field of its
/// `PACKAGECONFIG[option]`), which the cargo class hands to `cargo build` as
/// PACKAGECONFIG_CONFARGS.
pub fn rpi_cargo_args(recipe: &str) -> Result<Vec<String>, String> {
    let value = |line: &str, key: &str| -> Option<String> {
        let rest = line.strip_prefix(key)?.trim_start();
        let rest = ["??=", "?=", "="]
            .iter()
            .find_map(|op| rest.strip_prefix(op))?;
        Some(rest.trim().trim_matches('"').to_owned())
    };
    let options = recipe
        .lines()
        .find_map(|l| value(l, "PACKAGECONFIG:rpi"))
        .ok_or("the recipe sets no PACKAGECONFIG:rpi")?;
    let mut args = Vec::new();
    for option in options.split_whitespace() {
        let flags = recipe
            .lines()
            .find_map(|l| value(l, &format!("PACKAGECONFIG[{option}]")))
            .ok_or(format!(
                "PACKAGECONFIG:rpi names {option}, which has no PACKAGECONFIG[{option}]"
            ))?;
        let enable = flags.split(',').next().unwrap_or("");
        args.extend(enable.split_whitespace().map(str::to_owned));
    }
    Ok(args)
}

/// Checks the agent as the Raspberry Pi machines build it (with the recipe's PACKAGECONFIG for
/// them: rppal), offline from the crate list: rppal and the code behind its feature compile for
/// aarch64 with the release's Rust, from exactly the listed crates.
fn check_rpi_build(root: &Path) -> Result<(), String> {
    let recipe = root
        .join(RECIPE_DIR)
        .join(format!("ocf-agent_{}.bb", env!("CARGO_PKG_VERSION")));
    let args = rpi_cargo_args(&read(&recipe)?)?;
    offline_cargo(root, "check", &args).map(|_| ())
}

/// Builds the agent as the recipe does for a machine that is not a Raspberry Pi (PACKAGECONFIG
/// "dtls", the crate's default features), offline
/// ([`offline_cargo`]), and returns the binary's path
/// (`target/yocto/build/target/aarch64-unknown-linux-gnu/release/ocf-agent`).
pub fn build_from_crate_list(root: &Path) -> Result<PathBuf, String> {
    let crates = parse_crates_inc(&read(&root.join(CRATES_INC))?)?;
    let build = offline_cargo(root, "build", &[])?;
    let binary = build
        .join("target")
        .join(TARGET)
        .join("release")
        .join("ocf-agent");
    let header = fs::read(&binary).map_err(|e| format!("{}: {e}", binary.display()))?;
    // ELF, 64-bit, e_machine EM_AARCH64 (183): the System V ABI's ELF header.
    if header.get(..4) != Some(b"\x7fELF".as_slice())
        || header.get(4) != Some(&2)
        || header.get(18..20) != Some([183u8, 0].as_slice())
    {
        return Err(format!("{} is not an aarch64 ELF file", binary.display()));
    }
    eprintln!(
        "xtask: yocto: aarch64 agent ({} crates, Rust {YOCTO_RUST}): {} ({} bytes)",
        crates.len(),
        binary.display(),
        header.len()
    );
    Ok(binary)
}

/// `systemd-analyze verify` and `security` on the service, in a small root tree with the
/// recipe's installed layout (the unit refers to the binary and the helper by absolute path;
/// `verify` also loads the targets the unit is ordered with, so the host's units come along).
fn check_service(root: &Path) -> Result<(), String> {
    if !have_command("systemd-analyze") {
        return Err("systemd-analyze is missing; run:\n  sudo apt-get install systemd".into());
    }
    let tree = root.join("target").join("yocto").join("root");
    let _ = fs::remove_dir_all(&tree);
    let units = tree.join("usr/lib/systemd/system");
    for dir in [
        tree.join("usr/bin"),
        tree.join("usr/libexec/ocf-agent"),
        tree.join("etc/ocf-agent"),
        units.clone(),
    ] {
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let host_units = Path::new("/usr/lib/systemd/system");
    run(Command::new("cp")
        .arg("-a")
        .arg(host_units.join("."))
        .arg(&units))?;
    let files = root.join(RECIPE_DIR).join("files");
    let binary = build_output(root);
    let copies: [(PathBuf, PathBuf); 4] = [
        (binary, tree.join("usr/bin/ocf-agent")),
        (
            files.join("reboot-if-asked"),
            tree.join("usr/libexec/ocf-agent/reboot-if-asked"),
        ),
        (
            files.join("ocf-agent.service"),
            units.join("ocf-agent.service"),
        ),
        (
            root.join("board/sim.toml"),
            tree.join("etc/ocf-agent/board.toml"),
        ),
    ];
    for (from, to) in &copies {
        fs::copy(from, to).map_err(|e| format!("cannot copy {}: {e}", from.display()))?;
    }
    // --man=no: the manual pages its Documentation= names are not installed here.
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .arg(format!("--root={}", tree.display()))
        .arg("ocf-agent.service")
        .output()
        .map_err(|e| format!("cannot run systemd-analyze: {e}"))?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    if !verify.status.success() || !said.trim().is_empty() {
        return Err(format!("systemd-analyze verify:\n{}", said.trim()));
    }
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(format!("--root={}", tree.display()))
        .arg("ocf-agent.service")
        .output()
        .map_err(|e| format!("cannot run systemd-analyze security: {e}"))?;
    let report = String::from_utf8_lossy(&security.stdout).into_owned();
    let exposure = exposure_level(&report).ok_or_else(|| {
        format!(
            "no overall exposure level in:\n{report}{}",
            String::from_utf8_lossy(&security.stderr)
        )
    })?;
    let open: Vec<&str> = report
        .lines()
        .filter_map(|l| l.strip_prefix('✗'))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    eprintln!(
        "xtask: yocto: systemd-analyze security: overall exposure level {exposure:.1} (limit {MAX_EXPOSURE}); not set: {}",
        open.join(" ")
    );
    if exposure > MAX_EXPOSURE {
        return Err(format!(
            "ocf-agent.service: exposure {exposure:.1} is above {MAX_EXPOSURE}"
        ));
    }
    Ok(())
}

/// Where [`build_from_crate_list`] leaves the binary.
pub fn build_output(root: &Path) -> PathBuf {
    root.join("target/yocto/build/target")
        .join(TARGET)
        .join("release/ocf-agent")
}

/// The number in `→ Overall exposure level for NAME: 1.7 OK`.
fn exposure_level(report: &str) -> Option<f64> {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))?;
    line.rsplit_once(": ")?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: &str = r#"# This file is automatically @generated by Cargo.
version = 4

[[package]]
name = "cfg-if"
version = "1.0.4"
source = "registry+https://example.invalid/index"
checksum = "9330f8b2ff13f34540b44e946ef35111825727b38d33286ef986142615121801"

[[package]]
name = "ocf-agent"
version = "0.1.0"
dependencies = [
 "cfg-if",
 "windows-sys 0.52.0",
]

[[package]]
name = "windows-sys"
version = "0.52.0"
source = "registry+https://example.invalid/index"
checksum = "282be5f36a8ce781fad8c8ae18fa3f9beff57ec1b52cb3de0789201425d9a33d"

[[package]]
name = "windows-sys"
version = "0.61.2"
source = "registry+https://example.invalid/index"
checksum = "ae137229bcbd6cdf0f7b80a31df61766145077ddf49416a728b02cb3921ff3fc"
"#;

    #[test]
    fn registry_packages_only_in_lock_order_with_every_version() {
        let crates = locked_crates(LOCK).unwrap();
        let names: Vec<String> = crates
            .iter()
            .map(|c| format!("{}-{}", c.name, c.version))
            .collect();
        assert_eq!(
            names,
            ["cfg-if-1.0.4", "windows-sys-0.52.0", "windows-sys-0.61.2"]
        );
    }

    #[test]
    fn inc_has_oe_cores_layout_and_reads_back() {
        let crates = locked_crates(LOCK).unwrap();
        let inc = crates_inc(&crates);
        assert!(inc.contains(&format!(
            "SRC_URI += \" \\\n    {CRATE_URI_PREFIX}cfg-if/1.0.4 \\\n"
        )));
        assert!(inc.contains(
            "SRC_URI[windows-sys-0.61.2.sha256sum] = \"ae137229bcbd6cdf0f7b80a31df61766145077ddf49416a728b02cb3921ff3fc\"\n"
        ));
        assert_eq!(parse_crates_inc(&inc).unwrap(), crates);
    }

    #[test]
    fn a_crate_without_checksum_or_a_stray_checksum_is_an_error() {
        let inc = crates_inc(&locked_crates(LOCK).unwrap());
        let no_sum: String = inc
            .lines()
            .filter(|l| !l.starts_with("SRC_URI[cfg-if-"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(parse_crates_inc(&no_sum).unwrap_err().contains("cfg-if"));
        let no_line: String = inc
            .lines()
            .filter(|l| !l.contains("/cfg-if/"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(parse_crates_inc(&no_line).unwrap_err().contains("cfg-if"));
    }

    #[test]
    fn git_dependencies_and_missing_checksums_are_refused() {
        let git = LOCK.replace(
            "registry+https://example.invalid/index\"\nchecksum = \"9330",
            "git+https://example.invalid/x#abc\"\nchecksum = \"9330",
        );
        assert!(locked_crates(&git).unwrap_err().contains("cfg-if"));
        let no_checksum = LOCK.replace(
            "checksum = \"9330f8b2ff13f34540b44e946ef35111825727b38d33286ef986142615121801\"\n",
            "",
        );
        assert!(locked_crates(&no_checksum).unwrap_err().contains("cfg-if"));
    }

    #[test]
    fn the_committed_list_matches_the_workspace_lock_file() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        check_crates_inc(root).unwrap();
    }

    #[test]
    fn the_recipe_matches_the_workspace() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        check_recipe(root).unwrap();
    }

    #[test]
    fn the_pi_machines_build_the_agent_with_rppal() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let recipe = read(
            &root
                .join(RECIPE_DIR)
                .join(format!("ocf-agent_{}.bb", env!("CARGO_PKG_VERSION"))),
        )
        .unwrap();
        assert_eq!(rpi_cargo_args(&recipe).unwrap(), ["--features", "rppal"]);
        let two = "PACKAGECONFIG:rpi ??= \"a b\"\nPACKAGECONFIG[a] = \"--features x,,dep\"\nPACKAGECONFIG[b] = \"--features y\"\n";
        assert_eq!(
            rpi_cargo_args(two).unwrap(),
            ["--features", "x", "--features", "y"]
        );
        assert!(rpi_cargo_args("PACKAGECONFIG:rpi = \"c\"\n")
            .unwrap_err()
            .contains("no PACKAGECONFIG[c]"));
        assert!(rpi_cargo_args("PACKAGECONFIG ??= \"\"\n").is_err());
    }

    #[test]
    fn exposure_is_read_from_the_summary_line() {
        let report = "✗ PrivateNetwork= ...  0.5\n\n→ Overall exposure level for ocf-agent.service: 1.7 OK 🙂\n";
        assert_eq!(exposure_level(report), Some(1.7));
        assert_eq!(exposure_level("nothing"), None);
    }
}
