//! Crash safety: a `kill -9` injected at each persistence point of a first start, of
//! a provisioning and of a factory reset, followed by a restart, always ends in a consistent
//! state. The agent in its secure mode, the development cloud and `ocf-mediator` on loopback,
//! ports chosen by the OS.
//!
//! - The points are not hard-coded: a baseline run (first start, onboarding, factory reset
//!   through the cloud API) lists the `persistence point: <what>#<n>` lines the agent logs, in
//!   three groups: before `ready`, during provisioning, during the reset. Each group must hold
//!   the points that matter (so a broken enumeration cannot pass vacuously).
//! - For each point, with its own state directory, cloud and Mediator identity: the same
//!   sequence is replayed with `OCF_AGENT_KILL_AT=<what>#<n>` (the counts are from process
//!   start), the agent must die there by SIGKILL, and restarted without the variable it must
//!   become ready with no ERROR line, nothing moved aside, no temp file left, every state file
//!   0600, and be in a state the sequence allows, checked through the protocol:
//!   - first start, provisioning: unowned (a fresh onboarding works), or owned by this Mediator
//!     (onboarding again continues; when the Mediator never learnt it owns the device, it resets
//!     it with `/oic/mnt` `fr` as the owner, then onboards it afresh);
//!   - reset: owned and registered with the old `di` exactly when the kill came before the reset
//!     was recorded (the temp file of the recording write), else unowned with a new `di`, which
//!     a fresh onboarding registers;
//!   - in every case the device ends registered and read through the cloud (`/temperature`).
//! - The cases run in parallel (at most [`PARALLEL`] at a time over the whole file).

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ocf_e2e::cloud::*;
use ocf_e2e::mediator::*;
use ocf_e2e::*;
use serde_json::json;

const PIN: &str = "14142135";
/// The agent's test hook (agent/src/state.rs `KILL_AT_ENV`).
const KILL_AT: &str = "OCF_AGENT_KILL_AT";
/// Cases running at once over the whole file (each has its own cloud, agent and Mediator).
const PARALLEL: usize = 4;
/// How long the agent's log must stay without a new persistence point for the baseline to
/// count a phase as finished.
const QUIET: Duration = Duration::from_millis(800);

/// What a case found after the restart, and how long it took; or why it failed.
type CaseResult = Result<(String, Duration), String>;

/// The persistence points of the baseline run, as `<what>#<n>` (absolute counts).
#[derive(Debug)]
struct Baseline {
    /// Before `ocf-agent: ready` on the first start.
    first_start: Vec<String>,
    /// From `ready` until the onboarded device is registered, published and quiet.
    provisioning: Vec<String>,
    /// From the reset request until the device is unowned with a new `di` and quiet.
    reset: Vec<String>,
}

impl Baseline {
    /// The reset's first write of `security.cbor`: the one that records it (RESET pending).
    fn recording_write(&self) -> &str {
        self.reset
            .iter()
            .find(|p| p.starts_with("write security.cbor#"))
            .unwrap_or_else(|| panic!("no write of security.cbor in the reset: {self:?}"))
    }

    fn all(&self) -> BTreeSet<&str> {
        self.first_start
            .iter()
            .chain(&self.provisioning)
            .chain(&self.reset)
            .map(String::as_str)
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Group {
    FirstStart,
    Provisioning,
    Reset,
}

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// The agent's arguments: the sim board on loopback, no multicast, the PIN from `pin`.
fn agent_args(state: &Path, pin: &Path) -> Vec<String> {
    secure_agent_args(state, Some(pin), &[])
}

/// Debug log to `log` (appended), so it can be read after the process is gone.
fn logging_to(log: &Path) -> Spawn {
    Spawn {
        log_file: Some(log.to_path_buf()),
        ..Spawn::default()
    }
}

fn start_agent(
    state: &Path,
    pin: &Path,
    log: &Path,
    env: &[(&str, &str)],
) -> Result<SecureAgent, String> {
    SecureAgent::spawn_with(state, &agent_args(state, pin), &logging_to(log), env)
}

/// The persistence points in a log file, in order.
fn points(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once("persistence point: "))
        .map(|(_, p)| p.trim().to_string())
        .collect()
}

/// Waits until no new persistence point shows up in `log` for [`QUIET`]; all points so far.
fn settle(log: &Path, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut last = points(log);
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = points(log);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= QUIET {
            return last;
        }
        assert!(
            Instant::now() < deadline,
            "the agent kept passing persistence points for {limit:?}:\n{}",
            log_tail(log, 30)
        );
    }
}

