//! The OCF adapter of the LM75 family (LM75, TMP75, TMP105, TMP175): an
//! `oic.r.temperature` [`Sensor`] over the [`lm75x`] chip driver, which knows nothing of OCF.
//!
//! The chip driver's types are re-exported here, so board descriptions name them as
//! `ocf_drivers::lm75::Model`.

use embedded_hal::i2c::I2c;

pub use lm75x::{config, raw_to_celsius, Lm75, Model, Register, Resolution, DEFAULT_ADDRESS};

use crate::kind::temperature_props;
use crate::props::round_to;
use crate::sensor::{Reading, Sensor};
use crate::DriverError;

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
        // 1/16 °C steps need four decimals; rounding drops float noise, not resolution.
        let value = round_to(celsius, 4);
        Ok(Reading {
            value,
            props: temperature_props(value, self.dev.model().range(), step),
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
    fn tmp105_reading_is_an_oic_r_temperature() {
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
        assert_eq!(r.props.len(), 5);
        assert_eq!(s.read().unwrap().value, 25.0625);
        s.dev.release().done();
    }

    #[test]
    fn lm75_range_and_step() {
        let i2c = Mock::new(&[
            T::write_read(A, vec![0x01], vec![0x01]),
            T::write(A, vec![0x01, 0x00]),
            T::write_read(A, vec![0x00], vec![0xFF, 0xFF]),
        ]);
        let mut s = Lm75Sensor::new(Lm75::new(i2c, A, Model::Lm75), "/dev/i2c-1");
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
            // After the failure the configuration is checked again (the part may have been
            // power-cycled back to 9 bits).
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
