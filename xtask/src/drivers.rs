//! The drivers' checks that `cargo test --workspace` cannot make, run by `cargo xtask test` and
//! `cargo xtask drivers-test`:
//!
//! - the chip crates (`drivers/chips/*`) build for a microcontroller without std
//!   (`thumbv7em-none-eabihf`, a Cortex-M4F), with the Yocto release's Rust: their `no_std`
//!   claim and their rust-version, checked;
//! - `ocf-drivers` with the `rppal` feature, which no default build enables: its tests on this
//!   machine (the rppal backend against a mock, and rppal itself compiled). The aarch64 build
//!   with the feature is part of the Yocto checks (`yocto.rs`), from the recipe's crate list.

use std::path::Path;
use std::process::Command;

use crate::run;
use crate::yocto::YOCTO_RUST;

/// A target with `core` and no `std`.
const NO_STD_TARGET: &str = "thumbv7em-none-eabihf";
/// The chip driver crates, each publishable on its own.
pub const CHIP_CRATES: &[&str] = &["lm75x", "bme280-nb"];

pub fn test(root: &Path) -> Result<(), String> {
    no_std_build(root)?;
    rppal_feature_tests(root)
}

fn no_std_build(root: &Path) -> Result<(), String> {
    crate::yocto::ensure_toolchain()?;
    let has_target = Command::new("rustup")
        .args(["run", YOCTO_RUST, "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            Path::new(String::from_utf8_lossy(&o.stdout).trim())
                .join("lib/rustlib")
                .join(NO_STD_TARGET)
                .is_dir()
        })
        .unwrap_or(false);
    if !has_target {
        eprintln!("xtask: adding the {NO_STD_TARGET} core library to Rust {YOCTO_RUST}");
        run(Command::new("rustup").args([
            "target",
            "add",
            "--toolchain",
            YOCTO_RUST,
            NO_STD_TARGET,
        ]))?;
    }
    let mut cmd = Command::new("rustup");
    cmd.current_dir(root)
        .env("CARGO_TARGET_DIR", root.join("target").join("no-std"))
        .args(["run", YOCTO_RUST, "cargo", "build", "--locked", "--quiet"])
        .args(["--target", NO_STD_TARGET]);
    for krate in CHIP_CRATES {
        cmd.args(["-p", krate]);
    }
    run(&mut cmd)?;
    eprintln!(
        "xtask: drivers: {} build for {NO_STD_TARGET} (no_std, Rust {YOCTO_RUST})",
        CHIP_CRATES.join(", ")
    );
    Ok(())
}

fn rppal_feature_tests(root: &Path) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).current_dir(root).args([
        "test",
        "--locked",
        "-p",
        "ocf-drivers",
        "--features",
        "rppal",
    ]))
}
