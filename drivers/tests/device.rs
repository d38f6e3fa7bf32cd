//! Building live resources from boards: the simulated board end to end on a virtual clock,
//! sysfs PWM against a temporary directory, and clear errors for hardware that is not there.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ocf::resource::{
    Device as Tree, DeviceInfo, Interface, PlatformInfo, Props, Resource, ResourceError, Value,
};
use ocf_drivers::board::Board;
use ocf_drivers::device::{Device, HardwareEnv, LiveDriver};
use ocf_drivers::sampler::LogLevel;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ocf-drivers-it-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn body(key: &str, v: Value) -> Props {
    [(key.to_owned(), v)].into()
}

/// Runs every due sensor task at `now`; returns the hrefs that asked for a notification.
fn tick(device: &mut Device, now: Instant) -> Vec<String> {
    let mut notified = Vec::new();
    for r in &mut device.resources {
        if let LiveDriver::Sensor(task) = &mut r.driver {
            if let Some(report) = task.handle_timeout(now) {
                if report.notify {
                    notified.push(r.href.clone());
                }
            }
        }
    }
    notified
}

#[test]
fn sim_board_end_to_end() {
    let board = Board::builtin("sim").unwrap();
    let t0 = Instant::now();
    let mut device = Device::build(&board, &HardwareEnv::default(), t0).unwrap();

    let temp = device.resource("/temperature").unwrap();
    assert_eq!(temp.resource_types, ["oic.r.temperature"]);
    assert_eq!(temp.interfaces, [Interface::Sensor, Interface::Baseline]);
    assert_eq!(temp.policy.bm(), 3);
    assert!(temp.sim.is_some());
    let switch = device.resource("/switch").unwrap();
    assert_eq!(
        switch.interfaces,
        [Interface::Actuator, Interface::Baseline]
    );
    assert!(matches!(switch.driver, LiveDriver::Actuator));

    // Before the first sample: 5.03.
    let r = device.resource_mut("/temperature").unwrap();
    assert!(matches!(
        r.backend.retrieve(),
        Err(ResourceError::Unavailable(_))
    ));

    // All sensors are due at t0 and notify their first reading.
    let first = tick(&mut device, t0);
    assert_eq!(first, ["/temperature", "/humidity", "/contact"]);

    // Over a simulated minute the drifting temperature notifies repeatedly, not every second.
    let mut temperature_notifications = 0;
    for s in 1..=60 {
        let n = tick(&mut device, t0 + Duration::from_secs(s));
        temperature_notifications += n.iter().filter(|h| *h == "/temperature").count();
    }
    assert!(
        temperature_notifications >= 2,
        "{temperature_notifications}"
    );
    let t = device.resource_mut("/temperature").unwrap();
    let props = t.backend.retrieve().unwrap();
    assert_eq!(props["units"], Value::Text("C".into()));
    let Value::Float(v) = props["temperature"] else {
        panic!("{props:?}")
    };
    assert!((15.0..=30.0).contains(&v));

    // Actuators: POST applies, GET reads back.
    let sw = device.resource_mut("/switch").unwrap();
    assert_eq!(
        sw.backend.retrieve().unwrap(),
        body("value", Value::Bool(false))
    );
    sw.backend
        .update(&body("value", Value::Bool(true)))
        .unwrap();
    assert_eq!(
        sw.backend.retrieve().unwrap(),
        body("value", Value::Bool(true))
    );
    assert_eq!(sw.sim.as_ref().unwrap().value(), 1.0);
    assert!(matches!(
        sw.backend.update(&body("value", Value::Text("on".into()))),
        Err(ResourceError::BadRequest(_))
    ));
    let light = device.resource_mut("/brightness").unwrap();
    assert_eq!(
        light.backend.retrieve().unwrap(),
        body("brightness", Value::Integer(50.into()))
    );

    // The contact changes through its control and is picked up at the next sample.
    let contact = device.resource("/contact").unwrap();
    contact.sim.as_ref().unwrap().set_value(1.0);
    let t61 = t0 + Duration::from_secs(61);
    assert!(tick(&mut device, t61).contains(&"/contact".to_owned()));
    let c = device.resource_mut("/contact").unwrap();
    assert_eq!(
        c.backend.retrieve().unwrap(),
        body("value", Value::Bool(true))
    );

    // Fault injection: 5.03 with the diagnostic, one warning, back-off, recovery.
    let h = device.resource_mut("/humidity").unwrap();
    h.sim.as_ref().unwrap().set_fault(Some("sensor unplugged"));
    let LiveDriver::Sensor(task) = &mut h.driver else {
        panic!()
    };
    let due = task.poll_timeout();
    let report = task.handle_timeout(due).unwrap();
    assert!(report.became_unavailable);
    assert_eq!(report.log.unwrap().level, LogLevel::Warn);
    assert_eq!(
        h.backend.retrieve(),
        Err(ResourceError::Unavailable(
            "simulated oic.r.humidity: sensor unplugged".into()
        ))
    );
    let LiveDriver::Sensor(task) = &mut h.driver else {
        panic!()
    };
    let retry = task.poll_timeout();
    assert_eq!(retry - due, Duration::from_secs(1));
    assert_eq!(task.handle_timeout(retry).unwrap().log, None);
    h.sim.as_ref().unwrap().set_fault(None);
    let LiveDriver::Sensor(task) = &mut h.driver else {
        panic!()
    };
    let report = task.handle_timeout(task.poll_timeout()).unwrap();
    assert!(report.notify);
    assert_eq!(report.log.unwrap().level, LogLevel::Info);
    assert!(h.backend.retrieve().is_ok());
}

