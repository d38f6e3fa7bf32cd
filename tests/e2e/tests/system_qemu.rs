//! The system test: the image `cargo xtask image` assembles (Debian's arm64 kernel, busybox
//! init, the static agent started from the layer's `ocf-agent.service`) booted on QEMU's
//! `raspi3b`, where the agent reads the emulated TMP105 over the BCM2835 I2C controller and
//! drives the BCM2835 GPIO lines; the dev cloud and `ocf-mediator` run on the host (127.0.0.1),
//! and the guest reaches only the forwards (see `ocf_e2e::qemu`). One device's whole life, each
//! phase timed:
//!
//! 1. first boot (with `ocf.log=debug`: the persistence points are the baseline of phase 6):
//!    the PIN from the serial console, onboarding through the forwarded port, `registered`; the
//!    clock arrives only after the agent started (the clock-behind path);
//! 2. QMP sets the TMP105 to 31.5 °C: the cloud API reads 31.5 within one sampling period (1 s)
//!    plus 2 s, and an observer on the cloud (its event subscription) sees it;
//! 3. the GPIO relay switched and read back through the cloud;
//! 4. `/oic/mnt` `rb` through the cloud: the agent exits 85, the unit's ExecStopPost= helper
//!    reboots, QEMU exits; booted again from the same SD card, the device signs in again with no
//!    second sign-up and no republish (the cloud's request log);
//! 5. `/oic/mnt` `fr` through the cloud: the cloud sees the deregistration, the device comes
//!    back unowned under a new `di`, a second onboarding registers it;
//! 6. pulled plugs: on fresh cards, QEMU is SIGKILLed right when the agent logs chosen
//!    persistence points of the provisioning, then booted from the same card: nothing corrupt
//!    or moved aside, no ERROR line, and onboarding completes.
//!
//! Needs `OCF_QEMU_IMAGE` (set by `cargo xtask test`); without it the test fails with the
//! command to run. The serial consoles are printed when it fails.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ocf_e2e::cloud::*;
use ocf_e2e::mediator::*;
use ocf_e2e::qemu::*;
use ocf_e2e::*;
use serde_json::json;

/// The board's sampling period of /temperature (board/qemu-raspi3b.toml).
const PERIOD: Duration = Duration::from_secs(1);
/// Boot to `ocf-agent: ready`.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Pulled-plug points tried (spread over the provisioning's persistence points).
const PLUG_POINTS: usize = 4;

struct Sys {
    dir: TempDir,
    image: PathBuf,
    cloud: DevCloud,
    med: Mediator,
    consoles: Vec<PathBuf>,
}

impl Sys {
    fn boot(&mut self, card: &std::path::Path, cmdline: &str) -> Guest {
        let n = self.consoles.len() + 1;
        let console = self.dir.path().join(format!("console-{n}.log"));
        self.consoles.push(console.clone());
        let mut g = Guest::boot(&Boot {
            image: self.image.clone(),
            card: card.to_path_buf(),
            console,
            qmp: self.dir.path().join("qmp.sock"),
            cloud: Some(self.cloud.coaps),
            relay: binary("ocf-qemu-relay"),
            cmdline: cmdline.into(),
        })
        .unwrap_or_else(|e| panic!("boot {n}: {e}"));
        g.wait_console(BOOT_TIMEOUT, "ocf-agent: ready", |c| {
            c.contains("ocf-agent: ready").then_some(())
        })
        .unwrap_or_else(|e| panic!("boot {n}: {e}"));
        g
    }

    fn url(&self) -> String {
        format!("http://{}", self.cloud.http)
    }

    fn online(&self, di: &str) -> bool {
        self.cloud
            .try_devices()
            .ok()
            .and_then(|d| d.into_iter().find(|d| d["id"] == di))
            .is_some_and(|d| ocf_e2e::cloud::online(&d))
    }

    fn count(&self, di: &str, method: &str, path: &str) -> usize {
        self.cloud.requests(di, method, path).len()
    }

    /// Every boot's console (the last 150 lines of each), for a failure.
    fn consoles(&self) -> String {
        let mut out = String::new();
        for (i, c) in self.consoles.iter().enumerate() {
            out.push_str(&format!(
                "\n===== serial console of boot {} ({}) =====\n{}\n",
                i + 1,
                c.display(),
                log_tail(c, 150)
            ));
        }
        out
    }
}

fn phase(t: Instant, what: &str) {
    eprintln!("system: {what}: {:.1} s", t.elapsed().as_secs_f64());
}

