//! PWM brightness as `oic.r.light.brightness`.
//!
//! [`Brightness`] maps `brightness` 0-100 onto the duty cycle of any [`PwmOutput`] and reads it
//! back from the hardware for a GET. [`SysfsPwm`] drives a channel of the Linux PWM sysfs
//! interface (`/sys/class/pwm/pwmchipN/pwmM/{period,duty_cycle,enable}`, after writing `M` to
//! `export`); its root directory is a parameter, so tests run it against a temporary
//! directory. [`RppalPwm`] drives a Raspberry Pi channel through rppal (cargo feature `rppal`,
//! `open_rppal`); it reaches rppal only through [`RppalChannel`], so it is tested against a
//! mock here and compiled against rppal in the feature build.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use ocf::resource::{Backend, Props, ResourceError, Value};

use crate::props::{integer, single_writable, type_name};
use crate::DriverError;

/// A PWM channel whose period is fixed and whose duty cycle can be set and read back.
pub trait PwmOutput {
    /// The period in nanoseconds.
    fn period_ns(&mut self) -> Result<u64, DriverError>;
    /// The active time per period in nanoseconds, read from the hardware.
    fn duty_ns(&mut self) -> Result<u64, DriverError>;
    /// Set the active time per period (≤ the period).
    fn set_duty_ns(&mut self, duty: u64) -> Result<(), DriverError>;
}

impl<P: PwmOutput + ?Sized> PwmOutput for Box<P> {
    fn period_ns(&mut self) -> Result<u64, DriverError> {
        (**self).period_ns()
    }
    fn duty_ns(&mut self) -> Result<u64, DriverError> {
        (**self).duty_ns()
    }
    fn set_duty_ns(&mut self, duty: u64) -> Result<(), DriverError> {
        (**self).set_duty_ns(duty)
    }
}

/// An `oic.r.light.brightness` backend over a PWM channel.
#[derive(Debug)]
pub struct Brightness<P> {
    pwm: P,
}

impl<P: PwmOutput> Brightness<P> {
    /// Wraps a channel (its current duty cycle is left as it is).
    pub fn new(pwm: P) -> Self {
        Brightness { pwm }
    }

    /// Set the brightness, 0-100 (values above 100 are clamped).
    pub fn set(&mut self, percent: u8) -> Result<(), DriverError> {
        let period = self.pwm.period_ns()?;
        let duty = (u128::from(period) * u128::from(percent.min(100)) + 50) / 100;
        self.pwm.set_duty_ns(duty as u64)
    }

    /// The brightness, 0-100, from the hardware's duty cycle.
    pub fn get(&mut self) -> Result<u8, DriverError> {
        let period = self.pwm.period_ns()?;
        if period == 0 {
            return Err(DriverError::new("PWM period is 0"));
        }
        let duty = self.pwm.duty_ns()?.min(period);
        Ok(((u128::from(duty) * 100 + u128::from(period) / 2) / u128::from(period)) as u8)
    }

    /// The channel.
    pub fn into_inner(self) -> P {
        self.pwm
    }
}

impl<P: PwmOutput> Backend for Brightness<P> {
    fn retrieve(&mut self) -> Result<Props, ResourceError> {
        let b = self
            .get()
            .map_err(|e| ResourceError::Unavailable(e.to_string()))?;
        Ok([("brightness".to_owned(), integer(i64::from(b)))].into())
    }

    fn update(&mut self, props: &Props) -> Result<(), ResourceError> {
        let value = match single_writable(props, "brightness", &[])? {
            None => return Ok(()),
            Some(v) => v,
        };
        let percent = match value {
            Value::Integer(i) => u8::try_from(i128::from(*i))
                .ok()
                .filter(|p| *p <= 100)
                .ok_or_else(|| {
                    ResourceError::BadRequest(format!(
                        "\"brightness\" must be 0-100, not {}",
                        i128::from(*i)
                    ))
                })?,
            other => {
                return Err(ResourceError::BadRequest(format!(
                    "\"brightness\" must be an integer 0-100, not {}",
                    type_name(other)
                )))
            }
        };
        self.set(percent)
            .map_err(|e| ResourceError::Unavailable(e.to_string()))
    }
}

