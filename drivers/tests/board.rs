//! The board-file parser on every shipped board and on broken files: each problem kind, with
//! the file, line and column in the message.

use std::path::Path;
use std::time::Duration;

use ocf_drivers::board::{
    Bias, Board, BoardError, DriverSpec, GpioChip, I2cBus, ProblemKind, PwmChip, BUILTIN,
};
use ocf_drivers::kind::ResourceKind;
use ocf_drivers::lm75::Model;

fn parse(text: &str) -> Result<Board, BoardError> {
    Board::from_str("test.toml", text)
}

/// Parses `text`, expects exactly one problem of `kind`, and returns its rendered line.
fn one_problem(text: &str, kind: ProblemKind) -> String {
    let e = parse(text).expect_err("should be refused");
    assert_eq!(e.problems.len(), 1, "{e}");
    assert_eq!(e.problems[0].kind, kind, "{e}");
    e.to_string()
}

#[test]
fn every_shipped_board_parses() {
    for (name, _) in BUILTIN {
        let b = Board::builtin(name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.name, *name);
        assert_eq!(b.file, format!("board/{name}.toml"));
        assert!(b.platform.mnmn.is_some(), "{name}: mnmn for /oic/p");
        assert!(!b.resources.is_empty());
        // The same files from disk, as `--board PATH` loads them.
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../board")
            .join(format!("{name}.toml"));
        let from_disk = Board::from_path(&path).unwrap();
        assert_eq!(from_disk.resources, b.resources);
    }
}

#[test]
fn sim_board_matches_the_foundation_issue() {
    let b = Board::load("sim").unwrap();
    let kinds: Vec<_> = b
        .resources
        .iter()
        .map(|r| (r.href.as_str(), r.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("/temperature", ResourceKind::Temperature),
            ("/humidity", ResourceKind::Humidity),
            ("/switch", ResourceKind::Switch),
            ("/brightness", ResourceKind::Brightness),
            ("/contact", ResourceKind::Contact),
        ]
    );
    assert!(b
        .resources
        .iter()
        .all(|r| r.driver.is_simulated() && r.observable));
    let t = b.resource("/temperature").unwrap();
    let s = t.sampling.unwrap();
    assert_eq!(s.period, Duration::from_secs(1));
    assert_eq!(s.threshold, 0.05);
    assert_eq!(t.policy_bitmask(), 3);
    assert!(b.resource("/switch").unwrap().sampling.is_none());
}