/// Console lines without ANSI colour sequences.
fn plain(console: &str) -> String {
    let mut out = String::with_capacity(console.len());
    let mut chars = console.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The persistence points in a console, in order.
fn points(console: &str) -> Vec<String> {
    plain(console)
        .lines()
        .filter_map(|l| l.split_once("persistence point: "))
        .map(|(_, p)| p.trim().to_string())
        .collect()
}

fn onboard_ok(sys: &Sys, pin: &str, ep: &str) -> Run {
    let run = sys.med.onboard(pin, ep, &sys.url(), &[]);
    assert!(
        run.ok() && run.stdout.contains("cps registered"),
        "onboarding failed (exit {}):\n{}",
        run.code,
        run.output()
    );
    run
}

/// No ERROR line, nothing moved aside, in a boot's console.
fn assert_clean_start(console: &str, what: &str) {
    let text = plain(console);
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains(".corrupt") || l.contains("quarantine"))
        .collect();
    assert!(bad.is_empty(), "{what}: {bad:#?}");
}

#[test]
fn qemu_raspi3b_image_lives_a_whole_device_life_against_the_dev_cloud() {
    let image = image_dir().unwrap_or_else(|e| panic!("{e}"));
    let whole = Instant::now();
    let dir = TempDir::new("qemu");
    let cloud = DevCloud::start(
        &dir.path().join("cloud"),
        &["--device-cis", GUEST_CLOUD_CIS],
    );
    let med = Mediator::new(&dir.path().join("mediator"));
    med.token_from(&cloud);
    let mut sys = Sys {
        dir,
        image,
        cloud,
        med,
        consoles: Vec::new(),
    };
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| life(&mut sys)));
    if let Err(e) = result {
        eprintln!("{}", sys.consoles());
        eprintln!(
            "===== dev cloud log (last 40 lines) =====\n{}",
            sys.cloud
                .stderr_log()
                .iter()
                .rev()
                .take(40)
                .rev()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::panic::resume_unwind(e);
    }
    phase(whole, "the whole system test");
}

