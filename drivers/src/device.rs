//! From a [`Board`] to live objects: one [`LiveResource`] per resource, with the backend the
//! resource tree serves and the task the daemon drives.
//!
//! ```
//! use std::time::Instant;
//! use ocf_drivers::board::Board;
//! use ocf_drivers::device::{Device, HardwareEnv, LiveDriver};
//!
//! let board = Board::builtin("sim").unwrap();
//! let now = Instant::now();
//! let device = Device::build(&board, &HardwareEnv::default(), now).unwrap();
//! for mut r in device.resources {
//!     // (a) r.href, r.resource_types, r.interfaces, r.policy and r.backend go into the tree:
//!     //     ocf::resource::Resource::new(&r.href, &types, &r.interfaces, r.policy, r.backend).
//!     // (b) sensors: sample on a timer.
//!     if let LiveDriver::Sensor(task) = &mut r.driver {
//!         let report = task.handle_timeout(task.poll_timeout()).unwrap();
//!         assert!(report.notify, "first reading");
//!         assert!(r.backend.retrieve().is_ok());
//!     }
//!     // (c) GPIO inputs: LiveDriver::Input(task), wait on task.edge_fd().
//! }
//! ```
//!
//! Opening hardware fails early and clearly ([`BuildError`] names the board file line, the
//! resource and the device node), except for a sensor chip that does not answer yet: that is a
//! runtime fault its sampler reports and retries, so a board boots with a sensor unplugged.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ocf::resource::{Backend, Interface, Policy};

use crate::bme280::{Bme280, Bme280Channel, SharedBme280};
use crate::board::{Board, DriverSpec, Location, PwmChip, ResourceDesc, SimParams};
use crate::contact::ContactTask;
use crate::kind::ResourceKind;
use crate::linux::gpio::{resolve_chip, CdevInput, CdevOutput};
use crate::linux::i2c::LinuxI2c;
use crate::linux::{resolve_i2c_bus, SYSFS_I2C_ADAPTERS};
use crate::lm75::{Lm75, Lm75Sensor};
use crate::pwm::{find_chip_by_device, Brightness, SysfsPwm, SYSFS_PWM_ROOT};
use crate::sampler::{SamplerConfig, SensorTask};
use crate::sim::{SimControl, SimPin, SimPwm, SimSensor};
use crate::switch::Switch;
use crate::DriverError;

/// Where the hardware's sysfs directories are (tests point them at temporary directories).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HardwareEnv {
    /// The PWM class directory, normally `/sys/class/pwm`.
    pub sysfs_pwm: PathBuf,
    /// The I2C adapter class directory, normally `/sys/class/i2c-adapter`.
    pub sysfs_i2c: PathBuf,
}

impl Default for HardwareEnv {
    fn default() -> Self {
        HardwareEnv {
            sysfs_pwm: PathBuf::from(SYSFS_PWM_ROOT),
            sysfs_i2c: PathBuf::from(SYSFS_I2C_ADAPTERS),
        }
    }
}

/// What the daemon drives for a resource besides serving its backend.
#[derive(Debug)]
pub enum LiveDriver {
    /// Nothing: writes go through the backend, which applies them to the hardware.
    Actuator,
    /// A sampled sensor: call [`SensorTask::handle_timeout`] at [`SensorTask::poll_timeout`];
    /// the backend reads the same [`ReadingCell`](crate::sensor::ReadingCell).
    Sensor(SensorTask),
    /// A GPIO input: wait for [`ContactTask::edge_fd`] to become readable, call
    /// [`ContactTask::handle_readable`], and [`ContactTask::handle_timeout`] at
    /// [`ContactTask::poll_timeout`].
    Input(ContactTask),
}

/// One resource, ready to serve.
pub struct LiveResource {
    /// Local path.
    pub href: String,
    /// Human name (`n`), if the board gives one.
    pub name: Option<String>,
    /// What it is.
    pub kind: ResourceKind,
    /// `rt`.
    pub resource_types: Vec<String>,
    /// `if`, the default interface first (`oic.if.s` for sensors, `oic.if.a` for actuators).
    pub interfaces: Vec<Interface>,
    /// Policy (`secure` is left `false`: the daemon decides which endpoints serve it).
    pub policy: Policy,
    /// What the resource tree calls for GET/POST.
    pub backend: Box<dyn Backend + Send>,
    /// What the daemon drives.
    pub driver: LiveDriver,
    /// The control handle of a simulated resource (to set values or inject faults).
    pub sim: Option<SimControl>,
}

impl fmt::Debug for LiveResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveResource")
            .field("href", &self.href)
            .field("kind", &self.kind)
            .field("policy", &self.policy)
            .field("driver", &self.driver)
            .finish_non_exhaustive()
    }
}

