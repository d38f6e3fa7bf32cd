//! Board descriptions: which sensors and actuators a board has, where they are wired, and how
//! they are exposed as OCF resources.
//!
//! A board file is TOML (the shipped ones are in the repository's `board/` directory and built
//! into the crate, see [`Board::builtin`]):
//!
//! ```toml
//! name = "rpi4"                      # short name
//! description = "Raspberry Pi 4 Model B, reference wiring"
//! device_type = "oic.d.sensor"       # rt of /oic/d besides oic.wk.d
//! device_name = "Pi 4 sensor"        # n of /oic/d (optional)
//!
//! [platform]                         # /oic/p (all optional)
//! mnmn = "OCF-Pi project"            # manufacturer name
//! mnmo = "Raspberry Pi 4 Model B"    # model number
//! mnhw = "BCM2711"                   # hardware version
//!
//! [[resource]]
//! href = "/environment/temperature"
//! driver = "bme280"
//! quantity = "temperature"           # bme280: temperature | humidity | pressure
//! bus = 1                            # /dev/i2c-1; or "/dev/i2c-1", { device = "fe804000.i2c" }, { name = "..." }
//! address = 0x76
//! period = "5s"                      # sampling period: "500ms", "5s", "1m", or seconds as a number
//! threshold = 0.2                    # notify when the value moves more than this
//!
//! [[resource]]
//! href = "/relay"
//! driver = "gpio-output"
//! chip = { label = "pinctrl-bcm2711" }   # or 0, "gpiochip0", "/dev/gpiochip0"
//! line = 17
//! active_low = true
//! ```
//!
//! Drivers and their fields (besides `href`, `driver`, and the optional `name`, `observable`,
//! `discoverable` every resource may have):
//!
//! | driver | resource type | required | optional |
//! |---|---|---|---|
//! | `lm75`, `tmp75`, `tmp105` | `oic.r.temperature` | `bus`, `address` | `smbus`, `period`, `threshold`, `resolution` (9-12, TMP only) |
//! | `bme280` | temperature, humidity or pressure | `quantity`, `bus`, `address` | `smbus`, `period`, `threshold` |
//! | `gpio-output` | `oic.r.switch.binary` | `chip`, `line` | `active_low`, `initial` (bool) |
//! | `gpio-input` | `oic.r.sensor.contact` | `chip`, `line` | `active_low`, `bias` (`pull-up`, `pull-down`, `disabled`, `as-is`), `debounce` |
//! | `pwm-sysfs` | `oic.r.light.brightness` | `pwm_chip`, `channel` | `frequency` (Hz), `initial` (0-100) |
//! | `pwm-rppal` | `oic.r.light.brightness` | `channel` (rppal's 0-3) | `pwm_chip` (else rppal's for the Pi model), `frequency`, `initial` |
//! | `sim-temperature`, `sim-humidity`, `sim-pressure` | as named | | `period`, `threshold`, `initial`, `step`, `min`, `max`, `seed` |
//! | `sim-switch` | `oic.r.switch.binary` | | `initial` (bool) |
//! | `sim-brightness` | `oic.r.light.brightness` | | `initial` (0-100) |
//! | `sim-contact` | `oic.r.sensor.contact` | | `initial` (bool, `true` = open), `period` |
//!
//! `smbus = true` forces SMBus transfers even where the adapter can do plain I2C (it is chosen
//! automatically on SMBus-only adapters). GPIO chips can be named by label because the Pi 5's
//! header GPIOs (RP1, label `pinctrl-rp1`) are `gpiochip4` on kernels before 6.6.45 and
//! `gpiochip0` after; PWM chips and I2C buses by platform device (`{ device = "1f00098000.pwm" }`)
//! because their numbers change between kernels too.
//!
//! [`Board::from_str`] checks everything it can without hardware and reports every problem at
//! once, each with file, line and column: unknown drivers, missing fields, fields that do not
//! apply, bad values and addresses, a GPIO line or I2C address used twice, duplicate hrefs.

mod error;

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeFloat, DeInteger, DeString, DeTable, DeValue};
use toml::Spanned;

pub use error::{BoardError, Location, Problem, ProblemKind};

use crate::kind::ResourceKind;
use crate::lm75;

/// The boards built into the crate, by name: the files of the repository's `board/`
/// directory.
pub const BUILTIN: &[(&str, &str)] = &[
    ("sim", include_str!("../../../board/sim.toml")),
    ("rpi4", include_str!("../../../board/rpi4.toml")),
    ("rpi5", include_str!("../../../board/rpi5.toml")),
    (
        "qemu-raspi3b",
        include_str!("../../../board/qemu-raspi3b.toml"),
    ),
];

/// The drivers a board file may name.
pub const DRIVERS: &[&str] = &[
    "lm75",
    "tmp75",
    "tmp105",
    "bme280",
    "gpio-output",
    "gpio-input",
    "pwm-sysfs",
    "pwm-rppal",
    "sim-temperature",
    "sim-humidity",
    "sim-pressure",
    "sim-switch",
    "sim-brightness",
    "sim-contact",
];

/// A validated board description.
#[derive(Debug, Clone, PartialEq)]
pub struct Board {
    /// Where it came from (the path as given, or `board/NAME.toml`).
    pub file: String,
    /// Short name (`rpi4`).
    pub name: String,
    /// One line for humans.
    pub description: Option<String>,
    /// The device type for `/oic/d`'s `rt` (e.g. `oic.d.sensor`).
    pub device_type: String,
    /// The device name (`n` of `/oic/d`), if the board suggests one.
    pub device_name: Option<String>,
    /// Platform properties for `/oic/p`.
    pub platform: Platform,
    /// The resources, in file order.
    pub resources: Vec<ResourceDesc>,
}

/// Optional `/oic/p` properties (OCF-PROTOCOL.md §3.3); `pi` comes from the device's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Platform {
    /// Manufacturer name (≤ 64 chars; required in `/oic/p`: the agent supplies a default).
    pub mnmn: Option<String>,
    /// Manufacturer URL.
    pub mnml: Option<String>,
    /// Model number.
    pub mnmo: Option<String>,
    /// Manufacturing date (YYYY-MM-DD).
    pub mndt: Option<String>,
    /// Platform version.
    pub mnpv: Option<String>,
    /// OS version.
    pub mnos: Option<String>,
    /// Hardware version.
    pub mnhw: Option<String>,
    /// Firmware version.
    pub mnfv: Option<String>,
    /// Support URL.
    pub mnsl: Option<String>,
    /// Vendor id.
    pub vid: Option<String>,
}

