//! `ocf-agent --board PATH`: a board file with mistakes stops the agent before it serves
//! anything, with messages naming the file, the line and the field.

use std::process::Command;

use ocf_e2e::*;

#[test]
fn bad_board_file_is_refused_with_file_and_line() {
    let dir = TempDir::new("bad-board");
    let board = dir.path().join("mine.toml");
    std::fs::write(
        &board,
        r#"name = "mine"
device_type = "oic.d.sensor"

[[resource]]
href = "/led"
driver = "gpio-output"
chip = "gpiochip0"
line = 17

[[resource]]
href = "/relay"
driver = "gpio-output"
chip = "gpiochip0"
line = 17

[[resource]]
href = "/led"
driver = "sim-switch"

[[resource]]
href = "/mystery"
driver = "flux-capacitor"
"#,
    )
    .unwrap();
    let out = Command::new(binary("ocf-agent"))
        .args([
            "--board",
            board.to_str().unwrap(),
            "--state-dir",
            dir.path().join("state").to_str().unwrap(),
        ])
        .args([
            "--udp",
            "127.0.0.1:0",
            "--tcp",
            "127.0.0.1:0",
            "--multicast",
            "off",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the agent must refuse to start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ready"));
    // Each problem names file and line.
    let file = board.display().to_string();
    assert!(
        err.contains(&format!("{file}:14")),
        "line already used, at line 14:\n{err}"
    );
    assert!(err.contains("already used"), "{err}");
    assert!(
        err.contains(&format!("{file}:17")) && err.contains("/led"),
        "duplicate href at line 17:\n{err}"
    );
    assert!(
        err.contains(&format!("{file}:22")) && err.contains("flux-capacitor"),
        "unknown driver at line 22:\n{err}"
    );
    // Nothing was created for a device that never started.
    assert!(!dir.path().join("state").join("identity.json").exists());
}

#[test]
fn builtin_boards_load_and_unknown_names_are_refused() {
    let dir = TempDir::new("unknown-board");
    let out = Command::new(binary("ocf-agent"))
        .args([
            "--board",
            "commodore64",
            "--state-dir",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("commodore64"), "{err}");
}