#[test]
fn sysfs_pwm_board_in_a_temp_dir() {
    let root = TempDir::new("pwm");
    let chan = root.0.join("pwmchip0/pwm1");
    fs::create_dir_all(&chan).unwrap();
    for f in ["period", "duty_cycle", "enable"] {
        fs::write(chan.join(f), "0\n").unwrap();
    }
    let board = Board::from_str(
        "pwm.toml",
        "name = \"pwm\"\n[[resource]]\nhref = \"/light\"\ndriver = \"pwm-sysfs\"\npwm_chip = 0\nchannel = 1\nfrequency = 500\ninitial = 25\n",
    )
    .unwrap();
    let env = HardwareEnv {
        sysfs_pwm: root.0.clone(),
        ..HardwareEnv::default()
    };
    let mut device = Device::build(&board, &env, Instant::now()).unwrap();
    let read = |f: &str| fs::read_to_string(chan.join(f)).unwrap().trim().to_owned();
    assert_eq!(read("period"), "2000000");
    assert_eq!(read("duty_cycle"), "500000");
    assert_eq!(read("enable"), "1");
    let light = device.resource_mut("/light").unwrap();
    assert_eq!(light.resource_types, ["oic.r.light.brightness"]);
    light
        .backend
        .update(&body("brightness", Value::Integer(100.into())))
        .unwrap();
    assert_eq!(read("duty_cycle"), "2000000");
    assert_eq!(
        light.backend.retrieve().unwrap(),
        body("brightness", Value::Integer(100.into()))
    );
}