#[test]
fn rpi_boards_describe_the_reference_wiring() {
    let rpi4 = Board::builtin("rpi4").unwrap();
    let rpi5 = Board::builtin("rpi5").unwrap();
    for b in [&rpi4, &rpi5] {
        let hrefs: Vec<_> = b.resources.iter().map(|r| r.href.as_str()).collect();
        assert_eq!(
            hrefs,
            [
                "/environment/temperature",
                "/environment/humidity",
                "/environment/pressure",
                "/temperature",
                "/relay",
                "/led",
                "/light",
                "/button"
            ]
        );
        let line_of = |href: &str| match &b.resource(href).unwrap().driver {
            DriverSpec::GpioOutput { line, .. } | DriverSpec::GpioInput { line, .. } => *line,
            d => panic!("{d:?}"),
        };
        assert_eq!(
            (line_of("/relay"), line_of("/led"), line_of("/button")),
            (17, 27, 22)
        );
        match &b.resource("/button").unwrap().driver {
            DriverSpec::GpioInput { bias, debounce, .. } => {
                assert_eq!(*bias, Bias::PullUp);
                assert_eq!(*debounce, Duration::from_millis(20));
            }
            d => panic!("{d:?}"),
        }
    }
    match &rpi4.resource("/relay").unwrap().driver {
        DriverSpec::GpioOutput {
            chip, active_low, ..
        } => {
            assert_eq!(*chip, GpioChip::Label("pinctrl-bcm2711".into()));
            assert!(*active_low);
        }
        d => panic!("{d:?}"),
    }
    match &rpi5.resource("/relay").unwrap().driver {
        DriverSpec::GpioOutput { chip, .. } => {
            assert_eq!(*chip, GpioChip::Label("pinctrl-rp1".into()))
        }
        d => panic!("{d:?}"),
    }
    // Hardware PWM through rppal on both Pis: rppal's chip for the Pi 4, RP1's PWM0 by device
    // on the Pi 5 (rppal 0.22's pwmchip2 is wrong from kernel 6.6.45 on).
    match &rpi4.resource("/light").unwrap().driver {
        DriverSpec::PwmRppal {
            chip,
            channel,
            frequency_hz,
            initial,
        } => {
            assert_eq!(*chip, None);
            assert_eq!((*channel, *frequency_hz, *initial), (0, 1000.0, 0));
        }
        d => panic!("{d:?}"),
    }
    match &rpi5.resource("/light").unwrap().driver {
        DriverSpec::PwmRppal {
            chip,
            channel,
            frequency_hz,
            ..
        } => {
            assert_eq!(*chip, Some(PwmChip::Device("1f00098000.pwm".into())));
            assert_eq!((*channel, *frequency_hz), (2, 1000.0));
        }
        d => panic!("{d:?}"),
    }
    match &rpi4.resource("/temperature").unwrap().driver {
        DriverSpec::Lm75 {
            model,
            bus,
            address,
            ..
        } => {
            assert_eq!(
                (*model, bus, *address),
                (Model::Tmp105, &I2cBus::Number(1), 0x48)
            );
        }
        d => panic!("{d:?}"),
    }
}

#[test]
fn qemu_board_has_the_tmp105_on_i2c_1() {
    let b = Board::load("qemu-raspi3b").unwrap();
    match &b.resource("/temperature").unwrap().driver {
        DriverSpec::Lm75 {
            model,
            bus,
            address,
            smbus,
            ..
        } => {
            assert_eq!(*model, Model::Tmp105);
            assert_eq!(*bus, I2cBus::Number(1));
            assert_eq!(*address, 0x48);
            assert!(!smbus);
        }
        d => panic!("{d:?}"),
    }
    assert!(matches!(
        b.resource("/relay").unwrap().driver,
        DriverSpec::GpioOutput {
            chip: GpioChip::Number(0),
            line: 17,
            ..
        }
    ));
}

#[test]
fn load_picks_builtin_or_path() {
    assert_eq!(Board::load("rpi5").unwrap().file, "board/rpi5.toml");
    let e = Board::load("rpi9").unwrap_err();
    assert!(e.has(ProblemKind::UnknownBoard));
    assert_eq!(
        e.to_string(),
        "board/rpi9.toml: no built-in board \"rpi9\" (built-in: sim, rpi4, rpi5, qemu-raspi3b; or give a path to a .toml file)"
    );
    let e = Board::load("/nonexistent/board.toml").unwrap_err();
    assert!(e.has(ProblemKind::Io));
    assert!(
        e.to_string()
            .starts_with("/nonexistent/board.toml: cannot read: No such file"),
        "{e}"
    );
}

#[test]
fn line_used_twice_from_a_file() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/boards/duplicate-line.toml");
    let e = Board::load(path.to_str().unwrap()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}:14:8: resource \"/relay\": GPIO line 17 on gpiochip0 is already used by \"/led\" (line 8)",
            path.display()
        )
    );
    assert!(e.has(ProblemKind::LineInUse));
}

#[test]
fn unknown_driver() {
    let msg = one_problem(
        "name = \"x\"\n\n[[resource]]\nhref = \"/t\"\ndriver = \"lm76\"\nbus = 1\naddress = 0x48\n",
        ProblemKind::UnknownDriver,
    );
    assert!(
        msg.starts_with(
            "test.toml:5:10: resource \"/t\": unknown driver \"lm76\" (known: lm75, tmp75, tmp105,"
        ),
        "{msg}"
    );
}