fn url(cloud: &DevCloud) -> String {
    format!("http://{}", cloud.http)
}

/// `onboard`, which must end `cps registered`.
fn onboard(med: &Mediator, ep: &str, cloud: &DevCloud) -> Run {
    let run = med.onboard(PIN, ep, &url(cloud), &[]);
    assert!(
        run.ok() && run.stdout.contains("cps registered"),
        "onboarding failed (exit {}):\n{}",
        run.code,
        run.output()
    );
    run
}

/// POST `{"fr":true}` to `/oic/mnt` through the cloud API.
fn reset_through_cloud(cloud: &DevCloud, di: &str) -> Result<HttpResponse, String> {
    cloud.api().try_update(di, "/oic/mnt", &json!({"fr": true}))
}

/// Waits until the device is online in the cloud and its temperature reads through the API.
fn assert_works_through_cloud(cloud: &DevCloud, di: &str) {
    wait_for(
        Duration::from_secs(20),
        &format!("device {di} online in the cloud"),
        || cloud.device(di).filter(online),
    );
    let mut last = String::new();
    let read = (0..50).find_map(|_| {
        let r = cloud.resource(di, "/temperature");
        if r.status == 200 && r.content()["temperature"].is_number() {
            return Some(());
        }
        last = format!("{} {}", r.status, r.text());
        std::thread::sleep(Duration::from_millis(200));
        None
    });
    assert!(
        read.is_some(),
        "GET /api/v1/devices/{di}/temperature: {last}"
    );
}

/// Waits up to `limit` for `child` to end.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `/oic/sec/doxm` as this Mediator sees it: (owned, devowneruuid, deviceuuid).
fn doxm(med: &Mediator, ep: &str) -> (bool, String, String) {
    let r = med.get(ep, "/oic/sec/doxm");
    let j = r
        .json()
        .filter(|_| r.ok() && r.coap_code() == "2.05")
        .unwrap_or_else(|| panic!("GET /oic/sec/doxm:\n{}", r.output()));
    let text = |k: &str| j[k].as_str().unwrap_or_default().to_ascii_lowercase();
    (
        j["owned"].as_bool().unwrap_or_else(|| panic!("doxm: {j}")),
        text("devowneruuid"),
        text("deviceuuid"),
    )
}

/// No temp file, nothing moved aside, every file 0600, the directory 0700.
fn assert_state_dir_consistent(state: &Path) {
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode(state).ok(), Some(0o700), "{}", state.display());
    let list = || -> Vec<String> {
        std::fs::read_dir(state)
            .expect("read the state dir")
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let is_temp = |n: &str| n.starts_with('.') && n.ends_with(".tmp");
    let mut names = list();
    // A write under way has its temp file for a moment; one that the crash left stays.
    if names.iter().any(|n| is_temp(n)) {
        std::thread::sleep(Duration::from_millis(500));
        names = list();
    }
    for name in &names {
        assert!(!is_temp(name), "a temp file remains: {name}");
        assert!(!name.contains(".corrupt"), "a file was moved aside: {name}");
        // (A file renamed away since the listing has nothing to check.)
        if let Ok(m) = mode(&state.join(name)) {
            assert_eq!(m, 0o600, "mode of {name}");
        }
    }
    for needed in ["identity.json", "identity.key", "security.cbor"] {
        assert!(
            names.iter().any(|n| n == needed),
            "no {needed} in {names:?}"
        );
    }
}

/// No ERROR line and nothing moved aside in the agent's log.
fn assert_log_clean(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.contains("moved to"))
        .collect();
    assert!(bad.is_empty(), "error lines:\n{}", bad.join("\n"));
}