/// The default sysfs PWM root.
pub const SYSFS_PWM_ROOT: &str = "/sys/class/pwm";

/// How long [`SysfsPwm::open`] waits for the kernel (and udev) to create the channel directory
/// after an export.
const EXPORT_WAIT: Duration = Duration::from_millis(500);

fn read_u64(path: &Path) -> Result<u64, DriverError> {
    let text = fs::read_to_string(path)
        .map_err(|e| DriverError::new(format!("read {}: {e}", path.display())))?;
    text.trim().parse().map_err(|_| {
        DriverError::new(format!(
            "read {}: not a number: {:?}",
            path.display(),
            text.trim()
        ))
    })
}

fn write_str(path: &Path, value: &str) -> Result<(), DriverError> {
    fs::write(path, value).map_err(|e| DriverError::new(format!("write {}: {e}", path.display())))
}

/// Finds the `pwmchipN` directory under `root` whose `device` link points at the platform
/// device `device` (e.g. `1f00098000.pwm` for the Pi 5's RP1 PWM0): the chip number changes
/// between kernels, the device name does not.
pub fn find_chip_by_device(root: &Path, device: &str) -> Result<PathBuf, DriverError> {
    let entries = fs::read_dir(root)
        .map_err(|e| DriverError::new(format!("read {}: {e}", root.display())))?;
    let mut seen = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("pwmchip") {
            continue;
        }
        let target = fs::read_link(entry.path().join("device")).ok();
        let dev = target
            .as_deref()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned());
        if dev.as_deref() == Some(device) {
            return Ok(entry.path());
        }
        seen.push(format!("{name} ({})", dev.as_deref().unwrap_or("?")));
    }
    seen.sort();
    Err(DriverError::new(format!(
        "no PWM chip for device {device:?} in {} (found: {}); is the PWM overlay enabled?",
        root.display(),
        if seen.is_empty() {
            "none".to_owned()
        } else {
            seen.join(", ")
        }
    )))
}

/// A channel of the Linux PWM sysfs interface.
#[derive(Debug)]
pub struct SysfsPwm {
    dir: PathBuf,
    period_ns: u64,
}

impl SysfsPwm {
    /// Exports channel `channel` of the chip directory `chip_dir` (e.g.
    /// `/sys/class/pwm/pwmchip0`) if needed, sets its period, and enables it. The duty cycle is
    /// kept if it fits the new period, else set to 0.
    pub fn open(chip_dir: &Path, channel: u32, period_ns: u64) -> Result<Self, DriverError> {
        if period_ns == 0 {
            return Err(DriverError::new("PWM period must not be 0"));
        }
        if !chip_dir.is_dir() {
            return Err(DriverError::new(format!(
                "{} does not exist: is the PWM overlay enabled (dtoverlay=pwm)?",
                chip_dir.display()
            )));
        }
        let dir = chip_dir.join(format!("pwm{channel}"));
        if !dir.join("period").exists() {
            if !dir.exists() {
                write_str(&chip_dir.join("export"), &channel.to_string())?;
            }
            let mut waited = Duration::ZERO;
            while !dir.join("period").exists() {
                if waited >= EXPORT_WAIT {
                    return Err(DriverError::new(format!(
                        "{} did not appear after exporting channel {channel}",
                        dir.display()
                    )));
                }
                thread::sleep(Duration::from_millis(10));
                waited += Duration::from_millis(10);
            }
        }
        // The kernel refuses a period shorter than the current duty cycle.
        let duty_path = dir.join("duty_cycle");
        if read_u64(&duty_path).unwrap_or(0) > period_ns {
            write_str(&duty_path, "0")?;
        }
        write_str(&dir.join("period"), &period_ns.to_string())?;
        write_str(&dir.join("enable"), "1")?;
        Ok(SysfsPwm { dir, period_ns })
    }

