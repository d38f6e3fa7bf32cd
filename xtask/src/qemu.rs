//! `cargo xtask qemu [--fresh]`: builds the test image (`image.rs`) and the host side, then
//! becomes `ocf-qemu` (tests/e2e/src/bin/qemu.rs), which starts the dev cloud on 127.0.0.1,
//! boots the image with its SD card under `target/qemu/run/` (kept between runs unless
//! `--fresh`), prints the forwarded endpoints and the setup PIN, and stops both on Ctrl-C.

use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::{image, run, workspace_root};

pub fn command(extra: &[String]) -> Result<(), String> {
    let root = workspace_root();
    let image = image::build(&root, false)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(&cargo).current_dir(&root).args([
        "build",
        "--package",
        "ocf-dev-cloud",
        "--package",
        "ocf-mediator",
        "--package",
        "ocf-e2e",
        "--bin",
        "ocf-dev-cloud",
        "--bin",
        "ocf-mediator",
        "--bin",
        "ocf-qemu",
        "--bin",
        "ocf-qemu-relay",
    ]))?;
    let err = Command::new(root.join("target").join("debug").join("ocf-qemu"))
        .current_dir(&root)
        .arg("--image")
        .arg(&image)
        .arg("--dir")
        .arg(root.join("target").join("qemu").join("run"))
        .args(extra)
        .exec();
    Err(format!("cannot run ocf-qemu: {err}"))
}