/// An `ocf-mediator onboard` in the background (output to a file), killed by PID when dropped.
struct KillOnDrop(Child);

impl KillOnDrop {
    fn onboard(med: &Mediator, ep: &str, cloud: &DevCloud, log: &Path) -> KillOnDrop {
        let out = std::fs::File::create(log).expect("onboard log");
        let child = std::process::Command::new(binary("ocf-mediator"))
            .arg("--identity")
            .arg(&med.dir)
            .args(["onboard", "--pin", PIN, "--device", ep, "--cloud"])
            .arg(url(cloud))
            .args(["--timeout", "30"])
            .args(med.token_args())
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().expect("onboard log"))
            .stderr(out)
            .spawn()
            .expect("start ocf-mediator");
        KillOnDrop(child)
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// At most [`PARALLEL`] cases at once, over all the tests of this file.
struct Slot;

static BUSY: Mutex<usize> = Mutex::new(0);
static FREED: Condvar = Condvar::new();

impl Slot {
    fn take() -> Slot {
        let mut busy = BUSY.lock().unwrap_or_else(|e| e.into_inner());
        while *busy >= PARALLEL {
            busy = FREED.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        *busy += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        *BUSY.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        FREED.notify_one();
    }
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(panic without a message)".into())
}

// ---------------------------------------------------------------------------------------------
// The baseline
// ---------------------------------------------------------------------------------------------

fn baseline() -> &'static Baseline {
    static BASELINE: OnceLock<Baseline> = OnceLock::new();
    BASELINE.get_or_init(|| {
        let _slot = Slot::take();
        let started = Instant::now();
        let b = run_baseline();
        eprintln!(
            "crash_safety: baseline in {:.1} s\n  first start ({}): {}\n  provisioning ({}): {}\n  reset ({}): {}",
            started.elapsed().as_secs_f64(),
            b.first_start.len(),
            b.first_start.join(", "),
            b.provisioning.len(),
            b.provisioning.join(", "),
            b.reset.len(),
            b.reset.join(", "),
        );
        b
    })
}

fn run_baseline() -> Baseline {
    let dir = TempDir::new("crash-baseline");
    let cloud = DevCloud::start(&dir.path().join("cloud"), &[]);
    let pin = pin_file(dir.path(), PIN);
    let med = Mediator::new(&dir.path().join("mediator"));
    med.token_from(&cloud);
    let state = dir.path().join("state");
    let log = dir.path().join("agent.log");
    let mut agent =
        start_agent(&state, &pin, &log, &[]).unwrap_or_else(|e| panic!("baseline: {e}"));
    let first_start = settle(&log, Duration::from_secs(10));

    onboard(&med, &agent.ep, &cloud);
    let di = agent.di.clone();
    assert_works_through_cloud(&cloud, &di);
    wait_for(Duration::from_secs(20), "the links published", || {
        (!cloud.requests(&di, "POST", "/oic/rd").is_empty()).then_some(())
    });
    let provisioned = settle(&log, Duration::from_secs(20));

    let r = reset_through_cloud(&cloud, &di).unwrap_or_else(|e| panic!("baseline: {e}"));
    assert_eq!(r.status, 200, "baseline: reset: {}", r.text());
    let renewed = agent.wait_new_di(&di);
    let (owned, _, deviceuuid) = doxm(&med, &agent.ep);
    assert!(!owned && deviceuuid == renewed, "baseline: after the reset");
    let all = settle(&log, Duration::from_secs(30));
    assert_log_clean(&log);

    assert!(
        all.starts_with(&provisioned) && provisioned.starts_with(&first_start),
        "baseline: the log is not one sequence"
    );
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "baseline: a point twice: {all:?}");
    Baseline {
        reset: all[provisioned.len()..].to_vec(),
        provisioning: provisioned[first_start.len()..].to_vec(),
        first_start,
    }
}

// ---------------------------------------------------------------------------------------------
// One case: kill at a point, restart, check, finish registered
// ---------------------------------------------------------------------------------------------