    /// The channel directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl PwmOutput for SysfsPwm {
    fn period_ns(&mut self) -> Result<u64, DriverError> {
        // Read back: someone may have changed it under us.
        let p = read_u64(&self.dir.join("period"))?;
        self.period_ns = p;
        Ok(p)
    }

    fn duty_ns(&mut self) -> Result<u64, DriverError> {
        read_u64(&self.dir.join("duty_cycle"))
    }

    fn set_duty_ns(&mut self, duty: u64) -> Result<(), DriverError> {
        write_str(
            &self.dir.join("duty_cycle"),
            &duty.min(self.period_ns).to_string(),
        )
    }
}

/// The number `N` of a `.../pwmchipN` directory: rppal addresses chips by number under
/// `/sys/class/pwm`.
pub fn chip_number(chip_dir: &Path) -> Result<u8, DriverError> {
    chip_dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("pwmchip"))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            DriverError::new(format!(
                "{} is not a pwmchipN directory",
                chip_dir.display()
            ))
        })
}

/// The calls of rppal's `Pwm` that [`RppalPwm`] makes: the seam between the brightness backend
/// and the Pi's hardware, so the backend runs against a mock on any machine. With the `rppal`
/// feature, `rppal::pwm::Pwm` implements it.
pub trait RppalChannel {
    /// The channel's error (rppal's `pwm::Error`).
    type Error: fmt::Display;
    /// The period.
    fn period(&self) -> Result<Duration, Self::Error>;
    /// Set the period.
    fn set_period(&self, period: Duration) -> Result<(), Self::Error>;
    /// The active time per period.
    fn pulse_width(&self) -> Result<Duration, Self::Error>;
    /// Set the active time per period.
    fn set_pulse_width(&self, pulse_width: Duration) -> Result<(), Self::Error>;
    /// Start the output.
    fn enable(&self) -> Result<(), Self::Error>;
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Raspberry Pi hardware PWM through rppal, as a [`PwmOutput`] (board driver `pwm-rppal`).
///
/// rppal picks the PWM chip for the Pi model it detects (`pwmchip0` up to the Pi 4, `pwmchip2`
/// on the Pi 5, whose RP1 PWM0 has four channels: GPIO12, 13, 18, 19 are channels 0-3), waits
/// after an export until udev has given the channel's files to the `gpio` group, and disables
/// and unexports the channel when dropped, so the output stops with the agent.
#[derive(Debug)]
pub struct RppalPwm<P> {
    pwm: P,
    label: String,
    period_ns: u64,
}

impl<P: RppalChannel> RppalPwm<P> {
    /// Takes over an opened channel: sets the period and enables it. The pulse width is kept
    /// if it fits the period, else set to 0 first: the kernel refuses a period shorter than
    /// the duty cycle (Documentation/ABI/testing/sysfs-class-pwm). `label` names the channel in
    /// errors.
    pub fn start(pwm: P, label: impl Into<String>, period_ns: u64) -> Result<Self, DriverError> {
        let label = label.into();
        if period_ns == 0 {
            return Err(DriverError::new(format!(
                "{label}: PWM period must not be 0"
            )));
        }
        let fail = |what: &str, e: P::Error| DriverError::new(format!("{label}: {what}: {e}"));
        let pulse = pwm.pulse_width().map_err(|e| fail("read pulse width", e))?;
        if ns(pulse) > period_ns {
            pwm.set_pulse_width(Duration::ZERO)
                .map_err(|e| fail("set pulse width", e))?;
        }
        pwm.set_period(Duration::from_nanos(period_ns))
            .map_err(|e| fail("set period", e))?;
        pwm.enable().map_err(|e| fail("enable", e))?;
        Ok(RppalPwm {
            pwm,
            label,
            period_ns,
        })
    }

    /// The channel.
    pub fn channel(&self) -> &P {
        &self.pwm
    }