#[test]
fn missing_hardware_is_a_clear_build_error() {
    let env = HardwareEnv {
        sysfs_pwm: PathBuf::from("/nonexistent/pwm"),
        sysfs_i2c: PathBuf::from("/nonexistent/i2c"),
    };
    let now = Instant::now();

    if !Path::new("/dev/i2c-1").exists() {
        let e = Device::build(&Board::builtin("rpi4").unwrap(), &env, now).unwrap_err();
        assert_eq!(e.href, "/environment/temperature");
        assert!(
            e.to_string().starts_with(
                "board/rpi4.toml:15: resource \"/environment/temperature\": cannot open /dev/i2c-1: No such file"
            ),
            "{e}"
        );
    }
    let e = Device::build(&Board::builtin("rpi5").unwrap(), &env, now).unwrap_err();
    assert!(
        e.to_string()
            .contains("cannot list I2C adapters in /nonexistent/i2c"),
        "{e}"
    );

    let gpio = Board::from_str(
        "g.toml",
        "name = \"g\"\n[[resource]]\nhref = \"/relay\"\ndriver = \"gpio-output\"\nchip = 99\nline = 17\n",
    )
    .unwrap();
    let e = Device::build(&gpio, &env, now).unwrap_err();
    assert!(
        e.to_string().starts_with(
            "g.toml:2: resource \"/relay\": cannot request /dev/gpiochip99 line 17 as output"
        ),
        "{e}"
    );

    let pwm = Board::from_str(
        "p.toml",
        "name = \"p\"\n[[resource]]\nhref = \"/light\"\ndriver = \"pwm-sysfs\"\npwm_chip = { device = \"fe20c000.pwm\" }\nchannel = 0\n",
    )
    .unwrap();
    let e = Device::build(&pwm, &env, now).unwrap_err();
    assert!(e.to_string().contains("read /nonexistent/pwm"), "{e}");

    // An agent built without rppal says so, before it looks for any hardware (here the chip
    // would not be found either).
    let rppal = Board::from_str(
        "r.toml",
        "name = \"r\"\n[[resource]]\nhref = \"/light\"\ndriver = \"pwm-rppal\"\npwm_chip = { device = \"1f00098000.pwm\" }\nchannel = 2\n",
    )
    .unwrap();
    let e = Device::build(&rppal, &env, now).unwrap_err();
    if cfg!(feature = "rppal") {
        assert!(
            e.to_string()
                .starts_with("r.toml:2: resource \"/light\": read /nonexistent/pwm"),
            "{e}"
        );
    } else {
        assert!(
            e.to_string().starts_with(
                "r.toml:2: resource \"/light\": driver \"pwm-rppal\" needs the agent built with the `rppal` feature"
            ),
            "{e}"
        );
        // ... and so do the Pi boards that use it, at the resource that needs it.
        let mut rpi4 = Board::builtin("rpi4").unwrap();
        rpi4.resources.retain(|r| r.href == "/light");
        let e = Device::build(&rpi4, &env, now).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("board/rpi4.toml:76: resource \"/light\": driver \"pwm-rppal\" needs"),
            "{e}"
        );
    }
}

#[test]
fn live_resources_go_into_the_ocf_resource_tree() {
    let board = Board::builtin("sim").unwrap();
    let extra = board.platform.extra_props();
    assert_eq!(extra["mnmo"], Value::Text("Simulated board".into()));
    assert!(!extra.contains_key("mnmn"));
    let mut tree = Tree::new(
        DeviceInfo {
            di: "6a4f1b2c-0000-4000-8000-000000000001".into(),
            piid: "6a4f1b2c-0000-4000-8000-000000000002".into(),
            name: board.device_name.clone().unwrap_or_default(),
            device_type: board.device_type.clone(),
            spec_version: "ocf.2.0.2".into(),
            data_model_version: "ocf.res.1.0.0".into(),
            software_version: "0.1.0".into(),
        },
        PlatformInfo {
            pi: "6a4f1b2c-0000-4000-8000-000000000003".into(),
            manufacturer: board.platform.mnmn.clone().unwrap_or_default(),
            extra,
        },
    );
    let live = Device::build(&board, &HardwareEnv::default(), Instant::now()).unwrap();
    for r in live.resources {
        let types: Vec<&str> = r.resource_types.iter().map(String::as_str).collect();
        let mut res = Resource::new(&r.href, &types, &r.interfaces, r.policy, r.backend);
        res.name = r.name;
        tree.add(res).unwrap();
    }
}