/// Runs the case of `point` in its own directory; an error names the point and shows the
/// agents' logs.
fn run_case(group: Group, point: &str, base: &Baseline) -> CaseResult {
    let _slot = Slot::take();
    let started = Instant::now();
    let dir = TempDir::new("crash");
    let result =
        std::panic::catch_unwind(AssertUnwindSafe(|| case(group, point, base, dir.path())));
    match result {
        Ok(outcome) => Ok((outcome, started.elapsed())),
        Err(p) => Err(format!(
            "kill at {point:?} ({group:?}): {}\n--- the killed agent's log (tail) ---\n{}\n--- the restarted agent's log (tail) ---\n{}",
            panic_text(p),
            log_tail(&dir.path().join("killed.log"), 12),
            log_tail(&dir.path().join("restarted.log"), 25),
        )),
    }
}

/// The case; returns what the restart found and what was done about it.
fn case(group: Group, point: &str, base: &Baseline, dir: &Path) -> String {
    let cloud = DevCloud::start(&dir.join("cloud"), &[]);
    let pin = pin_file(dir, PIN);
    let med = Mediator::new(&dir.join("mediator"));
    med.token_from(&cloud);
    let state = dir.join("state");
    let killed_log = dir.join("killed.log");
    let env = [(KILL_AT, point)];

    // 1. The same sequence as the baseline, with the kill.
    let mut old_di = None;
    let mut reset_answer = None;
    let status = match group {
        Group::FirstStart => {
            let mut spawned = logging_to(&killed_log)
                .start_with_env("ocf-agent", &agent_args(&state, &pin), &env)
                .unwrap_or_else(|e| panic!("{e}"));
            let status = wait_exit(&mut spawned.child, Duration::from_secs(20));
            if status.is_none() {
                let _ = spawned.child.kill();
                let _ = spawned.child.wait();
            }
            let out: Vec<String> = spawned.stdout.try_iter().collect();
            assert!(
                !out.iter().any(|l| l == "ocf-agent: ready"),
                "the agent became ready before the point: {out:?}"
            );
            status
        }
        Group::Provisioning | Group::Reset => {
            let mut agent = start_agent(&state, &pin, &killed_log, &env)
                .unwrap_or_else(|e| panic!("the first start: {e}"));
            // While provisioning, the Mediator waits for a device that went away (it keeps
            // reconnecting up to its timeout): it is stopped once the agent is dead.
            let _onboarding = (group == Group::Provisioning)
                .then(|| KillOnDrop::onboard(&med, &agent.ep, &cloud, &dir.join("onboard.log")));
            if group == Group::Reset {
                onboard(&med, &agent.ep, &cloud);
                // Replay up to where the baseline asked for the reset: every provisioning
                // point passed, and no other.
                let expected: BTreeSet<&str> = base
                    .first_start
                    .iter()
                    .chain(&base.provisioning)
                    .map(String::as_str)
                    .collect();
                wait_for(
                    Duration::from_secs(20),
                    "the provisioning points of the baseline",
                    || {
                        let seen = points(&killed_log);
                        expected
                            .iter()
                            .all(|p| seen.iter().any(|s| s == p))
                            .then_some(())
                    },
                );
                assert_works_through_cloud(&cloud, &agent.di);
                let seen = points(&killed_log);
                let seen: BTreeSet<&str> = seen.iter().map(String::as_str).collect();
                assert_eq!(
                    seen, expected,
                    "the provisioning passed other points than the baseline's"
                );
                let (api, di) = (cloud.api(), agent.di.clone());
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let _ = tx.send(api.try_update(&di, "/oic/mnt", &json!({"fr": true})));
                });
                reset_answer = Some(rx);
            }
            old_di = Some(agent.di.clone());
            wait_exit(&mut agent.child, Duration::from_secs(30))
        }
    };
    let killed_points = points(&killed_log);
    let Some(status) = status else {
        panic!(
            "the agent did not reach the point within the time limit: the sequence differs from \
             the baseline's; its last points: {:?}",
            &killed_points[killed_points.len().saturating_sub(6)..]
        );
    };
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the agent ended with {status:?}, not by SIGKILL at the point"
    );
    assert!(
        std::fs::read_to_string(&killed_log)
            .unwrap_or_default()
            .contains(&format!("killed at persistence point {point} ")),
        "the agent was killed, but not at the point"
    );
    let known = base.all();
    let strange: Vec<&String> = killed_points
        .iter()
        .filter(|p| !known.contains(p.as_str()))
        .collect();
    assert!(
        strange.is_empty(),
        "points the baseline did not have: {strange:?}"
    );

    // 2. The restart.
    let restarted_log = dir.join("restarted.log");
    let mut agent = start_agent(&state, &pin, &restarted_log, &[])
        .unwrap_or_else(|e| panic!("no restart after the kill: {e}"));
    // A write under way has its temp file for a moment: the directory is looked at once the
    // agent is quiet; a temp file left by the crash would still be there.
    settle(&restarted_log, Duration::from_secs(20));
    assert_state_dir_consistent(&state);
    assert_log_clean(&restarted_log);

    // 3. The state, through the protocol.
    let (owned, owner, deviceuuid) = doxm(&med, &agent.ep);
    assert_eq!(deviceuuid, agent.di, "doxm deviceuuid vs. the printed di");
    if group == Group::Provisioning {
        assert_eq!(
            Some(&agent.di),
            old_di.as_ref(),
            "a crash during provisioning changed the di"
        );
    }
    if owned {
        assert_eq!(
            owner,
            med.uuid().to_ascii_lowercase(),
            "owned, but not by this Mediator"
        );
    }
    let (di, outcome) = match group {
        Group::FirstStart => {
            assert!(!owned, "a first start left an owned device");
            onboard(&med, &agent.ep, &cloud);
            (agent.di.clone(), "unowned; onboarded".into())
        }
        Group::Provisioning if !owned => {
            onboard(&med, &agent.ep, &cloud);
            (agent.di.clone(), "unowned; onboarded".into())
        }
        Group::Provisioning => {
            let again = med.onboard(PIN, &agent.ep, &url(&cloud), &[]);
            if again.ok() {
                assert!(
                    again.stdout.contains("already owned by this Mediator")
                        && again.stdout.contains("cps registered"),
                    "{}",
                    again.output()
                );
                (
                    agent.di.clone(),
                    "owned by the Mediator; onboarding continued".into(),
                )
            } else {
                // The agent died before the Mediator learnt it was the owner (no pinned key):
                // the owner resets the device, then onboards it afresh.
                assert!(
                    again.output().contains("has no pinned key"),
                    "onboarding an owned device again failed:\n{}",
                    again.output()
                );
                let r = med.post(&agent.ep, "/oic/mnt", r#"{"fr":true}"#);
                assert_eq!(r.coap_code(), "2.04", "reset as the owner:\n{}", r.output());
                let old = agent.di.clone();
                agent.di = agent.wait_new_di(&old);
                let (owned, _, deviceuuid) = doxm(&med, &agent.ep);
                assert!(!owned && deviceuuid == agent.di, "after the owner's reset");
                onboard(&med, &agent.ep, &cloud);
                (
                    agent.di.clone(),
                    "owned, the Mediator had no pinned key; reset as the owner, onboarded".into(),
                )
            }
        }
        Group::Reset => {
            let old = old_di.expect("the di before the reset");
            let before_recorded = point == base.recording_write();
            let mut told = String::new();
            if before_recorded {
                // The client must not have been told the reset is done: it was not recorded.
                let answer = reset_answer
                    .expect("the reset was asked for")
                    .recv_timeout(Duration::from_secs(40))
                    .expect("the cloud's answer to the reset");
                if let Ok(r) = &answer {
                    assert_ne!(
                        r.status,
                        200,
                        "the cloud reported the reset done, but it was not recorded: {}",
                        r.text()
                    );
                }
                told = match answer {
                    Ok(r) => format!(" (the reset's client got HTTP {})", r.status),
                    Err(e) => format!(" (the reset's client got no answer: {e})"),
                };
            }
            if owned {
                assert!(
                    before_recorded,
                    "the device kept its owner although the reset was recorded (it is killed \
                     after {}); di {deviceuuid}, was {old}",
                    base.recording_write()
                );
                assert_eq!(deviceuuid, old, "owned, with another di");
                (
                    old,
                    format!("still owned and registered with the old di{told}"),
                )
            } else {
                assert!(
                    !before_recorded,
                    "the reset was lost (not recorded yet) but the device is unowned"
                );
                assert_ne!(deviceuuid, old, "unowned, with the old di");
                onboard(&med, &agent.ep, &cloud);
                (agent.di.clone(), "unowned with a new di; onboarded".into())
            }
        }
    };

    // 4. Registered and working through the cloud, and nothing went wrong on the way.
    assert_works_through_cloud(&cloud, &di);
    settle(&restarted_log, Duration::from_secs(20));
    assert_log_clean(&restarted_log);
    assert_state_dir_consistent(&state);
    outcome
}