#[test]
fn missing_bus_points_at_the_resource() {
    let msg = one_problem(
        "name = \"x\"\n\n[[resource]]\nhref = \"/t\"\ndriver = \"tmp105\"\naddress = 0x48\n",
        ProblemKind::MissingField,
    );
    assert!(
        msg.starts_with("test.toml:3:1: resource \"/t\": driver \"tmp105\" needs `bus`"),
        "{msg}"
    );
}

#[test]
fn missing_quantity_chip_line_channel() {
    let e = parse(concat!(
        "name = \"x\"\n",
        "[[resource]]\nhref = \"/a\"\ndriver = \"bme280\"\nbus = 1\naddress = 0x76\n",
        "[[resource]]\nhref = \"/b\"\ndriver = \"gpio-input\"\n",
        "[[resource]]\nhref = \"/c\"\ndriver = \"pwm-sysfs\"\npwm_chip = 0\n",
    ))
    .unwrap_err();
    let text = e.to_string();
    assert!(
        e.problems
            .iter()
            .all(|p| p.kind == ProblemKind::MissingField),
        "{text}"
    );
    assert!(
        text.contains("test.toml:2:1: resource \"/a\": driver \"bme280\" needs `quantity`"),
        "{text}"
    );
    assert!(
        text.contains("test.toml:7:1: resource \"/b\": driver \"gpio-input\" needs `chip`"),
        "{text}"
    );
    assert!(
        text.contains("test.toml:7:1: resource \"/b\": driver \"gpio-input\" needs `line`"),
        "{text}"
    );
    assert!(
        text.contains("test.toml:10:1: resource \"/c\": driver \"pwm-sysfs\" needs `channel`"),
        "{text}"
    );
}

#[test]
fn duplicate_href() {
    let msg = one_problem(
        concat!(
            "name = \"x\"\n",
            "[[resource]]\nhref = \"/s\"\ndriver = \"sim-switch\"\n",
            "[[resource]]\nhref = \"/s\"\ndriver = \"sim-brightness\"\n",
        ),
        ProblemKind::DuplicateHref,
    );
    assert_eq!(
        msg,
        "test.toml:6:8: resource \"/s\": href already used by the resource on line 3"
    );
}

#[test]
fn bad_addresses() {
    for (addr, shown) in [
        ("0x78", "0x78"),
        ("2", "0x2"),
        ("300", "0x12c"),
        ("-1", "0x"),
    ] {
        let msg = one_problem(
            &format!("name = \"x\"\n[[resource]]\nhref = \"/t\"\ndriver = \"lm75\"\nbus = 1\naddress = {addr}\n"),
            ProblemKind::BadAddress,
        );
        assert!(
            msg.starts_with("test.toml:6:11: resource \"/t\": `address` "),
            "{msg}"
        );
        assert!(msg.contains(shown), "{msg}");
        assert!(
            msg.ends_with("is not a 7-bit I2C device address (0x03-0x77)"),
            "{msg}"
        );
    }
}

#[test]
fn i2c_address_conflicts_but_bme280_channels_share() {
    let ok = parse(concat!(
        "name = \"x\"\n",
        "[[resource]]\nhref = \"/t\"\ndriver = \"bme280\"\nquantity = \"temperature\"\nbus = 1\naddress = 0x76\n",
        "[[resource]]\nhref = \"/h\"\ndriver = \"bme280\"\nquantity = \"humidity\"\nbus = \"/dev/i2c-1\"\naddress = 0x76\n",
    ));
    assert!(ok.is_ok(), "{ok:?}");
    let msg = one_problem(
        concat!(
            "name = \"x\"\n",
            "[[resource]]\nhref = \"/t\"\ndriver = \"bme280\"\nquantity = \"temperature\"\nbus = 1\naddress = 0x48\n",
            "[[resource]]\nhref = \"/u\"\ndriver = \"lm75\"\nbus = \"i2c-1\"\naddress = 0x48\n",
        ),
        ProblemKind::AddressInUse,
    );
    assert_eq!(
        msg,
        "test.toml:12:11: resource \"/u\": I2C address 0x48 on /dev/i2c-1 is already used by \"/t\" (line 7)"
    );
}

