//! `ocf-qemu` (what `cargo xtask qemu` runs): the QEMU raspi3b test image for a person to try.
//! Starts `ocf-dev-cloud` on 127.0.0.1 (advertising the guest's forward as its `cis`), boots the
//! image with the SD card in `--dir` (a fresh copy of the blank card with `--fresh` or when there
//! is none), prints the forwarded endpoints, the console and QMP paths, the setup PIN and the
//! Mediator command, then waits: Ctrl-C stops QEMU and the cloud (by PID). A guest reboot
//! (`/oic/mnt` `rb`) ends QEMU; it is booted again from the same card.
//!
//! `ocf-qemu --image DIR --dir DIR [--fresh]`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ocf_e2e::cloud::DevCloud;
use ocf_e2e::qemu::{fresh_card, Boot, Guest, GUEST_CLOUD_CIS};
use ocf_e2e::{bin_dir, signals, Spawn};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
    };
    let (Some(image), Some(dir)) = (value("--image"), value("--dir")) else {
        eprintln!("usage: ocf-qemu --image DIR --dir DIR [--fresh]");
        return ExitCode::from(2);
    };
    signals::install();
    match run(image, dir, args.iter().any(|a| a == "--fresh")) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ocf-qemu: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(image: PathBuf, dir: PathBuf, fresh: bool) -> Result<(), String> {
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let card = dir.join("card.img");
    if fresh || !card.exists() {
        fresh_card(&image, &card)?;
    }
    let how = Spawn {
        log_level: std::env::var("OCF_LOG").unwrap_or_else(|_| "info".into()),
        log_file: Some(dir.join("cloud.log")),
        supervised: true,
        ..Spawn::default()
    };
    // The same cloud (sid, CA, devices) across runs, as the card is kept.
    let cloud = DevCloud::spawn(
        &dir.join("cloud"),
        "127.0.0.1:0",
        "",
        "127.0.0.1:0",
        vec!["--device-cis".into(), GUEST_CLOUD_CIS.into()],
        &how,
    )?;
    println!(
        "cloud   ocf-dev-cloud, pid {}, sid {}",
        cloud.child.id(),
        cloud.sid
    );
    let token_file = dir.join("token");
    ocf_e2e::cloud::write_private(&token_file, &cloud.token());
    println!(
        "  http://{}           the cloud's API (plgd hub's shape; bearer token in {})",
        cloud.http,
        token_file.display()
    );
    println!("  {}           the console", cloud.console_url());
    println!(
        "  coaps+tcp://{}      devices; the guest reaches it as {GUEST_CLOUD_CIS}",
        cloud.coaps
    );
    let mut n = 0;
    loop {
        n += 1;
        let boot = Boot {
            image: image.clone(),
            card: card.clone(),
            console: dir.join(format!("console-{n}.log")),
            qmp: dir.join("qmp.sock"),
            cloud: Some(cloud.coaps),
            relay: bin_dir().join("ocf-qemu-relay"),
            cmdline: String::new(),
        };
        let mut guest = Guest::boot(&boot)?;
        println!(
            "\nguest   qemu-system-aarch64 -M raspi3b, pid {} (boot {n})",
            guest.child.id()
        );
        println!(
            "  {}    the device's CoAP over TLS (forwarded to the guest's 5684)",
            guest.ep()
        );
        println!(
            "  coap://{}       the device's CoAP over UDP, discovery (guest 5683)",
            guest.udp
        );
        println!("  console  {}", boot.console.display());
        println!(
            "  QMP      {}   e.g. qom-set /machine/peripheral/t0 temperature 31500",
            boot.qmp.display()
        );
        let ready = guest.wait_console(Duration::from_secs(90), "ocf-agent: ready", |c| {
            c.contains("ocf-agent: ready").then_some(())
        });
        if let Err(e) = ready {
            return Err(format!("{e}\n{}", guest.console()));
        }
        println!(
            "  ready    {:.1} s after QEMU started, di {}",
            guest.started.elapsed().as_secs_f64(),
            guest.di().unwrap_or_default()
        );
        match guest.pin() {
            Some(pin) => {
                println!("  PIN      {pin}   (printed once on the console by the fresh agent)");
                println!(
                    "\n  $ {} --identity {} onboard --pin {pin} --cloud http://{} --token-file {} --device {}",
                    bin_dir().join("ocf-mediator").display(),
                    dir.join("mediator").display(),
                    cloud.http,
                    token_file.display(),
                    guest.ep()
                );
            }
            None => println!(
                "  no new PIN on this boot: the card's agent made one earlier (in its state) or is owned"
            ),
        }
        println!("\nCtrl-C stops QEMU and the cloud.");
        let since = Instant::now();
        loop {
            if signals::caught().is_some() {
                guest.kill();
                return Ok(());
            }
            if let Ok(Some(status)) = guest.child.try_wait() {
                println!(
                    "\nQEMU exited ({status}) after {:.0} s: the guest rebooted or powered off; booting the same card again",
                    since.elapsed().as_secs_f64()
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
