//! The OCF adapter of the Bosch BME280: one chip, three resources. [`Bme280Channel`] serves
//! one of `oic.r.temperature`, `oic.r.humidity` and `oic.r.sensor.atmosphericpressure` from a
//! [`SharedBme280`], over the [`bme280_nb`] chip driver, which knows nothing of OCF.

use std::sync::{Arc, Mutex};

use embedded_hal::i2c::I2c;

pub use bme280_nb::{
    reg, Bme280, Calibration, Error, Measurement, RawData, CHIP_ID, PRIMARY_ADDRESS,
    SECONDARY_ADDRESS,
};

use crate::kind::{humidity_props, pressure_props, temperature_props, ResourceKind};
use crate::props::round_to;
use crate::sensor::{Reading, Sensor};
use crate::DriverError;

/// A BME280 shared by its temperature, humidity and pressure resources.
pub type SharedBme280<I2C> = Arc<Mutex<Bme280<I2C>>>;

/// The OCF adapter for one quantity of a (shared) BME280.
#[derive(Debug)]
pub struct Bme280Channel<I2C> {
    dev: SharedBme280<I2C>,
    kind: ResourceKind,
    label: String,
}

impl<I2C: I2c> Bme280Channel<I2C> {
    /// The `kind` channel ([`ResourceKind::Temperature`], [`ResourceKind::Humidity`] or
    /// [`ResourceKind::Pressure`]) of `dev`; `bus` names the bus in diagnostics. Returns `None`
    /// for another kind.
    pub fn new(dev: SharedBme280<I2C>, kind: ResourceKind, bus: &str) -> Option<Self> {
        if !matches!(
            kind,
            ResourceKind::Temperature | ResourceKind::Humidity | ResourceKind::Pressure
        ) {
            return None;
        }
        let address = dev.lock().unwrap_or_else(|e| e.into_inner()).address();
        Some(Bme280Channel {
            dev,
            kind,
            label: format!("BME280 at {address:#04x} on {bus}"),
        })
    }
}