impl Platform {
    /// The fields other than `mnmn` that are set, as `/oic/p` properties (text values), for
    /// `ocf::resource::PlatformInfo::extra`.
    pub fn extra_props(&self) -> ocf::resource::Props {
        [
            ("mnml", &self.mnml),
            ("mnmo", &self.mnmo),
            ("mndt", &self.mndt),
            ("mnpv", &self.mnpv),
            ("mnos", &self.mnos),
            ("mnhw", &self.mnhw),
            ("mnfv", &self.mnfv),
            ("mnsl", &self.mnsl),
            ("vid", &self.vid),
        ]
        .into_iter()
        .filter_map(|(k, v)| {
            v.as_ref()
                .map(|v| (k.to_owned(), ocf::resource::Value::Text(v.clone())))
        })
        .collect()
    }
}

/// One resource of a board.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceDesc {
    /// Local path, e.g. `/temperature`.
    pub href: String,
    /// Human name (`n`).
    pub name: Option<String>,
    /// Resource type and interfaces.
    pub kind: ResourceKind,
    /// The driver and where the hardware is.
    pub driver: DriverSpec,
    /// Sampling, for sensors (`None` for actuators and edge-driven inputs).
    pub sampling: Option<Sampling>,
    /// Policy: may be observed (`p.bm` 0x02).
    pub observable: bool,
    /// Policy: listed in `/oic/res` (`p.bm` 0x01).
    pub discoverable: bool,
    /// Where the resource's table starts in the file.
    pub location: Location,
}

impl ResourceDesc {
    /// The `p.bm` policy bitmask.
    pub fn policy_bitmask(&self) -> u8 {
        u8::from(self.discoverable) | (u8::from(self.observable) << 1)
    }
}

/// A sensor's sampling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Time between reads.
    pub period: Duration,
    /// Notify when the value moves more than this from the last notified one.
    pub threshold: f64,
}

/// An I2C bus.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum I2cBus {
    /// `/dev/i2c-N`.
    Number(u32),
    /// A device node path.
    Path(PathBuf),
    /// The adapter whose parent platform device is this (e.g. `1f00074000.i2c`).
    Device(String),
    /// The adapter whose sysfs `name` is this.
    Name(String),
}

impl fmt::Display for I2cBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            I2cBus::Number(n) => write!(f, "/dev/i2c-{n}"),
            I2cBus::Path(p) => write!(f, "{}", p.display()),
            I2cBus::Device(d) => write!(f, "the I2C adapter of device {d:?}"),
            I2cBus::Name(n) => write!(f, "the I2C adapter named {n:?}"),
        }
    }
}

/// A GPIO chip.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GpioChip {
    /// `/dev/gpiochipN`.
    Number(u32),
    /// A device node path.
    Path(PathBuf),
    /// The chip with this label (e.g. `pinctrl-rp1`, `pinctrl-bcm2711`, `pinctrl-bcm2835`).
    Label(String),
}

impl fmt::Display for GpioChip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpioChip::Number(n) => write!(f, "gpiochip{n}"),
            GpioChip::Path(p) => write!(f, "{}", p.display()),
            GpioChip::Label(l) => write!(f, "the GPIO chip labelled {l:?}"),
        }
    }
}

/// A PWM chip of the sysfs interface.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PwmChip {
    /// `pwmchipN` under the sysfs root.
    Number(u32),
    /// A `pwmchipN` directory path.
    Path(PathBuf),
    /// The chip whose platform device is this (e.g. `1f00098000.pwm`).
    Device(String),
}

impl fmt::Display for PwmChip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PwmChip::Number(n) => write!(f, "pwmchip{n}"),
            PwmChip::Path(p) => write!(f, "{}", p.display()),
            PwmChip::Device(d) => write!(f, "the PWM chip of device {d:?}"),
        }
    }
}

/// Input line bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bias {
    /// Leave as configured (device tree, firmware).
    AsIs,
    /// Pull-up.
    PullUp,
    /// Pull-down.
    PullDown,
    /// No pull.
    Disabled,
}

/// Parameters of a simulated sensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimParams {
    /// Starting value.
    pub initial: f64,
    /// Largest change per sample of the random walk (0 = constant).
    pub step: f64,
    /// Lower bound.
    pub min: f64,
    /// Upper bound.
    pub max: f64,
    /// Seed of the deterministic random walk.
    pub seed: u64,
}

/// Which driver, and where its hardware is.
#[derive(Debug, Clone, PartialEq)]
pub enum DriverSpec {
    /// LM75-family temperature sensor.
    Lm75 {
        /// Which part.
        model: lm75::Model,
        /// The bus.
        bus: I2cBus,
        /// 7-bit address.
        address: u8,
        /// Resolution, if not the default (TMP75/TMP105 only).
        resolution: Option<lm75::Resolution>,
        /// Force SMBus transfers.
        smbus: bool,
    },
    /// One quantity of a BME280 (resources at the same bus and address share the chip).
    Bme280 {
        /// The bus.
        bus: I2cBus,
        /// 7-bit address.
        address: u8,
        /// Force SMBus transfers.
        smbus: bool,
    },
    /// A GPIO output.
    GpioOutput {
        /// The chip.
        chip: GpioChip,
        /// Line offset on the chip.
        line: u32,
        /// Drive low for "on".
        active_low: bool,
        /// State at start-up.
        initial: bool,
    },
    /// A GPIO input with edge detection.
    GpioInput {
        /// The chip.
        chip: GpioChip,
        /// Line offset on the chip.
        line: u32,
        /// Invert: low = open.
        active_low: bool,
        /// Pull resistor.
        bias: Bias,
        /// Settle time of the debouncer.
        debounce: Duration,
    },
    /// A Linux sysfs PWM channel.
    PwmSysfs {
        /// The chip.
        chip: PwmChip,
        /// Channel on the chip.
        channel: u32,
        /// PWM frequency.
        frequency_hz: f64,
        /// Brightness at start-up.
        initial: u8,
    },
    /// An rppal PWM channel (Raspberry Pi, cargo feature `rppal`).
    PwmRppal {
        /// The chip, if not the one rppal picks for the Pi model.
        chip: Option<PwmChip>,
        /// rppal channel 0-3.
        channel: u8,
        /// PWM frequency.
        frequency_hz: f64,
        /// Brightness at start-up.
        initial: u8,
    },
    /// Simulated temperature, humidity or pressure (kind in [`ResourceDesc::kind`]).
    SimSensor(SimParams),
    /// Simulated switch.
    SimSwitch {
        /// Start state.
        initial: bool,
    },
    /// Simulated brightness.
    SimBrightness {
        /// Start value 0-100.
        initial: u8,
    },
    /// Simulated contact.
    SimContact {
        /// Start state (`true` = open).
        initial: bool,
    },
}

impl DriverSpec {
    /// Whether the driver touches no hardware.
    pub fn is_simulated(&self) -> bool {
        matches!(
            self,
            DriverSpec::SimSensor(_)
                | DriverSpec::SimSwitch { .. }
                | DriverSpec::SimBrightness { .. }
                | DriverSpec::SimContact { .. }
        )
    }
}