fn life(sys: &mut Sys) {
    // 1. First boot and onboarding.
    let card = sys.dir.path().join("card.img");
    fresh_card(&sys.image, &card).unwrap();
    let t = Instant::now();
    let mut guest = sys.boot(&card, "ocf.log=debug");
    let ready = guest.started.elapsed();
    let pin = guest
        .pin()
        .expect("the fresh agent printed its setup PIN on the console");
    let di = guest.di().expect("ocf-agent: di on the console");
    let run = onboard_ok(sys, &pin, &guest.ep());
    let registered = guest.started.elapsed();
    eprintln!(
        "system: QEMU start → ocf-agent ready {:.1} s, → registered {:.1} s",
        ready.as_secs_f64(),
        registered.as_secs_f64()
    );
    assert!(run.output().contains(&di), "{}", run.output());
    wait_for(Duration::from_secs(20), "the device online", || {
        sys.online(&di).then_some(())
    });
    // The clock came after the agent had started: it ran with a clock that was behind.
    let clock = guest
        .wait_console(Duration::from_secs(60), "the clock set by the init", |c| {
            c.find("ocf-init: clock set to")
        })
        .unwrap();
    let agent_ready = guest.console().find("ocf-agent: ready").unwrap();
    assert!(
        agent_ready < clock,
        "the clock must be set after the agent started"
    );
    // The provisioning's persistence points: those after `ready` (the first start's are
    // before it).
    let console = guest.console();
    let baseline = points(&console[agent_ready..]);
    phase(t, "phase 1, first boot and onboarding");

    // 2. The sensor: QMP sets the TMP105, the cloud reads it, an observer sees it.
    let t = Instant::now();
    let mut events = sys.cloud.events(&di);
    let temperature = |sys: &Sys| -> Option<f64> {
        let r = sys.cloud.try_resource(&di, "/temperature").ok()?;
        r.try_json().ok()?["data"]["content"]["temperature"].as_f64()
    };
    let before = temperature(sys).expect("the temperature through the cloud");
    assert_ne!(before, 31.5, "the TMP105 already reads 31.5");
    guest.set_temperature(31500).unwrap();
    let set = Instant::now();
    let limit = PERIOD + Duration::from_secs(2);
    loop {
        if temperature(sys) == Some(31.5) {
            break;
        }
        assert!(
            set.elapsed() < limit,
            "the cloud did not read 31.5 within {limit:?} (it reads {:?})",
            temperature(sys)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let latency = set.elapsed();
    eprintln!(
        "system: sensor change (QMP) → cloud API reads 31.5 °C: {:.2} s",
        latency.as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let Some((href, rep)) = events.next_change(deadline) else {
            break None;
        };
        if href == "/temperature" && rep["temperature"].as_f64() == Some(31.5) {
            break Some(set.elapsed());
        }
    };
    let seen = seen.expect("the cloud observer saw the temperature change");
    eprintln!(
        "system: sensor change → observer on the cloud: {:.2} s",
        seen.as_secs_f64()
    );
    phase(t, "phase 2, sensor");

    // 3. The relay (GPIO 17 on gpiochip0) through the cloud.
    let t = Instant::now();
    for value in [true, false, true] {
        let r = sys.cloud.update(&di, "/relay", &json!({ "value": value }));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-coap-code"), Some("2.04"), "{:?}", r.headers);
        let r = sys.cloud.resource(&di, "/relay");
        assert_eq!(r.content()["value"], value, "{}", r.text());
    }
    phase(t, "phase 3, relay");

    // 4. Reboot through the cloud.
    let t = Instant::now();
    let (sign_ups, publishes) = (
        sys.count(&di, "POST", "/oic/sec/account"),
        sys.count(&di, "POST", "/oic/rd"),
    );
    assert_eq!(sign_ups, 1, "one sign-up so far");
    let r = sys.cloud.update(&di, "/oic/mnt", &json!({"rb": true}));
    assert_eq!(r.status, 200, "{}", r.text());
    let status = guest
        .wait_exit(Duration::from_secs(60))
        .expect("the guest rebooted: QEMU (with -no-reboot) exits");
    assert!(status.success(), "QEMU exited with {status}");
    let console = guest.console();
    assert!(
        console.contains("main process exited, code=exited, status=85"),
        "the agent exits with the unit's reboot status"
    );
    assert!(
        console.contains("ocf-init: shutdown done"),
        "a clean shutdown"
    );
    let down = t.elapsed();
    drop(guest);
    let mut guest = sys.boot(&card, "");
    assert_eq!(guest.di().as_deref(), Some(di.as_str()), "the same device");
    assert!(guest.pin().is_none(), "no new PIN after a reboot");
    wait_for(
        Duration::from_secs(60),
        "the device signed in again",
        || sys.online(&di).then_some(()),
    );
    let again = t.elapsed();
    eprintln!(
        "system: reboot (/oic/mnt rb) → QEMU exited {:.1} s, → signed in again {:.1} s",
        down.as_secs_f64(),
        again.as_secs_f64()
    );
    assert_eq!(
        sys.count(&di, "POST", "/oic/sec/account"),
        sign_ups,
        "no second sign-up"
    );
    assert_eq!(sys.count(&di, "POST", "/oic/rd"), publishes, "no republish");
    assert!(
        temperature(sys).is_some(),
        "read through the cloud after the reboot"
    );
    phase(t, "phase 4, reboot");

    // 5. Factory reset through the cloud, then a second onboarding.
    let t = Instant::now();
    let r = sys.cloud.update(&di, "/oic/mnt", &json!({"fr": true}));
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for(Duration::from_secs(30), "DELETE /oic/sec/account", || {
        (sys.count(&di, "DELETE", "/oic/sec/account") > 0).then_some(())
    });
    wait_for(
        Duration::from_secs(30),
        "the cloud to forget the device",
        || {
            sys.cloud
                .try_devices()
                .ok()
                .filter(|d| !d.iter().any(|d| d["id"] == di.as_str()))
                .map(|_| ())
        },
    );
    let new_di = guest
        .wait_console(Duration::from_secs(30), "a new di", |c| {
            console_values(c, "ocf-agent: di ")
                .into_iter()
                .find(|d| *d != di)
        })
        .unwrap();
    // A reset may make the agent show a new PIN; else the label's stays.
    let pin2 = guest.pin().unwrap_or(pin.clone());
    let run = onboard_ok(sys, &pin2, &guest.ep());
    assert!(
        !run.stdout.contains("already owned") && run.output().contains(&new_di),
        "the reset device is onboarded afresh under its new di:\n{}",
        run.output()
    );
    wait_for(Duration::from_secs(20), "the new di online", || {
        sys.online(&new_di).then_some(())
    });
    assert!(temperature_of(sys, &new_di).is_some());
    eprintln!("system: factory reset: {di} → {new_di}, onboarded again");
    drop(guest);
    phase(t, "phase 5, factory reset");

    // 6. Pulled plugs during the provisioning.
    let t = Instant::now();
    let provisioning: Vec<String> = baseline
        .iter()
        .filter(|p| p.starts_with("wrote "))
        .cloned()
        .collect();
    assert!(
        provisioning.len() >= PLUG_POINTS,
        "too few persistence points in the first boot: {baseline:?}"
    );
    let chosen: Vec<String> = (0..PLUG_POINTS)
        .map(|i| provisioning[i * (provisioning.len() - 1) / (PLUG_POINTS - 1)].clone())
        .collect();
    eprintln!("system: pulled-plug points (of {provisioning:?}): {chosen:?}");
    for point in &chosen {
        pulled_plug(sys, point);
    }
    phase(t, "phase 6, pulled plugs");
}

fn temperature_of(sys: &Sys, di: &str) -> Option<f64> {
    let r = sys.cloud.try_resource(di, "/temperature").ok()?;
    r.try_json().ok()?["data"]["content"]["temperature"].as_f64()
}

/// A fresh card, onboarding started, QEMU killed when the agent logs `point`; booted again: a
/// clean start and a completed onboarding.
fn pulled_plug(sys: &mut Sys, point: &str) {
    let t = Instant::now();
    let card = sys
        .dir
        .path()
        .join(format!("card-{}.img", point.replace([' ', '#'], "-")));
    fresh_card(&sys.image, &card).unwrap();
    let med = Mediator::new(
        &sys.dir
            .path()
            .join(format!("mediator-{}", point.replace([' ', '#'], "-"))),
    );
    med.token_from(&sys.cloud);
    let token = med.token_args();
    let mut guest = sys.boot(&card, "ocf.log=debug");
    let pin = guest.pin().expect("a PIN on the fresh card");
    let di = guest.di().expect("a di");
    let ep = guest.ep();
    let url = sys.url();
    let onboarding = std::thread::spawn({
        let dir = med.dir.clone();
        let pin = pin.clone();
        // A short --timeout: once QEMU is gone it would wait that long for `registered`.
        move || {
            let mut args = vec![
                "onboard",
                "--pin",
                &pin,
                "--device",
                &ep,
                "--cloud",
                &url,
                "--timeout",
                "8",
            ];
            args.extend(token.iter().map(String::as_str));
            Mediator::new(&dir).run(&args)
        }
    });
    let wanted = point.to_string();
    let hit = guest.wait_console(Duration::from_secs(60), point, |c| {
        points(c).contains(&wanted).then_some(())
    });
    guest.kill();
    let killed_after = guest.started.elapsed();
    hit.unwrap_or_else(|e| panic!("pulled plug at {point}: {e}"));
    let _ = onboarding.join();
    drop(guest);

    let mut guest = sys.boot(&card, "ocf.log=debug");
    assert_clean_start(
        &guest.console(),
        &format!("boot after the plug was pulled at {point}"),
    );
    let listing = guest
        .console()
        .lines()
        .find_map(|l| l.split_once("ocf-init: state on the card: "))
        .map(|(_, v)| v.trim().to_string())
        .expect("the init lists the state directory at boot");
    assert!(
        !listing.contains(".corrupt"),
        "moved aside after the plug was pulled at {point}: {listing}"
    );
    assert_eq!(
        guest.di().as_deref(),
        Some(di.as_str()),
        "the di after a pulled plug"
    );
    let rebooted = guest.started.elapsed();
    let t_onboard = Instant::now();
    let again = med.onboard(&pin, &guest.ep(), &sys.url(), &[]);
    let outcome = if again.ok() && again.stdout.contains("cps registered") {
        if again.stdout.contains("already owned by this Mediator") {
            "owned by the Mediator; onboarding continued"
        } else {
            "unowned; onboarded"
        }
    } else {
        // Killed before the Mediator learnt it was the owner (no pinned key): the owner resets
        // the device, then onboards it afresh.
        assert!(
            again.output().contains("has no pinned key"),
            "onboarding after the plug was pulled at {point} failed:\n{}",
            again.output()
        );
        let r = med.post(&guest.ep(), "/oic/mnt", r#"{"fr":true}"#);
        assert_eq!(r.coap_code(), "2.04", "reset as the owner:\n{}", r.output());
        let new_di = guest
            .wait_console(Duration::from_secs(30), "a new di", |c| {
                console_values(c, "ocf-agent: di ")
                    .into_iter()
                    .find(|d| *d != di)
            })
            .unwrap();
        let r = med.onboard(&pin, &guest.ep(), &sys.url(), &[]);
        assert!(
            r.ok() && r.stdout.contains("cps registered"),
            "onboarding {new_di} after the owner's reset:\n{}",
            r.output()
        );
        "owned, the Mediator had no pinned key; reset as the owner, onboarded"
    };
    assert_clean_start(
        &guest.console(),
        &format!("after the plug was pulled at {point}"),
    );
    let onboarded = t_onboard.elapsed();
    eprintln!(
        "system: pulled plug at {point} ({:.1} s after QEMU start): {outcome}; card: {listing}; \
         booted again to ready {:.1} s, onboarding {:.1} s (case {:.1} s)",
        killed_after.as_secs_f64(),
        rebooted.as_secs_f64(),
        onboarded.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    if onboarded > Duration::from_secs(15) {
        // Why it took long: the agent's cloud link on the console.
        let text = plain(&guest.console());
        let cloud: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("ocf_agent::cloud") || l.contains("ocf-init: clock"))
            .filter(|l| !l.contains("DEBUG"))
            .collect();
        eprintln!("system:   the agent's cloud link:\n{}", cloud.join("\n"));
    }
}
