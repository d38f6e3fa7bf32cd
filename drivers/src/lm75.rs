//! LM75-compatible temperature sensors: LM75 (A/B), TMP75, TMP105 (and TMP175, same map).
//!
//! A small typed-register driver over [`embedded_hal::i2c::I2c`]. The temperature register
//! holds a left-aligned two's-complement value in 1/256 °C; the LM75 gives 9 bits (0.5 °C), the
//! TMP75/TMP105 9 to 12 bits (0.0625 °C) selected by the R1:R0 bits of the configuration
//! register. The `lm75` crate only knows 9- and 11-bit parts, so it cannot use the TMP105's
//! 12-bit resolution; this module covers the whole family with the same few registers.
//!
//! [`Lm75Sensor`] is the OCF adapter: `oic.r.temperature` with `temperature` (°C), `units`,
//! `range`, `step` and `precision`.
//!
//! ```
//! use embedded_hal_mock::eh1::i2c::{Mock, Transaction};
//! use ocf_drivers::lm75::{Lm75, Model};
//!
//! let i2c = Mock::new(&[Transaction::write_read(0x48, vec![0x00], vec![0xE7, 0x00])]);
//! let mut lm75 = Lm75::new(i2c, 0x48, Model::Lm75);
//! assert_eq!(lm75.read_celsius().unwrap(), -25.0);
//! lm75.release().done();
//! ```

use embedded_hal::i2c::I2c;

use crate::props::{number, props, round_to, text};
use crate::sensor::{Reading, Sensor};
use crate::DriverError;

/// The address with A2..A0 tied low.
pub const DEFAULT_ADDRESS: u8 = 0x48;

/// The registers (pointer values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Register {
    /// Temperature, read-only, 2 bytes.
    Temperature = 0x00,
    /// Configuration, 1 byte.
    Configuration = 0x01,
    /// Hysteresis threshold, 2 bytes.
    THyst = 0x02,
    /// Over-temperature threshold, 2 bytes.
    TOs = 0x03,
}

/// Configuration register bits.
pub mod config {
    /// Shutdown mode.
    pub const SHUTDOWN: u8 = 0b0000_0001;
    /// Resolution bits R1:R0 (TMP75/TMP105 only; reserved on the LM75).
    pub const RESOLUTION: u8 = 0b0110_0000;
}

/// Which member of the family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Model {
    /// National/TI LM75: 9 bits, -55..125 °C.
    Lm75,
    /// TI TMP75: 9-12 bits, -40..125 °C.
    Tmp75,
    /// TI TMP105 (and TMP175): 9-12 bits, -40..125 °C.
    Tmp105,
}

impl Model {
    /// The part name.
    pub fn name(self) -> &'static str {
        match self {
            Model::Lm75 => "LM75",
            Model::Tmp75 => "TMP75",
            Model::Tmp105 => "TMP105",
        }
    }

    /// Specified operating range in °C.
    pub fn range(self) -> (f64, f64) {
        match self {
            Model::Lm75 => (-55.0, 125.0),
            Model::Tmp75 | Model::Tmp105 => (-40.0, 125.0),
        }
    }

    /// Whether the resolution can be configured (else it is fixed at 9 bits).
    pub fn has_resolution_bits(self) -> bool {
        !matches!(self, Model::Lm75)
    }
}

/// Conversion resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resolution {
    /// 0.5 °C.
    Bits9,
    /// 0.25 °C.
    Bits10,
    /// 0.125 °C.
    Bits11,
    /// 0.0625 °C.
    Bits12,
}

impl Resolution {
    /// From a bit count 9..=12.
    pub fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            9 => Some(Resolution::Bits9),
            10 => Some(Resolution::Bits10),
            11 => Some(Resolution::Bits11),
            12 => Some(Resolution::Bits12),
            _ => None,
        }
    }

    /// The bit count.
    pub fn bits(self) -> u8 {
        match self {
            Resolution::Bits9 => 9,
            Resolution::Bits10 => 10,
            Resolution::Bits11 => 11,
            Resolution::Bits12 => 12,
        }
    }

    /// The temperature step in °C.
    pub fn step(self) -> f64 {
        1.0 / f64::from(1u16 << (self.bits() - 8))
    }

    /// The R1:R0 configuration bits for this resolution.
    pub fn config_bits(self) -> u8 {
        (self.bits() - 9) << 5
    }

    /// Mask of the valid bits of the 16-bit temperature register.
    fn mask(self) -> u16 {
        !((1u16 << (16 - self.bits())) - 1)
    }
}

/// Converts the temperature register (MSB first) to °C at `resolution`; bits below the
/// resolution are ignored.
pub fn raw_to_celsius(raw: [u8; 2], resolution: Resolution) -> f64 {
    let value = (u16::from_be_bytes(raw) & resolution.mask()) as i16;
    f64::from(value) / 256.0
}

/// The driver. See the [module documentation](self).
#[derive(Debug)]
pub struct Lm75<I2C> {
    i2c: I2C,
    address: u8,
    model: Model,
    resolution: Resolution,
}