    fn fail(&self, what: &str, e: P::Error) -> DriverError {
        DriverError::new(format!("{}: {what}: {e}", self.label))
    }
}

impl<P: RppalChannel> PwmOutput for RppalPwm<P> {
    fn period_ns(&mut self) -> Result<u64, DriverError> {
        // Read back: someone may have changed it under us.
        let p = self.pwm.period().map_err(|e| self.fail("read period", e))?;
        self.period_ns = ns(p);
        Ok(self.period_ns)
    }

    fn duty_ns(&mut self) -> Result<u64, DriverError> {
        self.pwm
            .pulse_width()
            .map(ns)
            .map_err(|e| self.fail("read pulse width", e))
    }

    fn set_duty_ns(&mut self, duty: u64) -> Result<(), DriverError> {
        self.pwm
            .set_pulse_width(Duration::from_nanos(duty.min(self.period_ns)))
            .map_err(|e| self.fail("set pulse width", e))
    }
}

#[cfg(feature = "rppal")]
impl RppalChannel for rppal::pwm::Pwm {
    type Error = rppal::pwm::Error;
    fn period(&self) -> Result<Duration, Self::Error> {
        rppal::pwm::Pwm::period(self)
    }
    fn set_period(&self, period: Duration) -> Result<(), Self::Error> {
        rppal::pwm::Pwm::set_period(self, period)
    }
    fn pulse_width(&self) -> Result<Duration, Self::Error> {
        rppal::pwm::Pwm::pulse_width(self)
    }
    fn set_pulse_width(&self, pulse_width: Duration) -> Result<(), Self::Error> {
        rppal::pwm::Pwm::set_pulse_width(self, pulse_width)
    }
    fn enable(&self) -> Result<(), Self::Error> {
        rppal::pwm::Pwm::enable(self)
    }
}

/// Opens rppal's PWM channel `channel` at `frequency_hz`: on the chip rppal picks for the
/// Raspberry Pi model it detects, or on `/sys/class/pwm/pwmchip{pwm_chip}` when given (rppal
/// 0.22 takes `pwmchip2` on every Pi 5, but RP1's PWM0 is `pwmchip0` on kernels from 6.6.45
/// on). Needs the `rppal` feature.
#[cfg(feature = "rppal")]
pub fn open_rppal(
    channel: u8,
    pwm_chip: Option<u8>,
    frequency_hz: f64,
) -> Result<RppalPwm<rppal::pwm::Pwm>, DriverError> {
    use rppal::pwm::{Channel, Pwm};
    let (pwm, label) = match pwm_chip {
        Some(chip) => (
            Pwm::with_pwmchip(chip, channel),
            format!("rppal PWM pwmchip{chip} channel {channel}"),
        ),
        None => {
            let label = format!("rppal PWM channel {channel}");
            let model = rppal::system::DeviceInfo::new().map_err(|e| {
                DriverError::new(format!(
                    "{label}: {e}: rppal picks the PWM chip by Raspberry Pi model; on another board use driver \"pwm-sysfs\""
                ))
            })?;
            let ch = Channel::try_from(channel)
                .map_err(|e| DriverError::new(format!("{label}: {e}")))?;
            (Pwm::new(ch), format!("{label} ({})", model.model()))
        }
    };
    let pwm = pwm.map_err(|e| {
        let hint = match &e {
            rppal::pwm::Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
                " (is the PWM overlay enabled, e.g. dtoverlay=pwm,pin=18,func=2?)"
            }
            _ => "",
        };
        DriverError::new(format!("{label}: {e}{hint}"))
    })?;
    let period_ns = (1e9 / frequency_hz).round().max(1.0) as u64;
    RppalPwm::start(pwm, label, period_ns)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::props::props;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh empty directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "ocf-drivers-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
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

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap().trim().to_owned()
    }

    fn fake_channel(chip: &Path, ch: u32, period: &str, duty: &str) {
        let d = chip.join(format!("pwm{ch}"));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("period"), period).unwrap();
        fs::write(d.join("duty_cycle"), duty).unwrap();
        fs::write(d.join("enable"), "0").unwrap();
    }

    #[test]
    fn exported_channel_brightness_roundtrip() {
        let root = TempDir::new("pwm");
        let chip = root.0.join("pwmchip0");
        fake_channel(&chip, 0, "0\n", "0\n");
        let pwm = SysfsPwm::open(&chip, 0, 1_000_000).unwrap();
        assert_eq!(read(&chip.join("pwm0/period")), "1000000");
        assert_eq!(read(&chip.join("pwm0/enable")), "1");
        assert!(
            !chip.join("export").exists(),
            "already exported: no export write"
        );

        let mut b = Brightness::new(pwm);
        b.update(&props([("brightness", integer(37))])).unwrap();
        assert_eq!(read(&chip.join("pwm0/duty_cycle")), "370000");
        assert_eq!(b.retrieve().unwrap(), props([("brightness", integer(37))]));
        // The GET reads the hardware: someone else wrote the duty cycle.
        fs::write(chip.join("pwm0/duty_cycle"), "996000\n").unwrap();
        assert_eq!(b.retrieve().unwrap(), props([("brightness", integer(100))]));
        b.update(&props([("brightness", integer(0))])).unwrap();
        assert_eq!(read(&chip.join("pwm0/duty_cycle")), "0");
    }

    #[test]
    fn export_waits_for_the_kernel_and_shrinks_duty_first() {
        let root = TempDir::new("pwm-export");
        let chip = root.0.join("pwmchip2");
        fs::create_dir_all(&chip).unwrap();
        // Play the kernel: create pwm2 once "2" was written to export.
        let chip2 = chip.clone();
        let kernel = thread::spawn(move || {
            for _ in 0..200 {
                if fs::read_to_string(chip2.join("export")).is_ok_and(|s| s.trim() == "2") {
                    fake_channel(&chip2, 2, "20000000", "15000000");
                    return true;
                }
                thread::sleep(Duration::from_millis(5));
            }
            false
        });
        let pwm = SysfsPwm::open(&chip, 2, 1_000_000).unwrap();
        assert!(kernel.join().unwrap());
        assert_eq!(pwm.dir(), chip.join("pwm2"));
        assert_eq!(read(&chip.join("pwm2/duty_cycle")), "0");
        assert_eq!(read(&chip.join("pwm2/period")), "1000000");
    }

    #[test]
    fn open_errors_name_the_path() {
        let root = TempDir::new("pwm-missing");
        let e = SysfsPwm::open(&root.0.join("pwmchip9"), 0, 1000).unwrap_err();
        assert!(e.message().contains("pwmchip9 does not exist"), "{e}");
        let chip = root.0.join("pwmchip0");
        fs::create_dir_all(&chip).unwrap();
        let e = SysfsPwm::open(&chip, 1, 1000).unwrap_err();
        assert!(e.message().contains("pwm1 did not appear"), "{e}");
    }

    #[test]
    fn find_chip_by_device_name() {
        let root = TempDir::new("pwm-find");
        for (chip, dev) in [
            ("pwmchip0", "1f00098000.pwm"),
            ("pwmchip1", "1f0009c000.pwm"),
        ] {
            let d = root.0.join(chip);
            fs::create_dir_all(&d).unwrap();
            std::os::unix::fs::symlink(
                format!("../../devices/platform/axi/{dev}"),
                d.join("device"),
            )
            .unwrap();
        }
        assert_eq!(
            find_chip_by_device(&root.0, "1f0009c000.pwm").unwrap(),
            root.0.join("pwmchip1")
        );
        let e = find_chip_by_device(&root.0, "fe20c000.pwm").unwrap_err();
        assert!(
            e.message()
                .contains("found: pwmchip0 (1f00098000.pwm), pwmchip1 (1f0009c000.pwm)"),
            "{e}"
        );
    }

    #[test]
    fn bad_brightness_bodies() {
        let root = TempDir::new("pwm-bad");
        let chip = root.0.join("pwmchip0");
        fake_channel(&chip, 0, "1000", "500");
        let mut b = Brightness::new(SysfsPwm::open(&chip, 0, 1000).unwrap());
        for (body, msg) in [
            (
                props([("brightness", integer(101))]),
                "\"brightness\" must be 0-100, not 101",
            ),
            (
                props([("brightness", integer(-1))]),
                "\"brightness\" must be 0-100, not -1",
            ),
            (
                props([("brightness", Value::Float(50.0))]),
                "\"brightness\" must be an integer 0-100, not a number",
            ),
            (
                props([("brightness", integer(5)), ("value", Value::Bool(true))]),
                "unknown property \"value\" (this resource accepts only \"brightness\")",
            ),
        ] {
            assert_eq!(b.update(&body), Err(ResourceError::BadRequest(msg.into())));
        }
        assert_eq!(
            read(&chip.join("pwm0/duty_cycle")),
            "500",
            "nothing changed"
        );
        // A vanished sysfs file is a 5.03, not a panic.
        fs::remove_file(chip.join("pwm0/period")).unwrap();
        assert!(matches!(b.retrieve(), Err(ResourceError::Unavailable(_))));
    }

    /// rppal's `Pwm` as the kernel's sysfs PWM behaves: state behind `&self`, every call
    /// logged, a period shorter than the pulse width refused, and one call made to fail on
    /// demand.
    #[derive(Debug, Default)]
    struct MockChannel {
        period: std::cell::Cell<u64>,
        pulse: std::cell::Cell<u64>,
        enabled: std::cell::Cell<bool>,
        calls: std::cell::RefCell<Vec<String>>,
        fail: std::cell::Cell<Option<&'static str>>,
    }

    impl MockChannel {
        fn new(period: u64, pulse: u64) -> Self {
            let m = MockChannel::default();
            m.period.set(period);
            m.pulse.set(pulse);
            m
        }
        fn call(&self, c: String) -> Result<(), String> {
            let name = c.split('(').next().unwrap_or("").to_owned();
            self.calls.borrow_mut().push(c);
            if self.fail.get() == Some(name.as_str()) {
                return Err("I/O error: Permission denied (os error 13)".into());
            }
            Ok(())
        }
        fn take_calls(&self) -> Vec<String> {
            std::mem::take(&mut *self.calls.borrow_mut())
        }
    }

    impl RppalChannel for MockChannel {
        type Error = String;
        fn period(&self) -> Result<Duration, String> {
            self.call("period".into())?;
            Ok(Duration::from_nanos(self.period.get()))
        }
        fn set_period(&self, period: Duration) -> Result<(), String> {
            self.call(format!("set_period({})", ns(period)))?;
            if ns(period) < self.pulse.get() {
                return Err("I/O error: Invalid argument (os error 22)".into());
            }
            self.period.set(ns(period));
            Ok(())
        }
        fn pulse_width(&self) -> Result<Duration, String> {
            self.call("pulse_width".into())?;
            Ok(Duration::from_nanos(self.pulse.get()))
        }
        fn set_pulse_width(&self, w: Duration) -> Result<(), String> {
            self.call(format!("set_pulse_width({})", ns(w)))?;
            if ns(w) > self.period.get() {
                return Err("I/O error: Invalid argument (os error 22)".into());
            }
            self.pulse.set(ns(w));
            Ok(())
        }
        fn enable(&self) -> Result<(), String> {
            self.call("enable".into())?;
            self.enabled.set(true);
            Ok(())
        }
    }

    #[test]
    fn rppal_start_shrinks_the_pulse_before_the_period_then_enables() {
        // The last user left 20 ms / 15 ms; we want 1 kHz.
        let pwm =
            RppalPwm::start(MockChannel::new(20_000_000, 15_000_000), "ch2", 1_000_000).unwrap();
        let m = pwm.channel();
        assert_eq!(
            m.take_calls(),
            [
                "pulse_width",
                "set_pulse_width(0)",
                "set_period(1000000)",
                "enable"
            ]
        );
        assert!(m.enabled.get());
        assert_eq!(m.period.get(), 1_000_000);

        // A pulse that fits the new period is kept.
        let pwm = RppalPwm::start(MockChannel::new(2_000_000, 300_000), "ch0", 1_000_000).unwrap();
        assert_eq!(
            pwm.channel().take_calls(),
            ["pulse_width", "set_period(1000000)", "enable"]
        );
        assert_eq!(pwm.channel().pulse.get(), 300_000);
    }

    #[test]
    fn rppal_brightness_roundtrip_reads_the_hardware() {
        let pwm = RppalPwm::start(MockChannel::new(0, 0), "ch0", 1_000_000).unwrap();
        pwm.channel().take_calls();
        let mut b = Brightness::new(pwm);
        b.update(&props([("brightness", integer(37))])).unwrap();
        let pwm = b.into_inner();
        assert_eq!(
            pwm.channel().take_calls(),
            ["period", "set_pulse_width(370000)"]
        );
        pwm.channel().pulse.set(996_000);
        let mut b = Brightness::new(pwm);
        assert_eq!(b.retrieve().unwrap(), props([("brightness", integer(100))]));
        // Someone shortened the period under us: the duty cycle is clamped to it.
        let mut pwm = b.into_inner();
        pwm.channel().pulse.set(0);
        pwm.channel().period.set(500_000);
        pwm.period_ns().unwrap();
        pwm.set_duty_ns(800_000).unwrap();
        assert_eq!(pwm.channel().pulse.get(), 500_000);
    }

    #[test]
    fn rppal_errors_name_the_channel_and_are_unavailable() {
        let m = MockChannel::new(0, 0);
        m.fail.set(Some("enable"));
        let e = RppalPwm::start(m, "rppal PWM channel 2 (Raspberry Pi 5)", 1_000_000).unwrap_err();
        assert_eq!(
            e.message(),
            "rppal PWM channel 2 (Raspberry Pi 5): enable: I/O error: Permission denied (os error 13)"
        );
        assert!(RppalPwm::start(MockChannel::new(0, 0), "ch", 0).is_err());

        let pwm = RppalPwm::start(MockChannel::new(0, 0), "ch0", 1_000_000).unwrap();
        pwm.channel().fail.set(Some("period"));
        let mut b = Brightness::new(pwm);
        assert_eq!(
            b.retrieve(),
            Err(ResourceError::Unavailable(
                "ch0: read period: I/O error: Permission denied (os error 13)".into()
            ))
        );
        assert!(matches!(
            b.update(&props([("brightness", integer(5))])),
            Err(ResourceError::Unavailable(m)) if m.starts_with("ch0: read period")
        ));
    }

    #[test]
    fn chip_numbers_from_directories() {
        assert_eq!(
            chip_number(Path::new("/sys/class/pwm/pwmchip2")).unwrap(),
            2
        );
        assert_eq!(chip_number(Path::new("pwmchip0")).unwrap(), 0);
        let e = chip_number(Path::new("/sys/class/pwm/pwm0")).unwrap_err();
        assert_eq!(
            e.message(),
            "/sys/class/pwm/pwm0 is not a pwmchipN directory"
        );
        assert!(chip_number(Path::new("/sys/class/pwm/pwmchip300")).is_err());
    }

    /// The real rppal, on whatever machine runs the tests: off a Raspberry Pi it cannot pick a
    /// chip, and a chip that does not exist is named with the overlay hint.
    #[cfg(feature = "rppal")]
    #[test]
    fn rppal_open_errors_are_clear() {
        if rppal::system::DeviceInfo::new().is_err() {
            let e = open_rppal(0, None, 1000.0).unwrap_err();
            assert!(
                e.message().starts_with("rppal PWM channel 0: Unknown Raspberry Pi model: rppal picks the PWM chip by Raspberry Pi model; on another board use driver \"pwm-sysfs\""),
                "{e}"
            );
        }
        let e = open_rppal(1, Some(250), 1000.0).unwrap_err();
        assert!(
            e.message()
                .starts_with("rppal PWM pwmchip250 channel 1: I/O error: "),
            "{e}"
        );
        assert!(
            e.message()
                .ends_with("(is the PWM overlay enabled, e.g. dtoverlay=pwm,pin=18,func=2?)"),
            "{e}"
        );
    }
}
