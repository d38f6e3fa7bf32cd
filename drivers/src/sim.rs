//! Simulated hardware for `--board sim`: sensors that drift with a deterministic, seedable
//! random walk, and in-memory pins and PWM channels for the actuators.
//!
//! Simulated resources go through the same adapters as real ones ([`Switch`](crate::switch::Switch)
//! over a [`SimPin`], [`Brightness`](crate::pwm::Brightness) over a [`SimPwm`], a
//! [`SensorTask`](crate::sampler::SensorTask) over a [`SimSensor`]), so the daemon and the
//! end-to-end tests exercise the real code paths. Each simulated resource has a [`SimControl`]
//! through which a test (or a debug endpoint) sets its value or injects a fault.
//!
//! ```
//! use ocf_drivers::board::SimParams;
//! use ocf_drivers::kind::ResourceKind;
//! use ocf_drivers::sensor::Sensor;
//! use ocf_drivers::sim::SimSensor;
//!
//! let params = SimParams { initial: 21.0, step: 0.1, min: 15.0, max: 30.0, seed: 7 };
//! let mut t = SimSensor::new(ResourceKind::Temperature, params);
//! let control = t.control();
//! let first = t.read().unwrap().value;
//! assert!((first - 21.0).abs() <= 0.11);
//! control.set_fault(Some("unplugged"));
//! assert!(t.read().is_err());
//! control.set_fault(None);
//! control.set_value(25.0);
//! assert!((t.read().unwrap().value - 25.0).abs() <= 0.11);
//! ```

use std::sync::{Arc, Mutex, MutexGuard};

use embedded_hal::digital::{ErrorType, OutputPin, StatefulOutputPin};

use crate::board::SimParams;
use crate::kind::{contact_props, humidity_props, pressure_props, temperature_props, ResourceKind};
use crate::props::round_to;
use crate::pwm::PwmOutput;
use crate::sensor::{Reading, Sensor};
use crate::DriverError;

/// SplitMix64: tiny, fast, and the same sequence for the same seed everywhere.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        SimRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn next_signed_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

#[derive(Debug)]
struct SimState {
    value: f64,
    fault: Option<String>,
}

/// The test/debug handle of a simulated resource. Cloning shares it.
///
/// The value's meaning depends on the resource: the quantity for sensors (°C, %, hPa), `1.0` /
/// `0.0` for a switch's pin level and a contact's open/closed state, and the duty cycle
/// fraction 0-1 for a brightness.
#[derive(Debug, Clone)]
pub struct SimControl(Arc<Mutex<SimState>>);

impl SimControl {
    fn new(value: f64) -> Self {
        SimControl(Arc::new(Mutex::new(SimState { value, fault: None })))
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current value.
    pub fn value(&self) -> f64 {
        self.lock().value
    }

    /// Set the value (a sensor drifts on from there).
    pub fn set_value(&self, value: f64) {
        self.lock().value = value;
    }

    /// Make every access fail with `fault` (a simulated bus error), or work again with `None`.
    pub fn set_fault(&self, fault: Option<&str>) {
        self.lock().fault = fault.map(str::to_owned);
    }

    fn check(&self, what: &str) -> Result<MutexGuard<'_, SimState>, DriverError> {
        let s = self.lock();
        match &s.fault {
            Some(f) => Err(DriverError::new(format!("simulated {what}: {f}"))),
            None => Ok(s),
        }
    }
}

/// A simulated sensor: temperature, humidity or pressure drifting by up to `step` per read
/// within `min..=max`, or a contact that only changes through its [`SimControl`].
#[derive(Debug)]
pub struct SimSensor {
    kind: ResourceKind,
    params: SimParams,
    rng: SimRng,
    control: SimControl,
}

impl SimSensor {
    /// A sensor of `kind` (a contact starts open when `params.initial` ≥ 0.5).
    pub fn new(kind: ResourceKind, params: SimParams) -> Self {
        SimSensor {
            kind,
            rng: SimRng::new(params.seed),
            control: SimControl::new(params.initial),
            params,
        }
    }

    /// Its control handle.
    pub fn control(&self) -> SimControl {
        self.control.clone()
    }
}

impl Sensor for SimSensor {
    fn read(&mut self) -> Result<Reading, DriverError> {
        let what = self.kind.resource_type();
        let mut s = self.control.check(what)?;
        if self.kind == ResourceKind::Contact {
            let open = s.value >= 0.5;
            return Ok(Reading {
                value: f64::from(u8::from(open)),
                props: contact_props(open),
            });
        }
        let SimParams { step, min, max, .. } = self.params;
        let mut v = s.value + step * self.rng.next_signed_unit();
        // Reflect at the bounds so the walk stays inside without sticking to them.
        if v > max {
            v = max - (v - max);
        }
        if v < min {
            v = min + (min - v);
        }
        v = v.clamp(min, max);
        s.value = v;
        Ok(match self.kind {
            ResourceKind::Humidity => {
                let (h, props) = humidity_props(v);
                Reading {
                    value: h as f64,
                    props,
                }
            }
            ResourceKind::Pressure => {
                let p = round_to(v, 2);
                Reading {
                    value: p,
                    props: pressure_props(p),
                }
            }
            _ => {
                let t = round_to(v, 2);
                Reading {
                    value: t,
                    props: temperature_props(t, (min, max), 0.01),
                }
            }
        })
    }
}

/// An in-memory output pin (for `sim-switch`): the level is its [`SimControl`] value.
#[derive(Debug, Clone)]
pub struct SimPin(SimControl);

impl SimPin {
    /// A pin at `high`.
    pub fn new(high: bool) -> Self {
        SimPin(SimControl::new(f64::from(u8::from(high))))
    }