impl<I2C: I2c> Lm75<I2C> {
    /// A driver for `model` at `address`; TMP75/TMP105 are set to 12 bits by
    /// [`Lm75::configure`], the LM75 stays at its fixed 9 bits.
    pub fn new(i2c: I2C, address: u8, model: Model) -> Self {
        let resolution = if model.has_resolution_bits() {
            Resolution::Bits12
        } else {
            Resolution::Bits9
        };
        Lm75 {
            i2c,
            address,
            model,
            resolution,
        }
    }

    /// Use `resolution` instead (ignored for the fixed-resolution LM75).
    pub fn with_resolution(mut self, resolution: Resolution) -> Self {
        if self.model.has_resolution_bits() {
            self.resolution = resolution;
        }
        self
    }

    /// The part.
    pub fn model(&self) -> Model {
        self.model
    }

    /// The I2C address.
    pub fn address(&self) -> u8 {
        self.address
    }

    /// The resolution readings are converted at.
    pub fn resolution(&self) -> Resolution {
        self.resolution
    }

    /// Read the configuration register.
    pub fn read_config(&mut self) -> Result<u8, I2C::Error> {
        let mut buf = [0];
        self.i2c
            .write_read(self.address, &[Register::Configuration as u8], &mut buf)?;
        Ok(buf[0])
    }

    /// Write the configuration register.
    pub fn write_config(&mut self, value: u8) -> Result<(), I2C::Error> {
        self.i2c
            .write(self.address, &[Register::Configuration as u8, value])
    }

    /// Bring the sensor into continuous conversion at the driver's resolution: leaves shutdown
    /// and sets R1:R0 (TMP75/TMP105). Writes only if something must change.
    pub fn configure(&mut self) -> Result<(), I2C::Error> {
        let current = self.read_config()?;
        let mut wanted = current & !config::SHUTDOWN;
        if self.model.has_resolution_bits() {
            wanted = (wanted & !config::RESOLUTION) | self.resolution.config_bits();
        }
        if wanted != current {
            self.write_config(wanted)?;
        }
        Ok(())
    }

    /// Read the raw temperature register (MSB first).
    pub fn read_raw(&mut self) -> Result<[u8; 2], I2C::Error> {
        let mut buf = [0; 2];
        self.i2c
            .write_read(self.address, &[Register::Temperature as u8], &mut buf)?;
        Ok(buf)
    }

    /// Read the temperature in °C.
    pub fn read_celsius(&mut self) -> Result<f64, I2C::Error> {
        let raw = self.read_raw()?;
        Ok(raw_to_celsius(raw, self.resolution))
    }

    /// Give the bus back.
    pub fn release(self) -> I2C {
        self.i2c
    }
}

/// The OCF adapter: an `oic.r.temperature` [`Sensor`].
///
/// The first read (and the first after a failure, in case the part was power-cycled) also runs
/// [`Lm75::configure`].
#[derive(Debug)]
pub struct Lm75Sensor<I2C> {
    dev: Lm75<I2C>,
    label: String,
    configured: bool,
}

impl<I2C: I2c> Lm75Sensor<I2C> {
    /// Wraps `dev`; `bus` (e.g. `/dev/i2c-1`) names the bus in diagnostics.
    pub fn new(dev: Lm75<I2C>, bus: &str) -> Self {
        let label = format!("{} at {:#04x} on {bus}", dev.model().name(), dev.address());
        Lm75Sensor {
            dev,
            label,
            configured: false,
        }
    }

    /// The driver.
    pub fn device(&mut self) -> &mut Lm75<I2C> {
        &mut self.dev
    }

    fn try_read(&mut self) -> Result<f64, DriverError> {
        if !self.configured {
            self.dev
                .configure()
                .map_err(|e| DriverError::bus(&self.label, "configure", e))?;
            self.configured = true;
        }
        self.dev
            .read_celsius()
            .map_err(|e| DriverError::bus(&self.label, "read temperature", e))
    }
}