#[test]
fn syntax_errors_and_unknown_fields_have_locations() {
    let e = parse(
        "name = \"x\"\n[[resource]]\nhref = \"/t\"\ndriver = \"lm75\"\nbus = 1\nadress = 0x48\n",
    )
    .unwrap_err();
    assert_eq!(e.problems[0].kind, ProblemKind::Syntax);
    let msg = e.to_string();
    assert!(
        msg.starts_with("test.toml:6:1: unknown field `adress`"),
        "{msg}"
    );

    let e = parse("name = \"x\"\n[[resource]]\nhref = \"/t\"\ndriver = lm75\n").unwrap_err();
    assert!(e.to_string().starts_with("test.toml:4:"), "{e}");
    assert_eq!(e.problems[0].kind, ProblemKind::Syntax);

    let e = parse("name = \"x\"\n[[resource]]\nhref = \"/t\"\ndriver = \"gpio-output\"\nchip = 0\nline = \"17\"\n")
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("test.toml:6:8: invalid type: string \"17\", expected i64"),
        "{e}"
    );

    let e = parse("[[resource]]\nhref = \"/t\"\ndriver = \"sim-switch\"\n").unwrap_err();
    assert!(e.to_string().contains("missing field `name`"), "{e}");
}

#[test]
fn unknown_fields_at_every_level() {
    assert_eq!(
        one_problem("name = \"x\"\nmodel = \"y\"\n", ProblemKind::Syntax),
        "test.toml:2:1: unknown field `model`, expected one of `name`, `description`, \
         `device_type`, `device_name`, `platform`, `resource`"
    );
    assert_eq!(
        one_problem(
            "name = \"x\"\n[platform]\nmnmn = \"a\"\nmnfr = \"b\"\n",
            ProblemKind::Syntax
        ),
        "test.toml:4:1: unknown field `mnfr`, expected one of `mnmn`, `mnml`, `mnmo`, `mndt`, \
         `mnpv`, `mnos`, `mnhw`, `mnfv`, `mnsl`, `vid`"
    );
    // A sub-table of a resource is an unknown field too, pointed at by its header.
    let msg = one_problem(
        "name = \"x\"\n[[resource]]\nhref = \"/a\"\ndriver = \"sim-switch\"\n[resource.extra]\n",
        ProblemKind::Syntax,
    );
    assert!(
        msg.starts_with("test.toml:5:11: unknown field `extra`, expected one of `href`, `driver`,"),
        "{msg}"
    );
}