/// Runs every case of `group` in parallel; fails listing each failed point.
fn run_group(group: Group, points: &[String]) {
    let base = baseline();
    let started = Instant::now();
    let results: Vec<(String, CaseResult)> = std::thread::scope(|s| {
        let handles: Vec<_> = points
            .iter()
            .map(|p| s.spawn(move || (p.clone(), run_case(group, p, base))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a case thread"))
            .collect()
    });
    let mut failures = Vec::new();
    for (point, result) in &results {
        match result {
            Ok((outcome, took)) => eprintln!(
                "crash_safety: {group:?}: kill at {point}: {outcome} ({:.1} s)",
                took.as_secs_f64()
            ),
            Err(e) => failures.push(e.clone()),
        }
    }
    eprintln!(
        "crash_safety: {group:?}: {} points in {:.1} s",
        points.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {} kill points of {group:?} did not end consistent:\n\n{}",
        failures.len(),
        points.len(),
        failures.join("\n\n")
    );
}

fn assert_has(group: &[String], what: &str, prefixes: &[&str]) {
    for prefix in prefixes {
        assert!(
            group.iter().any(|p| p.starts_with(prefix)),
            "no `{prefix}#n` point in the {what} group: {group:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

#[test]
fn a_kill_during_first_start_ends_consistent() {
    let base = baseline();
    assert_has(
        &base.first_start,
        "first start",
        &[
            "write identity.json#",
            "wrote identity.json#",
            "write identity.key#",
            "wrote identity.key#",
            "write security.cbor#",
            "wrote security.cbor#",
        ],
    );
    run_group(Group::FirstStart, &base.first_start);
}

#[test]
fn a_kill_at_any_persistence_point_of_provisioning_ends_consistent() {
    let base = baseline();
    assert_has(
        &base.provisioning,
        "provisioning",
        &[
            "write security.cbor#",
            "wrote security.cbor#",
            "write cloud.cbor#",
            "wrote cloud.cbor#",
        ],
    );
    // Ownership, the identity certificate, the trust anchor, the ACE and RFNOP are each
    // written; the cloud configuration and the registration too.
    let count = |prefix: &str| {
        base.provisioning
            .iter()
            .filter(|p| p.starts_with(prefix))
            .count()
    };
    assert!(
        count("wrote security.cbor#") >= 5 && count("wrote cloud.cbor#") >= 2,
        "too few points: {:?}",
        base.provisioning
    );
    run_group(Group::Provisioning, &base.provisioning);
}

#[test]
fn a_kill_at_any_persistence_point_of_a_factory_reset_ends_consistent() {
    let base = baseline();
    assert_has(
        &base.reset,
        "reset",
        &[
            "write security.cbor#",
            "wrote security.cbor#",
            "remove cloud.cbor#",
            "write identity.key#",
            "wrote identity.key#",
            "write identity.json#",
            "wrote identity.json#",
        ],
    );
    // The recording write comes first: nothing is wiped before the reset is on disk.
    assert_eq!(
        base.reset.first().map(String::as_str),
        Some(base.recording_write()),
        "the reset's first point is not the recording of the reset: {:?}",
        base.reset
    );
    run_group(Group::Reset, &base.reset);
}