impl<I2C: I2c> Sensor for Bme280Channel<I2C> {
    fn read(&mut self) -> Result<Reading, DriverError> {
        let m = self
            .dev
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .measure()
            .map_err(|e| {
                let what = match e {
                    Error::Bus(e) => format!("read: {e:?}"),
                    Error::WrongChip(id) => format!(
                        "chip id {id:#04x} is not a BME280 ({:#04x}){}",
                        CHIP_ID,
                        if id == 0x58 { "; 0x58 is a BMP280" } else { "" }
                    ),
                    Error::CalibrationPending => "calibration not loaded yet".into(),
                    Error::BlankCalibration => "calibration data is blank (T1 or P1 is 0)".into(),
                    Error::NoData => "no measurement available (just started or reset)".into(),
                    Error::Implausible {
                        temperature,
                        pressure,
                    } => format!(
                        "implausible reading {temperature:.2} °C, {:.2} hPa",
                        pressure / 100.0
                    ),
                };
                DriverError::new(format!("{}: {what}", self.label))
            })?;
        Ok(match self.kind {
            ResourceKind::Temperature => {
                let t = round_to(m.temperature, 2);
                Reading {
                    value: t,
                    props: temperature_props(t, (-40.0, 85.0), 0.01),
                }
            }
            ResourceKind::Humidity => {
                let (h, props) = humidity_props(m.humidity);
                Reading {
                    value: h as f64,
                    props,
                }
            }
            _ => {
                let p = round_to(m.pressure / 100.0, 2);
                Reading {
                    value: p,
                    props: pressure_props(p),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal::i2c::ErrorKind;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction as T};
    use ocf::resource::Value;

    use bme280_nb::test_fixtures::*;

    const A: u8 = PRIMARY_ADDRESS;

    #[test]
    fn init_then_readings_for_all_three_quantities() {
        let (a, b) = calib_blocks();
        let cal = Calibration::from_registers(&a, &b);
        let sample = data(415148, 519888, 30000);
        let mut tx = init_transactions();
        for _ in 0..3 {
            tx.push(T::write_read(A, vec![reg::DATA], sample.clone()));
        }
        let i2c = Mock::new(&tx);
        let mut dev = Bme280::new(i2c, A);
        dev.init().unwrap();
        let shared: SharedBme280<_> = Arc::new(Mutex::new(dev));
        let mut t =
            Bme280Channel::new(shared.clone(), ResourceKind::Temperature, "/dev/i2c-1").unwrap();
        let mut h =
            Bme280Channel::new(shared.clone(), ResourceKind::Humidity, "/dev/i2c-1").unwrap();
        let mut p =
            Bme280Channel::new(shared.clone(), ResourceKind::Pressure, "/dev/i2c-1").unwrap();
        assert!(Bme280Channel::new(shared.clone(), ResourceKind::Switch, "x").is_none());

        let rt = t.read().unwrap();
        assert_eq!(rt.value, 25.08);
        assert_eq!(rt.props["units"], Value::Text("C".into()));
        let rh = h.read().unwrap();
        let (_, t_fine) = cal.temperature(519888);
        let expected = reference_humidity(&cal, 30000.0, t_fine).round();
        assert_eq!(rh.value, expected);
        assert_eq!(
            rh.props["humidity"],
            Value::Integer((expected as i64).into())
        );
        let rp = p.read().unwrap();
        assert_eq!(rp.value, 1006.53);
        assert_eq!(rp.props["atmosphericPressure"], Value::Float(1006.53));

        drop((t, h, p));
        Arc::try_unwrap(shared)
            .unwrap()
            .into_inner()
            .unwrap()
            .release()
            .done();
    }

    #[test]
    fn lazy_init_reset_detection_and_bus_errors() {
        let mut tx = init_transactions();
        // After init the first read is refused (the conversion is running).
        // Then: a reset chip reports skipped values -> NoData, re-init on the next read.
        tx.push(T::write_read(
            A,
            vec![reg::DATA],
            data(0x8_0000, 0x8_0000, 0x8000),
        ));
        tx.extend(init_transactions());
        // Bus error on the data read.
        tx.push(T::write_read(A, vec![reg::DATA], vec![0; 8]).with_error(ErrorKind::Bus));
        // Bus error during re-init (chip id read).
        tx.push(T::write_read(A, vec![reg::ID], vec![0]).with_error(ErrorKind::Other));
        let i2c = Mock::new(&tx);
        let shared = Arc::new(Mutex::new(Bme280::new(i2c, A)));
        let mut t =
            Bme280Channel::new(shared.clone(), ResourceKind::Temperature, "/dev/i2c-1").unwrap();
        let e = t.read().unwrap_err();
        assert_eq!(
            e.message(),
            "BME280 at 0x76 on /dev/i2c-1: no measurement available (just started or reset)"
        );
        assert!(t.read().is_err(), "reset chip");
        assert!(t.read().is_err(), "re-initialised");
        assert_eq!(
            t.read().unwrap_err().message(),
            "BME280 at 0x76 on /dev/i2c-1: read: Bus"
        );
        assert_eq!(
            t.read().unwrap_err().message(),
            "BME280 at 0x76 on /dev/i2c-1: read: Other"
        );
        drop(t);
        Arc::try_unwrap(shared)
            .unwrap()
            .into_inner()
            .unwrap()
            .release()
            .done();
    }

    #[test]
    fn chip_errors_read_as_diagnostics() {
        let tx = faulty_chip_transactions();
        let shared = Arc::new(Mutex::new(Bme280::new(Mock::new(&tx), A)));
        let mut p = Bme280Channel::new(shared.clone(), ResourceKind::Pressure, "bus").unwrap();
        assert_eq!(
            p.read().unwrap_err().message(),
            "BME280 at 0x76 on bus: chip id 0x58 is not a BME280 (0x60); 0x58 is a BMP280"
        );
        assert_eq!(
            p.read().unwrap_err().message(),
            "BME280 at 0x76 on bus: calibration not loaded yet"
        );
        assert_eq!(
            p.read().unwrap_err().message(),
            "BME280 at 0x76 on bus: calibration data is blank (T1 or P1 is 0)"
        );
        assert_eq!(
            p.read().unwrap_err().message(),
            "BME280 at 0x76 on bus: no measurement available (just started or reset)"
        );
        // All-ones data (a bus that floats high) is refused, not published.
        let e = p.read().unwrap_err();
        assert!(
            e.message()
                .starts_with("BME280 at 0x76 on bus: implausible reading "),
            "{e}"
        );
        drop(p);
        Arc::try_unwrap(shared)
            .unwrap()
            .into_inner()
            .unwrap()
            .release()
            .done();
    }
}