/// Why the hardware of a board could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    /// The board file.
    pub file: String,
    /// Where the resource is described.
    pub location: Location,
    /// The resource.
    pub href: String,
    /// What failed.
    pub error: DriverError,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: resource {:?}: {}",
            self.file, self.location.line, self.href, self.error
        )
    }
}

impl std::error::Error for BuildError {}

/// The live resources of a board.
#[derive(Debug)]
pub struct Device {
    /// In board-file order.
    pub resources: Vec<LiveResource>,
}

/// How long a BME280 needs after configuration before its first measurement is ready.
const BME280_FIRST_READ: Duration = Duration::from_millis(100);

impl Device {
    /// Open every resource's hardware. Sensors' first reads are due at `now` (a BME280's
    /// 100 ms later, once its first conversion is done).
    pub fn build(board: &Board, env: &HardwareEnv, now: Instant) -> Result<Device, BuildError> {
        let mut bme280s: HashMap<(PathBuf, u8), SharedBme280<LinuxI2c>> = HashMap::new();
        let mut resources = Vec::with_capacity(board.resources.len());
        for desc in &board.resources {
            let r = build_one(desc, env, now, &mut bme280s).map_err(|error| BuildError {
                file: board.file.clone(),
                location: desc.location,
                href: desc.href.clone(),
                error,
            })?;
            resources.push(r);
        }
        Ok(Device { resources })
    }

    /// The resource at `href`.
    pub fn resource(&self, href: &str) -> Option<&LiveResource> {
        self.resources.iter().find(|r| r.href == href)
    }

    /// The resource at `href`, mutably.
    pub fn resource_mut(&mut self, href: &str) -> Option<&mut LiveResource> {
        self.resources.iter_mut().find(|r| r.href == href)
    }
}

fn sampler_config(desc: &ResourceDesc) -> SamplerConfig {
    let s = desc.sampling.unwrap_or(crate::board::Sampling {
        period: Duration::from_secs(5),
        threshold: desc.kind.default_threshold(),
    });
    SamplerConfig::new(s.period, s.threshold)
}

fn pwm_chip_dir(chip: &PwmChip, root: &Path) -> Result<PathBuf, DriverError> {
    match chip {
        PwmChip::Number(n) => Ok(root.join(format!("pwmchip{n}"))),
        PwmChip::Path(p) => Ok(p.clone()),
        PwmChip::Device(d) => find_chip_by_device(root, d),
    }
}

