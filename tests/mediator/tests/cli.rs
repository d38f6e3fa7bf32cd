//! The `ocf-mediator` binary without a device: usage errors, its identity directory, and a
//! device that cannot be reached (the error names the step).

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs the Mediator with a hub token in its environment (`OCF_CLOUD_TOKEN`).
fn mediator(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ocf-mediator"))
        .args(args)
        .env("OCF_CLOUD_TOKEN", "dev.test-token")
        .output()
        .expect("run ocf-mediator")
}

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ocf-mediator-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn usage_errors_exit_2_and_never_echo_the_pin() {
    let id = temp("usage");
    let ids = id.display().to_string();
    let ep = format!("coaps+tcp://127.0.0.1:{}", closed_port());
    for (args, want) in [
        (
            vec![
                "onboard",
                "--pin",
                "98765x",
                "--cloud",
                "http://127.0.0.1:1",
                "--device",
                &ep,
            ],
            "8 decimal digits",
        ),
        (
            vec![
                "onboard",
                "--pin",
                "98765432",
                "--cloud",
                "http://127.0.0.1:1",
                "--device",
                "coap+tcp://127.0.0.1:5",
            ],
            "not a secure endpoint",
        ),
        (
            vec![
                "onboard",
                "--pin",
                "98765432",
                "--cloud",
                "ftp://127.0.0.1:1",
                "--device",
                &ep,
            ],
            "--cloud",
        ),
        (
            vec![
                "onboard",
                "--pin",
                "98765432",
                "--cloud",
                "https://127.0.0.1:1",
                "--cloud-ca",
                "/nonexistent/hub-ca.pem",
                "--device",
                &ep,
            ],
            "--cloud-ca /nonexistent/hub-ca.pem",
        ),
        (
            vec![
                "onboard",
                "--pin",
                "98765432",
                "--cloud",
                "http://127.0.0.1:1",
                "--di",
                "not-a-uuid",
            ],
            "not a UUID",
        ),
        (vec!["offboard", "--device", "coaps://127.0.0.1:5"], "DTLS"),
    ] {
        let mut all = vec!["--identity", &ids];
        all.extend(args.iter().copied());
        let out = mediator(&all);
        assert_eq!(out.status.code(), Some(2), "{all:?}: {}", text(&out));
        assert!(text(&out).contains(want), "{all:?}: {}", text(&out));
        assert!(
            !text(&out).contains("98765"),
            "the PIN was echoed: {}",
            text(&out)
        );
    }
    let out = mediator(&["onboard", "--cloud", "http://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // No token for the hub.
    let out = Command::new(env!("CARGO_BIN_EXE_ocf-mediator"))
        .args(["--identity", &ids, "onboard", "--pin", "98765432"])
        .args(["--cloud", "http://127.0.0.1:1", "--device", &ep])
        .env_remove("OCF_CLOUD_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--token-file"), "{}", text(&out));
    let _ = std::fs::remove_dir_all(id);
}

#[test]
fn identity_is_created_once_in_a_private_directory() {
    let id = temp("identity").join("sub");
    let ids = id.display().to_string();
    let first = mediator(&["--identity", &ids, "identity"]);
    assert!(first.status.success(), "{}", text(&first));
    let uuid = String::from_utf8_lossy(&first.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("uuid ").map(str::to_string))
        .unwrap();
    assert!(String::from_utf8_lossy(&first.stderr).contains("created the Mediator identity"));
    assert_eq!(
        std::fs::metadata(&id).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for f in ["mediator.key", "mediator.crt"] {
        assert_eq!(
            std::fs::metadata(id.join(f)).unwrap().permissions().mode() & 0o777,
            0o600,
            "{f}"
        );
    }
    let key = std::fs::read_to_string(id.join("mediator.key")).unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(!text(&first).contains("PRIVATE KEY"));
    let second = mediator(&["--identity", &ids, "identity"]);
    assert!(String::from_utf8_lossy(&second.stdout).contains(&format!("uuid {uuid}")));
    assert!(second.stderr.is_empty(), "{}", text(&second));
    let _ = std::fs::remove_dir_all(id.parent().unwrap());
}

#[test]
fn an_unreachable_device_fails_in_step_1() {
    let id = temp("unreachable");
    let ids = id.display().to_string();
    let ep = format!("coaps+tcp://127.0.0.1:{}", closed_port());
    let out = mediator(&[
        "--identity",
        &ids,
        "onboard",
        "--pin",
        "98765432",
        "--cloud",
        "http://127.0.0.1:1",
        "--device",
        &ep,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with(&format!("[1/9] connecting to {ep}")),
        "{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("step 1/9 (connecting): cannot connect to"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("98765432"));
    let out = mediator(&[
        "--identity",
        &ids,
        "offboard",
        "--device",
        &ep,
        "--timeout",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("step 1/3 (connecting)"),
        "{}",
        text(&out)
    );
    let _ = std::fs::remove_dir_all(id);
}

#[test]
fn a_server_that_is_not_tls_fails_the_handshake_in_step_1() {
    // Something that accepts and closes at once (a plain TCP service, not coaps+tcp).
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            drop(s);
        }
    });
    let id = temp("not-tls");
    let ids = id.display().to_string();
    let ep = format!("coaps+tcp://127.0.0.1:{port}");
    let out = mediator(&["--identity", &ids, "get", "--device", &ep, "/oic/res"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TLS handshake"),
        "{}",
        text(&out)
    );
    let _ = std::fs::remove_dir_all(id);
}
