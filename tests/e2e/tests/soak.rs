//! A 2-minute soak (the long one is `cargo xtask soak`): the cloud cut or restarted every
//! 15–30 s under forwarded GETs, an observation and idle TLS connections coming and going. The
//! device must sign up exactly once, come back after every cut, stay alive, and its descriptors
//! and memory must not keep growing.

use std::time::Duration;

use ocf_e2e::soak::{run, SoakOptions};
use ocf_e2e::{bin_dir, TempDir};

#[test]
fn two_minutes_of_cloud_cuts_and_load() {
    let dir = TempDir::new("soak");
    let opts = SoakOptions {
        duration: Duration::from_secs(120),
        dir: dir.path().join("run"),
        seed: 7,
        bin_dir: bin_dir(),
    };
    let report =
        run(&opts, &mut |line| eprintln!("soak: {line}")).unwrap_or_else(|e| panic!("{e}"));
    let summary = report.summary();
    eprintln!("{summary}");
    assert!(report.agent_alive, "{summary}");
    assert_eq!(report.sign_ups, 1, "{summary}");
    assert!(report.cuts >= 3, "{summary}");
    assert_eq!(report.lost, 0, "{summary}");
    assert_eq!(report.reconnects.len(), report.cuts, "{summary}");
    let last = report.samples.last().expect("samples");
    let first = report.samples.first().expect("samples");
    assert!(last.gets_ok > 100, "{summary}");
    assert!(last.notifications > 10, "{summary}");
    assert_eq!(report.observation_restarts, 0, "{summary}");
    // Bounded, not timed: idle connections come and go, so descriptors return to a level, and
    // two minutes of cuts leave the memory where it was give or take allocator slack.
    assert!(last.fds <= first.fds + 16, "descriptors grow: {summary}");
    assert!(last.rss_kib <= first.rss_kib + 4096, "RSS grows: {summary}");
}