fn build_one(
    desc: &ResourceDesc,
    env: &HardwareEnv,
    now: Instant,
    bme280s: &mut HashMap<(PathBuf, u8), SharedBme280<LinuxI2c>>,
) -> Result<LiveResource, DriverError> {
    let href = desc.href.as_str();
    let mut sim = None;
    let sensor_task = |sensor: Box<dyn crate::sensor::Sensor + Send>, first: Instant| {
        SensorTask::new(href, sensor, sampler_config(desc), first)
    };
    let (backend, driver): (Box<dyn Backend + Send>, LiveDriver) = match &desc.driver {
        DriverSpec::Lm75 {
            model,
            bus,
            address,
            resolution,
            smbus,
        } => {
            let path = resolve_i2c_bus(bus, &env.sysfs_i2c)?;
            let mut i2c = LinuxI2c::open(&path)?;
            i2c.force_smbus(*smbus);
            let mut dev = Lm75::new(i2c, *address, *model);
            if let Some(r) = resolution {
                dev = dev.with_resolution(*r);
            }
            let task = sensor_task(
                Box::new(Lm75Sensor::new(dev, &path.display().to_string())),
                now,
            );
            (Box::new(task.cell().backend()), LiveDriver::Sensor(task))
        }
        DriverSpec::Bme280 {
            bus,
            address,
            smbus,
        } => {
            let path = resolve_i2c_bus(bus, &env.sysfs_i2c)?;
            let key = (path.clone(), *address);
            let dev = match bme280s.get(&key) {
                Some(dev) => dev.clone(),
                None => {
                    let mut i2c = LinuxI2c::open(&path)?;
                    i2c.force_smbus(*smbus);
                    let mut chip = Bme280::new(i2c, *address);
                    // Absent or not ready: not fatal, the first read retries (and reports).
                    let _ = chip.init();
                    let dev = Arc::new(Mutex::new(chip));
                    bme280s.insert(key, dev.clone());
                    dev
                }
            };
            let channel = Bme280Channel::new(dev, desc.kind, &path.display().to_string())
                .ok_or_else(|| {
                    DriverError::new("a BME280 measures temperature, humidity or pressure")
                })?;
            let task = sensor_task(Box::new(channel), now + BME280_FIRST_READ);
            (Box::new(task.cell().backend()), LiveDriver::Sensor(task))
        }
        DriverSpec::GpioOutput {
            chip,
            line,
            active_low,
            initial,
        } => {
            let path = resolve_chip(chip)?;
            let pin = CdevOutput::open(&path, *line, initial != active_low, href)?;
            let label = format!("{} line {line}", path.display());
            (
                Box::new(Switch::new(pin, *active_low, label)),
                LiveDriver::Actuator,
            )
        }
        DriverSpec::GpioInput {
            chip,
            line,
            active_low,
            bias,
            debounce,
        } => {
            let path = resolve_chip(chip)?;
            let input = CdevInput::open(&path, *line, *bias, href)?;
            let task = ContactTask::new(href, Box::new(input), *active_low, *debounce)?;
            (Box::new(task.cell().backend()), LiveDriver::Input(task))
        }
        DriverSpec::PwmSysfs {
            chip,
            channel,
            frequency_hz,
            initial,
        } => {
            let dir = pwm_chip_dir(chip, &env.sysfs_pwm)?;
            let period = (1e9 / frequency_hz).round().max(1.0) as u64;
            let mut b = Brightness::new(SysfsPwm::open(&dir, *channel, period)?);
            b.set(*initial)?;
            (Box::new(b), LiveDriver::Actuator)
        }
        DriverSpec::PwmRppal {
            chip,
            channel,
            frequency_hz,
            initial,
        } => rppal_brightness(chip.as_ref(), env, *channel, *frequency_hz, *initial)?,
        DriverSpec::SimSensor(params) => {
            let sensor = SimSensor::new(desc.kind, *params);
            sim = Some(sensor.control());
            let task = sensor_task(Box::new(sensor), now);
            (Box::new(task.cell().backend()), LiveDriver::Sensor(task))
        }
        DriverSpec::SimContact { initial } => {
            let params = SimParams {
                initial: f64::from(u8::from(*initial)),
                step: 0.0,
                min: 0.0,
                max: 1.0,
                seed: 0,
            };
            let sensor = SimSensor::new(ResourceKind::Contact, params);
            sim = Some(sensor.control());
            let task = sensor_task(Box::new(sensor), now);
            (Box::new(task.cell().backend()), LiveDriver::Sensor(task))
        }
        DriverSpec::SimSwitch { initial } => {
            let pin = SimPin::new(*initial);
            sim = Some(pin.control());
            (
                Box::new(Switch::new(pin, false, "simulated pin")),
                LiveDriver::Actuator,
            )
        }
        DriverSpec::SimBrightness { initial } => {
            let pwm = SimPwm::new(f64::from(*initial) / 100.0);
            sim = Some(pwm.control());
            (Box::new(Brightness::new(pwm)), LiveDriver::Actuator)
        }
    };
    Ok(LiveResource {
        href: desc.href.clone(),
        name: desc.name.clone(),
        kind: desc.kind,
        resource_types: vec![desc.kind.resource_type().to_owned()],
        interfaces: desc.kind.interfaces().to_vec(),
        policy: Policy {
            discoverable: desc.discoverable,
            observable: desc.observable,
            secure: false,
        },
        backend,
        driver,
        sim,
    })
}

#[cfg(feature = "rppal")]
fn rppal_brightness(
    chip: Option<&PwmChip>,
    env: &HardwareEnv,
    channel: u8,
    frequency_hz: f64,
    initial: u8,
) -> Result<(Box<dyn Backend + Send>, LiveDriver), DriverError> {
    // rppal addresses a chip by its number under /sys/class/pwm.
    let chip = match chip {
        None => None,
        Some(c) => Some(crate::pwm::chip_number(&pwm_chip_dir(c, &env.sysfs_pwm)?)?),
    };
    let mut b = Brightness::new(crate::pwm::open_rppal(channel, chip, frequency_hz)?);
    b.set(initial)?;
    Ok((Box::new(b), LiveDriver::Actuator))
}

#[cfg(not(feature = "rppal"))]
fn rppal_brightness(
    _chip: Option<&PwmChip>,
    _env: &HardwareEnv,
    _channel: u8,
    _frequency_hz: f64,
    _initial: u8,
) -> Result<(Box<dyn Backend + Send>, LiveDriver), DriverError> {
    Err(DriverError::new(
        "driver \"pwm-rppal\" needs the agent built with the `rppal` feature (`cargo build --features rppal`; the Yocto recipe turns it on for the Raspberry Pi machines); this one was built without it. Driver \"pwm-sysfs\" with `pwm_chip` and `channel` drives the same PWM without rppal",
    ))
}