impl Board {
    /// Parse and check a board file's text; `file` names it in errors.
    pub fn from_str(file: &str, text: &str) -> Result<Board, BoardError> {
        Parser::new(file, text).parse()
    }

    /// Read, parse and check a board file.
    pub fn from_path(path: &Path) -> Result<Board, BoardError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            BoardError::single(&file, ProblemKind::Io, None, format!("cannot read: {e}"))
        })?;
        Board::from_str(&file, &text)
    }

    /// A built-in board by name (`sim`, `rpi4`, `rpi5`, `qemu-raspi3b`).
    pub fn builtin(name: &str) -> Result<Board, BoardError> {
        let file = format!("board/{name}.toml");
        match BUILTIN.iter().find(|(n, _)| *n == name) {
            Some((_, text)) => Board::from_str(&file, text),
            None => Err(BoardError::single(
                &file,
                ProblemKind::UnknownBoard,
                None,
                format!(
                    "no built-in board {name:?} (built-in: {}; or give a path to a .toml file)",
                    BUILTIN
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// What `ocf-agent --board ARG` loads: the file at `ARG` if it looks like a path (contains
    /// a `/` or ends in `.toml`), else the built-in board of that name (`./NAME` reads a file
    /// without an extension).
    pub fn load(arg: &str) -> Result<Board, BoardError> {
        if arg.contains('/') || arg.ends_with(".toml") {
            Board::from_path(Path::new(arg))
        } else {
            Board::builtin(arg)
        }
    }

    /// The resource at `href`.
    pub fn resource(&self, href: &str) -> Option<&ResourceDesc> {
        self.resources.iter().find(|r| r.href == href)
    }
}

// Board files are walked by hand over toml's spanned tree, not through serde: the derived
// deserializers cost the agent ~95 KB. Errors keep serde's wording, kinds and spans.

/// A value the drivers interpret themselves (`bus`, `chip`, durations, numbers).
enum Value {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    /// Only shown in messages.
    Datetime(String),
    Array,
    Table(Vec<(String, Value)>),
}

struct RawBoard {
    name: Spanned<String>,
    description: Option<String>,
    device_type: Option<Spanned<String>>,
    device_name: Option<String>,
    platform: Option<Platform>,
    resource: Vec<Spanned<RawResource>>,
}

struct RawResource {
    href: Spanned<String>,
    driver: Spanned<String>,
    name: Option<String>,
    observable: Option<bool>,
    discoverable: Option<bool>,
    quantity: Option<Spanned<String>>,
    bus: Option<Spanned<Value>>,
    address: Option<Spanned<i64>>,
    smbus: Option<Spanned<bool>>,
    resolution: Option<Spanned<i64>>,
    chip: Option<Spanned<Value>>,
    line: Option<Spanned<i64>>,
    active_low: Option<Spanned<bool>>,
    initial: Option<Spanned<Value>>,
    bias: Option<Spanned<String>>,
    debounce: Option<Spanned<Value>>,
    pwm_chip: Option<Spanned<Value>>,
    channel: Option<Spanned<i64>>,
    frequency: Option<Spanned<Value>>,
    period: Option<Spanned<Value>>,
    threshold: Option<Spanned<Value>>,
    step: Option<Spanned<Value>>,
    min: Option<Spanned<Value>>,
    max: Option<Spanned<Value>>,
    seed: Option<Spanned<i64>>,
}

/// A file-level (syntax or type) error: where, and what.
type Fail = (Range<usize>, String);

type Item<'i> = Spanned<DeValue<'i>>;

const BOARD_FIELDS: &[&str] = &[
    "name",
    "description",
    "device_type",
    "device_name",
    "platform",
    "resource",
];

const PLATFORM_FIELDS: &[&str] = &[
    "mnmn", "mnml", "mnmo", "mndt", "mnpv", "mnos", "mnhw", "mnfv", "mnsl", "vid",
];

const RESOURCE_FIELDS: &[&str] = &[
    "href",
    "driver",
    "name",
    "observable",
    "discoverable",
    "quantity",
    "bus",
    "address",
    "smbus",
    "resolution",
    "chip",
    "line",
    "active_low",
    "initial",
    "bias",
    "debounce",
    "pwm_chip",
    "channel",
    "frequency",
    "period",
    "threshold",
    "step",
    "min",
    "max",
    "seed",
];

fn unknown_field(key: &Spanned<DeString<'_>>, expected: &[&str]) -> Fail {
    let expected: Vec<String> = expected.iter().map(|f| format!("`{f}`")).collect();
    (
        key.span(),
        format!(
            "unknown field `{}`, expected one of {}",
            key.get_ref(),
            expected.join(", ")
        ),
    )
}

fn missing_field(table: &Range<usize>, field: &str) -> Fail {
    (table.clone(), format!("missing field `{field}`"))
}

fn to_i64(i: &DeInteger<'_>) -> Option<i64> {
    i64::from_str_radix(i.as_str(), i.radix()).ok()
}

/// `None` for a finite literal too large for f64 (`inf` and `nan` are fine).
fn to_f64(f: &DeFloat<'_>) -> Option<f64> {
    let x: f64 = f.as_str().parse().ok()?;
    (!x.is_infinite() || f.as_str().contains("inf")).then_some(x)
}

fn int_overflow(v: &Item<'_>, i: &DeInteger<'_>) -> Fail {
    (
        v.span(),
        format!("invalid value: integer `{i}`, expected i64"),
    )
}

fn float_overflow(v: &Item<'_>) -> Fail {
    (v.span(), "floating-point number overflowed".to_owned())
}

/// "invalid type: integer `5`, expected a string", as serde put it.
fn wrong_type(v: &Item<'_>, expected: &str) -> Fail {
    let found = match v.get_ref() {
        DeValue::String(s) => format!("string {s:?}"),
        DeValue::Integer(i) => match to_i64(i) {
            Some(n) => format!("integer `{n}`"),
            None => format!("integer `{i}`"),
        },
        DeValue::Float(f) => match to_f64(f) {
            Some(x) => {
                let mut x_text = x.to_string();
                if x.is_finite() && !x_text.contains('.') {
                    x_text.push_str(".0");
                }
                format!("floating point `{x_text}`")
            }
            None => return float_overflow(v),
        },
        DeValue::Boolean(b) => format!("boolean `{b}`"),
        DeValue::Datetime(d) => format!("datetime `{d}`"),
        DeValue::Array(_) => "sequence".to_owned(),
        DeValue::Table(_) => "map".to_owned(),
    };
    (
        v.span(),
        format!("invalid type: {found}, expected {expected}"),
    )
}

fn string(v: &Item<'_>) -> Result<Spanned<String>, Fail> {
    match v.get_ref() {
        DeValue::String(s) => Ok(Spanned::new(v.span(), s.to_string())),
        _ => Err(wrong_type(v, "a string")),
    }
}

fn boolean(v: &Item<'_>) -> Result<Spanned<bool>, Fail> {
    match v.get_ref() {
        DeValue::Boolean(b) => Ok(Spanned::new(v.span(), *b)),
        _ => Err(wrong_type(v, "a boolean")),
    }
}

fn integer(v: &Item<'_>) -> Result<Spanned<i64>, Fail> {
    match v.get_ref() {
        DeValue::Integer(i) => match to_i64(i) {
            Some(n) => Ok(Spanned::new(v.span(), n)),
            None => Err(int_overflow(v, i)),
        },
        _ => Err(wrong_type(v, "i64")),
    }
}

fn any(v: &Item<'_>) -> Result<Spanned<Value>, Fail> {
    Ok(Spanned::new(v.span(), plain(v)?))
}

fn plain(v: &Item<'_>) -> Result<Value, Fail> {
    Ok(match v.get_ref() {
        DeValue::String(s) => Value::String(s.to_string()),
        DeValue::Integer(i) => Value::Integer(to_i64(i).ok_or_else(|| int_overflow(v, i))?),
        DeValue::Float(f) => Value::Float(to_f64(f).ok_or_else(|| float_overflow(v))?),
        DeValue::Boolean(b) => Value::Boolean(*b),
        DeValue::Datetime(d) => Value::Datetime(format!("{d:?}")),
        DeValue::Array(a) => {
            // Checked for numbers out of range like the rest; the contents are never used.
            for item in a {
                plain(item)?;
            }
            Value::Array
        }
        DeValue::Table(t) => Value::Table(
            t.iter()
                .map(|(k, v)| Ok((k.get_ref().to_string(), plain(v)?)))
                .collect::<Result<_, Fail>>()?,
        ),
    })
}

fn raw_board(doc: &Spanned<DeTable<'_>>) -> Result<RawBoard, Fail> {
    let mut name = None;
    let mut description = None;
    let mut device_type = None;
    let mut device_name = None;
    let mut platform = None;
    let mut resource = Vec::new();
    // In key order, the first problem only: what serde reported.
    for (key, v) in doc.get_ref() {
        match key.get_ref().as_ref() {
            "name" => name = Some(string(v)?),
            "description" => description = Some(string(v)?.into_inner()),
            "device_type" => device_type = Some(string(v)?),
            "device_name" => device_name = Some(string(v)?.into_inner()),
            "platform" => platform = Some(raw_platform(v)?),
            "resource" => match v.get_ref() {
                DeValue::Array(a) => {
                    resource = a.iter().map(raw_resource).collect::<Result<_, _>>()?;
                }
                _ => return Err(wrong_type(v, "a sequence")),
            },
            _ => return Err(unknown_field(key, BOARD_FIELDS)),
        }
    }
    Ok(RawBoard {
        name: name.ok_or_else(|| missing_field(&doc.span(), "name"))?,
        description,
        device_type,
        device_name,
        platform,
        resource,
    })
}

fn raw_platform(v: &Item<'_>) -> Result<Platform, Fail> {
    let DeValue::Table(t) = v.get_ref() else {
        return Err(wrong_type(v, "struct Platform"));
    };
    let mut p = Platform::default();
    for (key, v) in t {
        let field = match key.get_ref().as_ref() {
            "mnmn" => &mut p.mnmn,
            "mnml" => &mut p.mnml,
            "mnmo" => &mut p.mnmo,
            "mndt" => &mut p.mndt,
            "mnpv" => &mut p.mnpv,
            "mnos" => &mut p.mnos,
            "mnhw" => &mut p.mnhw,
            "mnfv" => &mut p.mnfv,
            "mnsl" => &mut p.mnsl,
            "vid" => &mut p.vid,
            _ => return Err(unknown_field(key, PLATFORM_FIELDS)),
        };
        *field = Some(string(v)?.into_inner());
    }
    Ok(p)
}

fn raw_resource(v: &Item<'_>) -> Result<Spanned<RawResource>, Fail> {
    let DeValue::Table(t) = v.get_ref() else {
        return Err(wrong_type(v, "struct RawResource"));
    };
    let (mut href, mut driver, mut name, mut observable, mut discoverable) =
        (None, None, None, None, None);
    let (mut quantity, mut bus, mut address, mut smbus, mut resolution) =
        (None, None, None, None, None);
    let (mut chip, mut line, mut active_low, mut initial, mut bias, mut debounce) =
        (None, None, None, None, None, None);
    let (mut pwm_chip, mut channel, mut frequency, mut period, mut threshold) =
        (None, None, None, None, None);
    let (mut step, mut min, mut max, mut seed) = (None, None, None, None);
    for (key, v) in t {
        match key.get_ref().as_ref() {
            "href" => href = Some(string(v)?),
            "driver" => driver = Some(string(v)?),
            "name" => name = Some(string(v)?.into_inner()),
            "observable" => observable = Some(*boolean(v)?.get_ref()),
            "discoverable" => discoverable = Some(*boolean(v)?.get_ref()),
            "quantity" => quantity = Some(string(v)?),
            "bus" => bus = Some(any(v)?),
            "address" => address = Some(integer(v)?),
            "smbus" => smbus = Some(boolean(v)?),
            "resolution" => resolution = Some(integer(v)?),
            "chip" => chip = Some(any(v)?),
            "line" => line = Some(integer(v)?),
            "active_low" => active_low = Some(boolean(v)?),
            "initial" => initial = Some(any(v)?),
            "bias" => bias = Some(string(v)?),
            "debounce" => debounce = Some(any(v)?),
            "pwm_chip" => pwm_chip = Some(any(v)?),
            "channel" => channel = Some(integer(v)?),
            "frequency" => frequency = Some(any(v)?),
            "period" => period = Some(any(v)?),
            "threshold" => threshold = Some(any(v)?),
            "step" => step = Some(any(v)?),
            "min" => min = Some(any(v)?),
            "max" => max = Some(any(v)?),
            "seed" => seed = Some(integer(v)?),
            _ => return Err(unknown_field(key, RESOURCE_FIELDS)),
        }
    }
    let raw = RawResource {
        href: href.ok_or_else(|| missing_field(&v.span(), "href"))?,
        driver: driver.ok_or_else(|| missing_field(&v.span(), "driver"))?,
        name,
        observable,
        discoverable,
        quantity,
        bus,
        address,
        smbus,
        resolution,
        chip,
        line,
        active_low,
        initial,
        bias,
        debounce,
        pwm_chip,
        channel,
        frequency,
        period,
        threshold,
        step,
        min,
        max,
        seed,
    };
    Ok(Spanned::new(v.span(), raw))
}

fn span_of<T>(v: &Option<Spanned<T>>) -> Option<Range<usize>> {
    v.as_ref().map(Spanned::span)
}

impl RawResource {
    /// The driver-specific fields present, with their spans.
    fn present(&self) -> Vec<(&'static str, Range<usize>)> {
        [
            ("quantity", span_of(&self.quantity)),
            ("bus", span_of(&self.bus)),
            ("address", span_of(&self.address)),
            ("smbus", span_of(&self.smbus)),
            ("resolution", span_of(&self.resolution)),
            ("chip", span_of(&self.chip)),
            ("line", span_of(&self.line)),
            ("active_low", span_of(&self.active_low)),
            ("initial", span_of(&self.initial)),
            ("bias", span_of(&self.bias)),
            ("debounce", span_of(&self.debounce)),
            ("pwm_chip", span_of(&self.pwm_chip)),
            ("channel", span_of(&self.channel)),
            ("frequency", span_of(&self.frequency)),
            ("period", span_of(&self.period)),
            ("threshold", span_of(&self.threshold)),
            ("step", span_of(&self.step)),
            ("min", span_of(&self.min)),
            ("max", span_of(&self.max)),
            ("seed", span_of(&self.seed)),
        ]
        .into_iter()
        .filter_map(|(n, s)| s.map(|s| (n, s)))
        .collect()
    }
}

/// The driver-specific fields each driver accepts.
fn allowed_fields(driver: &str) -> &'static [&'static str] {
    match driver {
        "lm75" => &["bus", "address", "smbus", "period", "threshold"],
        "tmp75" | "tmp105" => &[
            "bus",
            "address",
            "smbus",
            "period",
            "threshold",
            "resolution",
        ],
        "bme280" => &["quantity", "bus", "address", "smbus", "period", "threshold"],
        "gpio-output" => &["chip", "line", "active_low", "initial"],
        "gpio-input" => &["chip", "line", "active_low", "bias", "debounce"],
        "pwm-sysfs" => &["pwm_chip", "channel", "frequency", "initial"],
        "pwm-rppal" => &["pwm_chip", "channel", "frequency", "initial"],
        "sim-temperature" | "sim-humidity" | "sim-pressure" => &[
            "period",
            "threshold",
            "initial",
            "step",
            "min",
            "max",
            "seed",
        ],
        "sim-switch" | "sim-brightness" => &["initial"],
        "sim-contact" => &["initial", "period"],
        _ => &[],
    }
}

/// A (bus, address) or (chip, line) already taken, and by whom.
struct Use {
    href: String,
    line: usize,
    shareable: bool,
}

struct Parser<'a> {
    file: &'a str,
    text: &'a str,
    problems: Vec<Problem>,
}

impl<'a> Parser<'a> {
    fn new(file: &'a str, text: &'a str) -> Self {
        Parser {
            file,
            text,
            problems: Vec::new(),
        }
    }

    fn loc(&self, span: &Range<usize>) -> Location {
        Location::of(self.text, span.start)
    }

    fn problem(&mut self, kind: ProblemKind, span: &Range<usize>, message: String) {
        let location = Some(self.loc(span));
        self.problems.push(Problem {
            kind,
            location,
            message,
        });
    }

    fn parse(mut self) -> Result<Board, BoardError> {
        let raw = match DeTable::parse(self.text) {
            Ok(doc) => raw_board(&doc).map_err(|(span, message)| (Some(span), message)),
            Err(e) => Err((e.span(), e.message().trim().to_owned())),
        };
        let raw = match raw {
            Ok(raw) => raw,
            Err((span, message)) => {
                let location = span.map(|s| self.loc(&s));
                return Err(BoardError::single(
                    self.file,
                    ProblemKind::Syntax,
                    location,
                    message,
                ));
            }
        };
        let name = raw.name.get_ref().trim().to_owned();
        if name.is_empty() {
            self.problem(
                ProblemKind::BadValue,
                &raw.name.span(),
                "board `name` must not be empty".into(),
            );
        }
        let device_type = match &raw.device_type {
            None => "oic.d.sensor".to_owned(),
            Some(t) => {
                if !t.get_ref().starts_with("oic.d.") {
                    self.problem(
                        ProblemKind::BadValue,
                        &t.span(),
                        format!(
                            "`device_type` {:?} is not an OCF device type (oic.d.*)",
                            t.get_ref()
                        ),
                    );
                }
                t.get_ref().clone()
            }
        };

        let mut resources = Vec::new();
        let mut hrefs: HashMap<String, usize> = HashMap::new();
        let mut lines: HashMap<(GpioChip, u32), Use> = HashMap::new();
        let mut addresses: HashMap<(I2cBus, u8), Use> = HashMap::new();
        for res in &raw.resource {
            let table_span = res.span();
            let res = res.get_ref();
            let href = res.href.get_ref().clone();
            let location = self.loc(&table_span);
            if let Some(first) = hrefs.get(&href) {
                self.problem(
                    ProblemKind::DuplicateHref,
                    &res.href.span(),
                    format!("resource {href:?}: href already used by the resource on line {first}"),
                );
            } else {
                hrefs.insert(href.clone(), self.loc(&res.href.span()).line);
            }
            let Some(desc) = self.resource(res, location) else {
                continue;
            };
            // Hardware used twice.
            match &desc.driver {
                DriverSpec::GpioOutput { chip, line, .. }
                | DriverSpec::GpioInput { chip, line, .. } => {
                    let span = res.line.as_ref().map_or(table_span.clone(), Spanned::span);
                    self.claim(
                        &mut lines,
                        (chip.clone(), *line),
                        &href,
                        false,
                        &span,
                        ProblemKind::LineInUse,
                        &format!("GPIO line {line} on {chip}"),
                    );
                }
                DriverSpec::Lm75 { bus, address, .. } | DriverSpec::Bme280 { bus, address, .. } => {
                    let shareable = matches!(desc.driver, DriverSpec::Bme280 { .. });
                    let span = res
                        .address
                        .as_ref()
                        .map_or(table_span.clone(), Spanned::span);
                    self.claim(
                        &mut addresses,
                        (bus.clone(), *address),
                        &href,
                        shareable,
                        &span,
                        ProblemKind::AddressInUse,
                        &format!("I2C address {address:#04x} on {bus}"),
                    );
                }
                _ => {}
            }
            resources.push(desc);
        }

        if !self.problems.is_empty() {
            self.problems.sort_by_key(|p| p.location);
            return Err(BoardError {
                file: self.file.to_owned(),
                problems: self.problems,
            });
        }
        Ok(Board {
            file: self.file.to_owned(),
            name,
            description: raw.description,
            device_type,
            device_name: raw.device_name,
            platform: raw.platform.unwrap_or_default(),
            resources,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn claim<K: std::hash::Hash + Eq>(
        &mut self,
        used: &mut HashMap<K, Use>,
        key: K,
        href: &str,
        shareable: bool,
        span: &Range<usize>,
        kind: ProblemKind,
        what: &str,
    ) {
        let line = self.loc(span).line;
        match used.get(&key) {
            Some(prev) if !(prev.shareable && shareable) => {
                let message = format!(
                    "resource {href:?}: {what} is already used by {:?} (line {})",
                    prev.href, prev.line
                );
                self.problem(kind, span, message);
            }
            Some(_) => {}
            None => {
                used.insert(
                    key,
                    Use {
                        href: href.to_owned(),
                        line,
                        shareable,
                    },
                );
            }
        }
    }

    /// Checks one resource; records problems and returns `None` if it is unusable.
    fn resource(&mut self, r: &RawResource, location: Location) -> Option<ResourceDesc> {
        let href = r.href.get_ref().as_str();
        let before = self.problems.len();
        let href_span = r.href.span();
        if !href.starts_with('/')
            || href.len() < 2
            || href
                .chars()
                .any(|c| c.is_whitespace() || c == '?' || c == '#')
        {
            self.problem(
                ProblemKind::BadValue,
                &href_span,
                format!("resource {href:?}: `href` must be a path like \"/temperature\" (no spaces, '?' or '#')"),
            );
        } else if href.starts_with("/oic/") || href == "/oic" {
            self.problem(
                ProblemKind::BadValue,
                &href_span,
                format!("resource {href:?}: hrefs under /oic/ are reserved for the core resources"),
            );
        }
        let driver = r.driver.get_ref().as_str();
        if !DRIVERS.contains(&driver) {
            self.problem(
                ProblemKind::UnknownDriver,
                &r.driver.span(),
                format!(
                    "resource {href:?}: unknown driver {driver:?} (known: {})",
                    DRIVERS.join(", ")
                ),
            );
            return None;
        }
        let allowed = allowed_fields(driver);
        for (field, span) in r.present() {
            if !allowed.contains(&field) {
                self.problem(
                    ProblemKind::NotApplicable,
                    &span,
                    format!(
                        "resource {href:?}: field `{field}` does not apply to driver {driver:?}"
                    ),
                );
            }
        }
        let ctx = Ctx {
            href,
            driver,
            table: self.text_span_for(location),
        };
        let kind = match driver {
            "lm75" | "tmp75" | "tmp105" | "sim-temperature" => Some(ResourceKind::Temperature),
            "sim-humidity" => Some(ResourceKind::Humidity),
            "sim-pressure" => Some(ResourceKind::Pressure),
            "gpio-output" | "sim-switch" => Some(ResourceKind::Switch),
            "gpio-input" | "sim-contact" => Some(ResourceKind::Contact),
            "pwm-sysfs" | "pwm-rppal" | "sim-brightness" => Some(ResourceKind::Brightness),
            _ => self.quantity(&ctx, &r.quantity),
        };
        let driver_spec = self.driver(&ctx, r, kind);
        let kind = kind?;
        let sensor = !kind.is_actuator() && driver != "gpio-input";
        let sampling = if sensor {
            let default_period = match driver {
                "sim-contact" => Duration::from_secs(1),
                d if d.starts_with("sim-") => Duration::from_secs(2),
                _ => Duration::from_secs(5),
            };
            let period = match &r.period {
                None => Some(default_period),
                Some(v) => self.duration(
                    &ctx,
                    "period",
                    v,
                    Duration::from_millis(10),
                    Duration::from_secs(86_400),
                ),
            };
            let threshold = match &r.threshold {
                None => Some(kind.default_threshold()),
                Some(v) => self.number(&ctx, "threshold", v, 0.0, 1e6),
            };
            Some(Sampling {
                period: period?,
                threshold: threshold?,
            })
        } else {
            None
        };
        let driver = driver_spec?;
        if self.problems.len() > before {
            return None;
        }
        Some(ResourceDesc {
            href: href.to_owned(),
            name: r.name.clone(),
            kind,
            driver,
            sampling,
            observable: r.observable.unwrap_or(true),
            discoverable: r.discoverable.unwrap_or(true),
            location,
        })
    }

    fn text_span_for(&self, location: Location) -> Range<usize> {
        // Byte offset of the start of `location.line`.
        let start: usize = self
            .text
            .split_inclusive('\n')
            .take(location.line.saturating_sub(1))
            .map(str::len)
            .sum();
        start..start
    }

    fn missing(&mut self, ctx: &Ctx, field: &str, hint: &str) {
        let span = ctx.table.clone();
        self.problem(
            ProblemKind::MissingField,
            &span,
            format!(
                "resource {:?}: driver {:?} needs `{field}`{hint}",
                ctx.href, ctx.driver
            ),
        );
    }

    fn bad(&mut self, ctx: &Ctx, span: &Range<usize>, message: String) {
        self.problem(
            ProblemKind::BadValue,
            span,
            format!("resource {:?}: {message}", ctx.href),
        );
    }

    fn quantity(&mut self, ctx: &Ctx, q: &Option<Spanned<String>>) -> Option<ResourceKind> {
        let Some(q) = q else {
            self.missing(
                ctx,
                "quantity",
                " (\"temperature\", \"humidity\" or \"pressure\")",
            );
            return None;
        };
        match q.get_ref().as_str() {
            "temperature" => Some(ResourceKind::Temperature),
            "humidity" => Some(ResourceKind::Humidity),
            "pressure" => Some(ResourceKind::Pressure),
            other => {
                self.bad(
                    ctx,
                    &q.span(),
                    format!(
                        "`quantity` {other:?} is not \"temperature\", \"humidity\" or \"pressure\""
                    ),
                );
                None
            }
        }
    }

    fn driver(
        &mut self,
        ctx: &Ctx,
        r: &RawResource,
        kind: Option<ResourceKind>,
    ) -> Option<DriverSpec> {
        let smbus = r.smbus.as_ref().is_some_and(|s| *s.get_ref());
        let active_low = r.active_low.as_ref().is_some_and(|s| *s.get_ref());
        match ctx.driver {
            "lm75" | "tmp75" | "tmp105" => {
                let model = match ctx.driver {
                    "lm75" => lm75::Model::Lm75,
                    "tmp75" => lm75::Model::Tmp75,
                    _ => lm75::Model::Tmp105,
                };
                let bus = self.i2c_bus(ctx, &r.bus);
                let address = self.address(ctx, &r.address);
                let resolution = match &r.resolution {
                    None => Some(None),
                    Some(v) => match u8::try_from(*v.get_ref())
                        .ok()
                        .and_then(lm75::Resolution::from_bits)
                    {
                        Some(res) => Some(Some(res)),
                        None => {
                            self.bad(
                                ctx,
                                &v.span(),
                                format!("`resolution` {} is not 9, 10, 11 or 12 bits", v.get_ref()),
                            );
                            None
                        }
                    },
                };
                Some(DriverSpec::Lm75 {
                    model,
                    bus: bus?,
                    address: address?,
                    resolution: resolution?,
                    smbus,
                })
            }
            "bme280" => {
                let bus = self.i2c_bus(ctx, &r.bus);
                let address = self.address(ctx, &r.address);
                Some(DriverSpec::Bme280 {
                    bus: bus?,
                    address: address?,
                    smbus,
                })
            }
            "gpio-output" | "gpio-input" => {
                let chip = self.gpio_chip(ctx, &r.chip);
                let line = match &r.line {
                    None => {
                        self.missing(
                            ctx,
                            "line",
                            " (the GPIO line offset on the chip, e.g. 17 for GPIO17)",
                        );
                        None
                    }
                    Some(l) => match u32::try_from(*l.get_ref()).ok().filter(|l| *l < 1024) {
                        Some(l) => Some(l),
                        None => {
                            self.bad(
                                ctx,
                                &l.span(),
                                format!(
                                    "`line` {} is not a GPIO line offset (0-1023)",
                                    l.get_ref()
                                ),
                            );
                            None
                        }
                    },
                };
                if ctx.driver == "gpio-output" {
                    let initial = self.initial_bool(ctx, &r.initial);
                    Some(DriverSpec::GpioOutput {
                        chip: chip?,
                        line: line?,
                        active_low,
                        initial: initial?,
                    })
                } else {
                    let bias = match &r.bias {
                        None => Some(Bias::AsIs),
                        Some(b) => match b.get_ref().as_str() {
                            "as-is" => Some(Bias::AsIs),
                            "pull-up" => Some(Bias::PullUp),
                            "pull-down" => Some(Bias::PullDown),
                            "disabled" => Some(Bias::Disabled),
                            other => {
                                self.bad(ctx, &b.span(), format!("`bias` {other:?} is not \"pull-up\", \"pull-down\", \"disabled\" or \"as-is\""));
                                None
                            }
                        },
                    };
                    let debounce = match &r.debounce {
                        None => Some(Duration::from_millis(20)),
                        Some(v) => self.duration(
                            ctx,
                            "debounce",
                            v,
                            Duration::ZERO,
                            Duration::from_secs(1),
                        ),
                    };
                    Some(DriverSpec::GpioInput {
                        chip: chip?,
                        line: line?,
                        active_low,
                        bias: bias?,
                        debounce: debounce?,
                    })
                }
            }
            "pwm-sysfs" | "pwm-rppal" => {
                let channel = match &r.channel {
                    None => {
                        self.missing(ctx, "channel", " (the PWM channel number)");
                        None
                    }
                    Some(c) => {
                        let max = if ctx.driver == "pwm-rppal" { 3 } else { 255 };
                        match u8::try_from(*c.get_ref()).ok().filter(|c| *c <= max) {
                            Some(c) => Some(c),
                            None => {
                                self.bad(
                                    ctx,
                                    &c.span(),
                                    format!(
                                        "`channel` {} is not a PWM channel (0-{max})",
                                        c.get_ref()
                                    ),
                                );
                                None
                            }
                        }
                    }
                };
                let frequency_hz = match &r.frequency {
                    None => Some(1000.0),
                    Some(v) => self.number(ctx, "frequency", v, 1.0, 100e6),
                };
                let initial = self.initial_percent(ctx, &r.initial);
                if ctx.driver == "pwm-sysfs" {
                    let chip = self.pwm_chip(ctx, &r.pwm_chip);
                    Some(DriverSpec::PwmSysfs {
                        chip: chip?,
                        channel: u32::from(channel?),
                        frequency_hz: frequency_hz?,
                        initial: initial?,
                    })
                } else {
                    // Optional: rppal picks the chip by Pi model unless told.
                    let chip = match &r.pwm_chip {
                        None => Some(None),
                        some => self.pwm_chip(ctx, some).map(Some),
                    };
                    Some(DriverSpec::PwmRppal {
                        chip: chip?,
                        channel: channel?,
                        frequency_hz: frequency_hz?,
                        initial: initial?,
                    })
                }
            }
            "sim-switch" => Some(DriverSpec::SimSwitch {
                initial: self.initial_bool(ctx, &r.initial)?,
            }),
            "sim-contact" => Some(DriverSpec::SimContact {
                initial: self.initial_bool(ctx, &r.initial)?,
            }),
            "sim-brightness" => Some(DriverSpec::SimBrightness {
                initial: self.initial_percent(ctx, &r.initial)?,
            }),
            _ => {
                // Simulated sensors.
                let (initial, step, min, max): (f64, f64, f64, f64) = match kind? {
                    ResourceKind::Humidity => (45.0, 0.5, 20.0, 80.0),
                    ResourceKind::Pressure => (1013.25, 0.2, 950.0, 1050.0),
                    _ => (21.0, 0.1, 15.0, 30.0),
                };
                let num =
                    |p: &mut Self, name: &str, v: &Option<Spanned<Value>>, default: f64| match v {
                        None => Some(default),
                        Some(v) => p.number(ctx, name, v, -1e6, 1e6),
                    };
                let min = num(self, "min", &r.min, min)?;
                let max = num(self, "max", &r.max, max)?;
                let step = num(self, "step", &r.step, step)?;
                let initial = num(self, "initial", &r.initial, initial.clamp(min, max))?;
                let span = r
                    .min
                    .as_ref()
                    .or(r.max.as_ref())
                    .or(r.initial.as_ref())
                    .map_or(ctx.table.clone(), Spanned::span);
                if min >= max || !(min..=max).contains(&initial) || step < 0.0 {
                    self.bad(ctx, &span, format!("need `min` < `max`, `initial` within them and `step` ≥ 0 (min {min}, max {max}, initial {initial}, step {step})"));
                    return None;
                }
                let seed = match &r.seed {
                    Some(s) => s.get_ref().unsigned_abs(),
                    // Deterministic per href (FNV-1a).
                    None => ctx.href.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                    }),
                };
                Some(DriverSpec::SimSensor(SimParams {
                    initial,
                    step,
                    min,
                    max,
                    seed,
                }))
            }
        }
    }

    fn i2c_bus(&mut self, ctx: &Ctx, v: &Option<Spanned<Value>>) -> Option<I2cBus> {
        let Some(v) = v else {
            self.missing(ctx, "bus", " (e.g. `bus = 1` for /dev/i2c-1)");
            return None;
        };
        let parsed = match v.get_ref() {
            Value::Integer(n) => u32::try_from(*n).ok().map(I2cBus::Number),
            Value::String(s) => {
                let name = s.strip_prefix("/dev/").unwrap_or(s);
                match name.strip_prefix("i2c-").and_then(|n| n.parse().ok()) {
                    Some(n) if !name.contains('/') => Some(I2cBus::Number(n)),
                    _ if s.starts_with('/') => Some(I2cBus::Path(PathBuf::from(s))),
                    _ => None,
                }
            }
            Value::Table(t) if t.len() == 1 => match t.iter().next() {
                Some((k, Value::String(s))) if k == "device" => Some(I2cBus::Device(s.clone())),
                Some((k, Value::String(s))) if k == "name" => Some(I2cBus::Name(s.clone())),
                _ => None,
            },
            _ => None,
        };
        if parsed.is_none() {
            self.bad(ctx, &v.span(), format!("`bus` {} is not a bus number, a /dev/i2c-N path, {{ device = \"...\" }} or {{ name = \"...\" }}", show(v.get_ref())));
        }
        parsed
    }

    fn gpio_chip(&mut self, ctx: &Ctx, v: &Option<Spanned<Value>>) -> Option<GpioChip> {
        let Some(v) = v else {
            self.missing(
                ctx,
                "chip",
                " (e.g. `chip = 0` or `chip = { label = \"pinctrl-bcm2711\" }`)",
            );
            return None;
        };
        let parsed = match v.get_ref() {
            Value::Integer(n) => u32::try_from(*n).ok().map(GpioChip::Number),
            Value::String(s) => {
                let name = s.strip_prefix("/dev/").unwrap_or(s);
                match name.strip_prefix("gpiochip").and_then(|n| n.parse().ok()) {
                    Some(n) => Some(GpioChip::Number(n)),
                    None if s.starts_with('/') => Some(GpioChip::Path(PathBuf::from(s))),
                    None => None,
                }
            }
            Value::Table(t) if t.len() == 1 => match t.iter().next() {
                Some((k, Value::String(s))) if k == "label" => Some(GpioChip::Label(s.clone())),
                Some((k, Value::String(s))) if k == "path" => {
                    Some(GpioChip::Path(PathBuf::from(s)))
                }
                _ => None,
            },
            _ => None,
        };
        if parsed.is_none() {
            self.bad(ctx, &v.span(), format!("`chip` {} is not a chip number, \"gpiochipN\", a /dev path or {{ label = \"...\" }}", show(v.get_ref())));
        }
        parsed
    }

    fn pwm_chip(&mut self, ctx: &Ctx, v: &Option<Spanned<Value>>) -> Option<PwmChip> {
        let Some(v) = v else {
            self.missing(
                ctx,
                "pwm_chip",
                " (e.g. `pwm_chip = 0` or `pwm_chip = { device = \"fe20c000.pwm\" }`)",
            );
            return None;
        };
        let parsed = match v.get_ref() {
            Value::Integer(n) => u32::try_from(*n).ok().map(PwmChip::Number),
            Value::String(s) => match s.strip_prefix("pwmchip").and_then(|n| n.parse().ok()) {
                Some(n) => Some(PwmChip::Number(n)),
                None if s.starts_with('/') => Some(PwmChip::Path(PathBuf::from(s))),
                None => None,
            },
            Value::Table(t) if t.len() == 1 => match t.iter().next() {
                Some((k, Value::String(s))) if k == "device" => Some(PwmChip::Device(s.clone())),
                _ => None,
            },
            _ => None,
        };
        if parsed.is_none() {
            self.bad(ctx, &v.span(), format!("`pwm_chip` {} is not a chip number, \"pwmchipN\", a path or {{ device = \"...\" }}", show(v.get_ref())));
        }
        parsed
    }

    fn address(&mut self, ctx: &Ctx, v: &Option<Spanned<i64>>) -> Option<u8> {
        let Some(v) = v else {
            self.missing(ctx, "address", " (the 7-bit I2C address, e.g. 0x48)");
            return None;
        };
        match u8::try_from(*v.get_ref())
            .ok()
            .filter(|a| (0x03..=0x77).contains(a))
        {
            Some(a) => Some(a),
            None => {
                let span = v.span();
                self.problem(
                    ProblemKind::BadAddress,
                    &span,
                    format!(
                        "resource {:?}: `address` {:#x} is not a 7-bit I2C device address (0x03-0x77)",
                        ctx.href,
                        v.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn initial_bool(&mut self, ctx: &Ctx, v: &Option<Spanned<Value>>) -> Option<bool> {
        match v {
            None => Some(false),
            Some(v) => match v.get_ref() {
                Value::Boolean(b) => Some(*b),
                other => {
                    self.bad(
                        ctx,
                        &v.span(),
                        format!("`initial` must be true or false, not {}", show(other)),
                    );
                    None
                }
            },
        }
    }

    fn initial_percent(&mut self, ctx: &Ctx, v: &Option<Spanned<Value>>) -> Option<u8> {
        match v {
            None => Some(0),
            Some(v) => match v.get_ref() {
                Value::Integer(i) if (0..=100).contains(i) => u8::try_from(*i).ok(),
                other => {
                    self.bad(
                        ctx,
                        &v.span(),
                        format!("`initial` must be an integer 0-100, not {}", show(other)),
                    );
                    None
                }
            },
        }
    }

    fn number(
        &mut self,
        ctx: &Ctx,
        field: &str,
        v: &Spanned<Value>,
        min: f64,
        max: f64,
    ) -> Option<f64> {
        let n = match v.get_ref() {
            Value::Integer(i) => Some(*i as f64),
            Value::Float(f) if f.is_finite() => Some(*f),
            _ => None,
        };
        match n {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.bad(
                    ctx,
                    &v.span(),
                    format!(
                        "`{field}` must be a number from {min} to {max}, not {}",
                        show(v.get_ref())
                    ),
                );
                None
            }
        }
    }

    fn duration(
        &mut self,
        ctx: &Ctx,
        field: &str,
        v: &Spanned<Value>,
        min: Duration,
        max: Duration,
    ) -> Option<Duration> {
        let d = match v.get_ref() {
            Value::Integer(i) => u64::try_from(*i).ok().map(Duration::from_secs),
            Value::Float(f) => Duration::try_from_secs_f64(*f).ok(),
            Value::String(s) => parse_duration(s),
            _ => None,
        };
        match d {
            Some(d) if d >= min && d <= max => Some(d),
            _ => {
                self.bad(
                    ctx,
                    &v.span(),
                    format!(
                        "`{field}` {} is not a duration from {min:?} to {max:?} (like \"500ms\", \"5s\", \"1m\", or seconds)",
                        show(v.get_ref())
                    ),
                );
                None
            }
        }
    }
}

struct Ctx<'a> {
    href: &'a str,
    driver: &'a str,
    /// Where "missing field" problems point: the start of the resource's table.
    table: Range<usize>,
}

/// A TOML value as it would be written, for messages.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Integer(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Boolean(b) => b.to_string(),
        Value::Datetime(d) => format!("the date {d}"),
        Value::Array => "an array".to_owned(),
        Value::Table(_) => "a table".to_owned(),
    }
}

/// Parses `"250ms"`, `"5s"`, `"1.5s"`, `"2m"`, `"1h"`, `"100us"`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
    }
}