#[test]
fn wrong_types_are_syntax_errors_at_the_value() {
    let cases = [
        ("name = 5\n", "test.toml:1:8: invalid type: integer `5`, expected a string"),
        (
            "name = \"x\"\n[[resource]]\nhref = 5\ndriver = \"sim-switch\"\n",
            "test.toml:3:8: invalid type: integer `5`, expected a string",
        ),
        (
            "name = \"x\"\n[[resource]]\nhref = \"/a\"\ndriver = true\n",
            "test.toml:4:10: invalid type: boolean `true`, expected a string",
        ),
        (
            "name = \"x\"\n[platform]\nmnhw = 2711\n",
            "test.toml:3:8: invalid type: integer `2711`, expected a string",
        ),
        (
            "name = \"x\"\nplatform = \"p\"\n",
            "test.toml:2:12: invalid type: string \"p\", expected struct Platform",
        ),
        (
            "name = \"x\"\nresource = 5\n",
            "test.toml:2:12: invalid type: integer `5`, expected a sequence",
        ),
        (
            "name = \"x\"\n[resource]\nhref = \"/a\"\n",
            "test.toml:2:1: invalid type: map, expected a sequence",
        ),
        (
            "name = \"x\"\nresource = [1]\n",
            "test.toml:2:13: invalid type: integer `1`, expected struct RawResource",
        ),
        (
            "name = \"x\"\n[[resource]]\nhref = \"/a\"\ndriver = \"sim-switch\"\nobservable = \"yes\"\n",
            "test.toml:5:14: invalid type: string \"yes\", expected a boolean",
        ),
        (
            "name = \"x\"\n[[resource]]\nhref = \"/a\"\ndriver = \"lm75\"\nbus = 1\naddress = 1e2\n",
            "test.toml:6:11: invalid type: floating point `100.0`, expected i64",
        ),
        (
            "name = \"x\"\n[[resource]]\nhref = \"/a\"\ndriver = \"lm75\"\nbus = 1\naddress = 9223372036854775808\n",
            "test.toml:6:11: invalid value: integer `9223372036854775808`, expected i64",
        ),
        (
            "name = \"x\"\n[[resource]]\nhref = \"/a\"\ndriver = \"lm75\"\nbus = [1, 0x8000000000000000]\naddress = 0x48\n",
            "test.toml:5:11: invalid value: integer `0x8000000000000000`, expected i64",
        ),
        (
            "name = \"x\"\n[[resource]]\nhref = \"/a\"\ndriver = \"sim-temperature\"\ninitial = 1e999\n",
            "test.toml:5:11: floating-point number overflowed",
        ),
        (
            "name = \"x\"\n[[resource]]\nhref = \"/a\"\ndriver = \"gpio-input\"\nchip = 0\nline = 1\nbias = 1979-05-27\n",
            "test.toml:7:8: invalid type: datetime `1979-05-27`, expected a string",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(one_problem(text, ProblemKind::Syntax), expected, "{text}");
    }
}

#[test]
fn first_problem_in_key_order_wins() {
    // Like serde did: keys in sorted order, the first bad one reported; missing fields last.
    let msg = one_problem(
        "[[resource]]\nhref = \"/a\"\ndriver = \"sim-switch\"\nzzz = 1\nline = \"x\"\n",
        ProblemKind::Syntax,
    );
    assert_eq!(
        msg,
        "test.toml:5:8: invalid type: string \"x\", expected i64"
    );
}

#[test]
fn missing_required_fields() {
    assert_eq!(
        one_problem(
            "name = \"x\"\n[[resource]]\ndriver = \"sim-switch\"\n",
            ProblemKind::Syntax
        ),
        "test.toml:2:1: missing field `href`"
    );
    assert_eq!(
        one_problem(
            "name = \"x\"\n[[resource]]\nhref = \"/a\"\n",
            ProblemKind::Syntax
        ),
        "test.toml:2:1: missing field `driver`"
    );
    assert_eq!(
        one_problem(
            "name = \"x\"\nresource = [{ href = \"/a\", driver = \"sim-switch\" }, { href = \"/b\" }]\n",
            ProblemKind::Syntax
        ),
        "test.toml:2:53: missing field `driver`"
    );
    assert_eq!(
        one_problem("\n", ProblemKind::Syntax),
        "test.toml:1:1: missing field `name`"
    );
}

#[test]
fn duplicate_keys() {
    assert_eq!(
        one_problem("name = \"x\"\nname = \"y\"\n", ProblemKind::Syntax),
        "test.toml:2:1: duplicate key"
    );
    assert_eq!(
        one_problem(
            "name = \"x\"\n[[resource]]\nhref = \"/a\"\ndriver = \"sim-switch\"\n\"href\" = \"/b\"\n",
            ProblemKind::Syntax
        ),
        "test.toml:5:1: duplicate key"
    );
}

#[test]
fn every_field_read_by_hand() {
    let b = parse(concat!(
        "name = \"x\"\ndescription = \"d\"\ndevice_name = \"n\"\ndevice_type = \"oic.d.light\"\n",
        "platform = { mnmn = \"a\", mnml = \"b\", mnmo = \"c\", mndt = \"d\", mnpv = \"e\", ",
        "mnos = \"f\", mnhw = \"g\", mnfv = \"h\", mnsl = \"i\", vid = \"j\" }\n",
        "[[resource]]\nhref = \"/c\"\ndriver = \"sim-contact\"\nname = \"N\"\nobservable = false\n",
        "discoverable = false\ninitial = true\nperiod = \"3s\"\n",
        "[[resource]]\nhref = \"/t\"\ndriver = \"sim-temperature\"\nmin = 1_000\nmax = 2_000.5\n",
        "initial = 1e3\nstep = +1\nseed = -5\nthreshold = 0b11\nperiod = 0o7\n",
    ))
    .unwrap();
    assert_eq!(b.description.as_deref(), Some("d"));
    assert_eq!(b.device_name.as_deref(), Some("n"));
    assert_eq!(b.device_type, "oic.d.light");
    let p = &b.platform;
    let all = [
        &p.mnmn, &p.mnml, &p.mnmo, &p.mndt, &p.mnpv, &p.mnos, &p.mnhw, &p.mnfv, &p.mnsl, &p.vid,
    ];
    let all: Vec<_> = all.iter().map(|v| v.as_deref().unwrap()).collect();
    assert_eq!(all, ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]);
    let c = b.resource("/c").unwrap();
    assert_eq!(c.name.as_deref(), Some("N"));
    assert_eq!((c.observable, c.discoverable), (false, false));
    assert_eq!(c.driver, DriverSpec::SimContact { initial: true });
    assert_eq!(c.sampling.unwrap().period, Duration::from_secs(3));
    let t = b.resource("/t").unwrap();
    let s = t.sampling.unwrap();
    assert_eq!((s.period, s.threshold), (Duration::from_secs(7), 3.0));
    let DriverSpec::SimSensor(sim) = &t.driver else {
        panic!("{:?}", t.driver)
    };
    assert_eq!(
        (sim.min, sim.max, sim.initial, sim.step, sim.seed),
        (1000.0, 2000.5, 1000.0, 1.0, 5)
    );
}