    /// Its control handle.
    pub fn control(&self) -> SimControl {
        self.0.clone()
    }
}

/// The error of [`SimPin`]: an injected fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimPinError(pub String);

impl embedded_hal::digital::Error for SimPinError {
    fn kind(&self) -> embedded_hal::digital::ErrorKind {
        embedded_hal::digital::ErrorKind::Other
    }
}

impl ErrorType for SimPin {
    type Error = SimPinError;
}

impl OutputPin for SimPin {
    fn set_low(&mut self) -> Result<(), SimPinError> {
        let mut s = self
            .0
            .check("pin")
            .map_err(|e| SimPinError(e.to_string()))?;
        s.value = 0.0;
        Ok(())
    }

    fn set_high(&mut self) -> Result<(), SimPinError> {
        let mut s = self
            .0
            .check("pin")
            .map_err(|e| SimPinError(e.to_string()))?;
        s.value = 1.0;
        Ok(())
    }
}

impl StatefulOutputPin for SimPin {
    fn is_set_high(&mut self) -> Result<bool, SimPinError> {
        let s = self
            .0
            .check("pin")
            .map_err(|e| SimPinError(e.to_string()))?;
        Ok(s.value >= 0.5)
    }

    fn is_set_low(&mut self) -> Result<bool, SimPinError> {
        self.is_set_high().map(|h| !h)
    }
}

/// An in-memory PWM channel (for `sim-brightness`), 1 kHz; its [`SimControl`] value is the
/// duty-cycle fraction.
#[derive(Debug, Clone)]
pub struct SimPwm(SimControl);

impl SimPwm {
    /// The period, 1 ms.
    pub const PERIOD_NS: u64 = 1_000_000;

    /// A channel at duty-cycle `fraction` (0-1).
    pub fn new(fraction: f64) -> Self {
        SimPwm(SimControl::new(fraction.clamp(0.0, 1.0)))
    }

    /// Its control handle.
    pub fn control(&self) -> SimControl {
        self.0.clone()
    }
}

impl PwmOutput for SimPwm {
    fn period_ns(&mut self) -> Result<u64, DriverError> {
        self.0.check("PWM").map(|_| Self::PERIOD_NS)
    }

    fn duty_ns(&mut self) -> Result<u64, DriverError> {
        let s = self.0.check("PWM")?;
        Ok((s.value.clamp(0.0, 1.0) * Self::PERIOD_NS as f64).round() as u64)
    }

    fn set_duty_ns(&mut self, duty: u64) -> Result<(), DriverError> {
        let mut s = self.0.check("PWM")?;
        s.value = duty.min(Self::PERIOD_NS) as f64 / Self::PERIOD_NS as f64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pwm::Brightness;
    use crate::switch::Switch;
    use ocf::resource::{Backend, ResourceError, Value};

    fn params(seed: u64) -> SimParams {
        SimParams {
            initial: 21.0,
            step: 0.5,
            min: 20.0,
            max: 22.0,
            seed,
        }
    }

    #[test]
    fn walk_is_deterministic_and_bounded() {
        let run = |seed| {
            let mut s = SimSensor::new(ResourceKind::Temperature, params(seed));
            (0..500)
                .map(|_| s.read().unwrap().value)
                .collect::<Vec<_>>()
        };
        let a = run(3);
        assert_eq!(a, run(3), "same seed, same walk");
        assert_ne!(a, run(4));
        assert!(a.iter().all(|v| (20.0..=22.0).contains(v)));
        assert!(a.windows(2).all(|w| (w[0] - w[1]).abs() <= 0.5 + 1e-9));
        assert!(a.windows(2).any(|w| w[0] != w[1]), "it moves");
    }

    #[test]
    fn humidity_pressure_and_contact() {
        let mut h = SimSensor::new(
            ResourceKind::Humidity,
            SimParams {
                initial: 45.0,
                step: 0.0,
                min: 0.0,
                max: 100.0,
                seed: 1,
            },
        );
        assert_eq!(
            h.read().unwrap().props["humidity"],
            Value::Integer(45.into())
        );
        let mut p = SimSensor::new(
            ResourceKind::Pressure,
            SimParams {
                initial: 1013.254,
                step: 0.0,
                min: 900.0,
                max: 1100.0,
                seed: 1,
            },
        );
        assert_eq!(
            p.read().unwrap().props["atmosphericPressure"],
            Value::Float(1013.25)
        );
        let mut c = SimSensor::new(
            ResourceKind::Contact,
            SimParams {
                initial: 0.0,
                step: 0.0,
                min: 0.0,
                max: 1.0,
                seed: 1,
            },
        );
        assert_eq!(c.read().unwrap().props["value"], Value::Bool(false));
        c.control().set_value(1.0);
        let r = c.read().unwrap();
        assert_eq!((r.value, &r.props["value"]), (1.0, &Value::Bool(true)));
    }

    #[test]
    fn sim_actuators_through_the_real_adapters() {
        let pin = SimPin::new(false);
        let ctl = pin.control();
        let mut sw = Switch::new(pin, false, "sim");
        sw.update(&[("value".to_owned(), Value::Bool(true))].into())
            .unwrap();
        assert_eq!(ctl.value(), 1.0);
        ctl.set_fault(Some("stuck"));
        assert!(matches!(sw.retrieve(), Err(ResourceError::Unavailable(m)) if m.contains("stuck")));

        let pwm = SimPwm::new(0.5);
        let ctl = pwm.control();
        let mut b = Brightness::new(pwm);
        assert_eq!(
            b.retrieve().unwrap()["brightness"],
            Value::Integer(50.into())
        );
        b.update(&[("brightness".to_owned(), Value::Integer(80.into()))].into())
            .unwrap();
        assert_eq!(ctl.value(), 0.8);
    }
}