impl<I2C: I2c> Sensor for Lm75Sensor<I2C> {
    fn read(&mut self) -> Result<Reading, DriverError> {
        let celsius = self.try_read().inspect_err(|_| self.configured = false)?;
        let step = self.dev.resolution().step();
        let (min, max) = self.dev.model().range();
        let value = round_to(celsius, 4);
        Ok(Reading {
            value,
            props: props([
                ("temperature", number(value)),
                ("units", text("C")),
                (
                    "range",
                    ocf::resource::Value::Array(vec![number(min), number(max)]),
                ),
                ("step", number(step)),
                ("precision", number(step)),
            ]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal::i2c::ErrorKind;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction as T};
    use ocf::resource::Value;

    const A: u8 = 0x48;

    #[test]
    fn conversions() {
        let r9 = Resolution::Bits9;
        let r12 = Resolution::Bits12;
        assert_eq!(raw_to_celsius([0x7D, 0x00], r9), 125.0);
        assert_eq!(raw_to_celsius([0x19, 0x00], r9), 25.0);
        assert_eq!(raw_to_celsius([0x00, 0x80], r9), 0.5);
        assert_eq!(raw_to_celsius([0x00, 0x00], r9), 0.0);
        assert_eq!(raw_to_celsius([0xFF, 0x80], r9), -0.5);
        assert_eq!(raw_to_celsius([0xE7, 0x00], r9), -25.0);
        assert_eq!(raw_to_celsius([0xC9, 0x00], r9), -55.0);
        // Bits below the resolution are ignored.
        assert_eq!(raw_to_celsius([0x19, 0x7F], r9), 25.0);
        assert_eq!(raw_to_celsius([0x19, 0x7F], r12), 25.4375);
        // TMP105 datasheet table: 0xFFF0 = -0.0625, 0xE480 = -27.5 ... 0x3200 = 50.
        assert_eq!(raw_to_celsius([0xFF, 0xF0], r12), -0.0625);
        assert_eq!(raw_to_celsius([0xE4, 0x80], r12), -27.5);
        assert_eq!(raw_to_celsius([0xD8, 0x00], r12), -40.0);
        assert_eq!(raw_to_celsius([0x32, 0x00], r12), 50.0);
        assert_eq!(raw_to_celsius([0x80, 0x00], r12), -128.0);
        assert_eq!(Resolution::Bits10.step(), 0.25);
        assert_eq!(Resolution::Bits12.config_bits(), 0x60);
    }

    #[test]
    fn tmp105_configures_12_bits_then_reads() {
        let i2c = Mock::new(&[
            // Power-on configuration 0x00: 9 bits. Set R1:R0 = 11.
            T::write_read(A, vec![0x01], vec![0x00]),
            T::write(A, vec![0x01, 0x60]),
            T::write_read(A, vec![0x00], vec![0xE4, 0x80]),
            // Second read: no configuration again.
            T::write_read(A, vec![0x00], vec![0x19, 0x10]),
        ]);
        let mut s = Lm75Sensor::new(Lm75::new(i2c, A, Model::Tmp105), "/dev/i2c-1");
        let r = s.read().unwrap();
        assert_eq!(r.value, -27.5);
        assert_eq!(r.props["temperature"], Value::Float(-27.5));
        assert_eq!(r.props["units"], Value::Text("C".into()));
        assert_eq!(
            r.props["range"],
            Value::Array(vec![Value::Float(-40.0), Value::Float(125.0)])
        );
        assert_eq!(r.props["step"], Value::Float(0.0625));
        assert_eq!(r.props["precision"], Value::Float(0.0625));
        assert_eq!(s.read().unwrap().value, 25.0625);
        s.dev.release().done();
    }

    #[test]
    fn lm75_leaves_shutdown_and_keeps_9_bits() {
        let i2c = Mock::new(&[
            T::write_read(A, vec![0x01], vec![0x01]),
            T::write(A, vec![0x01, 0x00]),
            T::write_read(A, vec![0x00], vec![0xFF, 0xFF]),
        ]);
        let dev = Lm75::new(i2c, A, Model::Lm75).with_resolution(Resolution::Bits12);
        assert_eq!(dev.resolution(), Resolution::Bits9);
        let mut s = Lm75Sensor::new(dev, "/dev/i2c-1");
        let r = s.read().unwrap();
        assert_eq!(r.value, -0.5);
        assert_eq!(r.props["step"], Value::Float(0.5));
        assert_eq!(
            r.props["range"],
            Value::Array(vec![Value::Float(-55.0), Value::Float(125.0)])
        );
        s.dev.release().done();
    }

    #[test]
    fn bus_error_is_a_driver_error_and_reconfigures_after() {
        let i2c = Mock::new(&[
            T::write_read(A, vec![0x01], vec![0x60]),
            T::write_read(A, vec![0x00], vec![0, 0]).with_error(ErrorKind::NoAcknowledge(
                embedded_hal::i2c::NoAcknowledgeSource::Address,
            )),
            // After the failure the configuration is checked again.
            T::write_read(A, vec![0x01], vec![0x60]),
            T::write_read(A, vec![0x00], vec![0x0A, 0x00]),
        ]);
        let mut s = Lm75Sensor::new(Lm75::new(i2c, A, Model::Tmp75), "/dev/i2c-1");
        let e = s.read().unwrap_err();
        assert!(
            e.message()
                .starts_with("TMP75 at 0x48 on /dev/i2c-1: read temperature: NoAcknowledge"),
            "{e}"
        );
        assert_eq!(s.read().unwrap().value, 10.0);
        s.dev.release().done();
    }

    #[test]
    fn configure_error() {
        let i2c = Mock::new(&[T::write_read(A, vec![0x01], vec![0]).with_error(ErrorKind::Bus)]);
        let mut s = Lm75Sensor::new(Lm75::new(i2c, 0x48, Model::Tmp105), "i2c-stub");
        assert_eq!(
            s.read().unwrap_err().message(),
            "TMP105 at 0x48 on i2c-stub: configure: Bus"
        );
        s.dev.release().done();
    }
}