#[test]
fn fields_that_do_not_apply_and_bad_values() {
    let msg = one_problem(
        "name = \"x\"\n[[resource]]\nhref = \"/r\"\ndriver = \"gpio-output\"\nchip = 0\nline = 17\nperiod = \"1s\"\n",
        ProblemKind::NotApplicable,
    );
    assert_eq!(
        msg,
        "test.toml:7:10: resource \"/r\": field `period` does not apply to driver \"gpio-output\""
    );
    let e = parse(concat!(
        "name = \"x\"\n",
        "[[resource]]\nhref = \"/b\"\ndriver = \"gpio-input\"\nchip = { label = \"pinctrl-rp1\" }\nline = 22\nbias = \"up\"\ndebounce = \"2s\"\n",
        "[[resource]]\nhref = \"/t\"\ndriver = \"sim-temperature\"\nperiod = \"1ms\"\nthreshold = -1\n",
        "[[resource]]\nhref = \"/oic/d\"\ndriver = \"sim-switch\"\ninitial = 1\n",
        "[[resource]]\nhref = \"/l\"\ndriver = \"pwm-sysfs\"\npwm_chip = { dev = \"x\" }\nchannel = 0\ninitial = 101\n",
    ))
    .unwrap_err();
    let text = e.to_string();
    assert!(
        e.problems.iter().all(|p| p.kind == ProblemKind::BadValue),
        "{text}"
    );
    for expected in [
        "test.toml:7:8: resource \"/b\": `bias` \"up\" is not",
        "test.toml:8:12: resource \"/b\": `debounce` \"2s\" is not a duration",
        "test.toml:12:10: resource \"/t\": `period` \"1ms\" is not a duration",
        "test.toml:13:13: resource \"/t\": `threshold` must be a number",
        "test.toml:15:8: resource \"/oic/d\": hrefs under /oic/ are reserved",
        "test.toml:17:11: resource \"/oic/d\": `initial` must be true or false, not 1",
        "test.toml:21:12: resource \"/l\": `pwm_chip` a table is not",
        "test.toml:23:11: resource \"/l\": `initial` must be an integer 0-100, not 101",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    assert_eq!(e.problems.len(), 8, "{text}");
}

#[test]
fn chips_and_buses_in_every_spelling() {
    let b = parse(concat!(
        "name = \"x\"\n",
        "[[resource]]\nhref = \"/a\"\ndriver = \"gpio-output\"\nchip = \"/dev/gpiochip4\"\nline = 1\n",
        "[[resource]]\nhref = \"/b\"\ndriver = \"gpio-output\"\nchip = { path = \"/dev/gpiochip9\" }\nline = 1\n",
        "[[resource]]\nhref = \"/c\"\ndriver = \"lm75\"\nbus = { name = \"i2c-stub\" }\naddress = 0x48\nsmbus = true\n",
        "[[resource]]\nhref = \"/d\"\ndriver = \"tmp75\"\nbus = \"/dev/i2c-7\"\naddress = 0x49\nresolution = 10\n",
    ))
    .unwrap();
    assert!(matches!(
        b.resources[0].driver,
        DriverSpec::GpioOutput {
            chip: GpioChip::Number(4),
            ..
        }
    ));
    assert!(
        matches!(&b.resources[1].driver, DriverSpec::GpioOutput { chip: GpioChip::Path(p), .. } if p == Path::new("/dev/gpiochip9"))
    );
    assert!(
        matches!(&b.resources[2].driver, DriverSpec::Lm75 { bus: I2cBus::Name(n), smbus: true, .. } if n == "i2c-stub")
    );
    assert!(matches!(
        &b.resources[3].driver,
        DriverSpec::Lm75 {
            bus: I2cBus::Number(7),
            resolution: Some(_),
            ..
        }
    ));
    // Same line on the same chip spelled differently is still a conflict.
    let msg = one_problem(
        concat!(
            "name = \"x\"\n",
            "[[resource]]\nhref = \"/a\"\ndriver = \"gpio-output\"\nchip = \"/dev/gpiochip4\"\nline = 1\n",
            "[[resource]]\nhref = \"/b\"\ndriver = \"gpio-input\"\nchip = 4\nline = 1\n",
        ),
        ProblemKind::LineInUse,
    );
    assert!(
        msg.contains("GPIO line 1 on gpiochip4 is already used by \"/a\" (line 6)"),
        "{msg}"
    );
}

#[test]
fn pwm_rppal_channel_and_optional_chip() {
    let light = |fields: &str| {
        format!("name = \"r\"\n[[resource]]\nhref = \"/light\"\ndriver = \"pwm-rppal\"\n{fields}")
    };
    let b = parse(&light("channel = 3\npwm_chip = 0\n")).unwrap();
    match &b.resources[0].driver {
        DriverSpec::PwmRppal { chip, channel, .. } => {
            assert_eq!((chip, *channel), (&Some(PwmChip::Number(0)), 3))
        }
        d => panic!("{d:?}"),
    }
    // rppal has channels Pwm0-Pwm3 only.
    let e = one_problem(&light("channel = 4\n"), ProblemKind::BadValue);
    assert!(
        e.starts_with(
            "test.toml:5:11: resource \"/light\": `channel` 4 is not a PWM channel (0-3)"
        ),
        "{e}"
    );
    let e = one_problem(
        &light("channel = 0\npwm_chip = \"pwm0\"\n"),
        ProblemKind::BadValue,
    );
    assert!(
        e.contains("`pwm_chip` \"pwm0\" is not a chip number"),
        "{e}"
    );
}
