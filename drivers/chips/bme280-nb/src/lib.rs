//! A `no_std` [embedded-hal] 1.0 driver for the Bosch BME280 temperature, humidity and
//! pressure sensor over I2C, that never waits.
//!
//! It runs the chip in normal mode (continuous measurement, 125 ms standby, oversampling ×1,
//! filter off; BME280 datasheet BST-BME280-DS002 §3.3.4 and §5.4), so a reading is one 8-byte
//! burst read of the data registers with no delay. The compensation is the datasheet's
//! double-precision one (§8.1), which cannot overflow on corrupted calibration or ADC data, and
//! every value read is checked: a reset chip (skipped values), blank calibration or readings
//! outside the operating range are errors, never published numbers.
//!
//! Why not the existing crates: `bme280` 0.5 forces a measurement and blocks 40 ms in every
//! `measure`; `bme280-rs` 0.4 blocks ≥110 ms in `init`, polls the status register without
//! bound, and its integer compensation overflows (a panic in debug builds) on corrupted data.
//!
//! # Usage
//!
//! ```
//! # use embedded_hal_mock::eh1::i2c::{Mock as I2c, Transaction as T};
//! # let mut calib = vec![0u8; 26];
//! # calib[0] = 0x70; calib[1] = 0x6B; // T1 = 27504
//! # calib[2] = 0x43; calib[3] = 0x67; // T2 = 26435
//! # calib[4] = 0x18; calib[5] = 0xFC; // T3 = -1000
//! # calib[6] = 0x7D; calib[7] = 0x8E; // P1 = 36477
//! # calib[8] = 0x43; calib[9] = 0xD6; // P2 = -10685
//! # calib[10] = 0xD0; calib[11] = 0x0B; // P3 = 3024
//! # calib[12] = 0x27; calib[13] = 0x0B; // P4 = 2855
//! # calib[14] = 0x8C; calib[15] = 0x00; // P5 = 140
//! # calib[16] = 0xF9; calib[17] = 0xFF; // P6 = -7
//! # calib[18] = 0x8C; calib[19] = 0x3C; // P7 = 15500
//! # calib[20] = 0xF8; calib[21] = 0xC6; // P8 = -14600
//! # calib[22] = 0x70; calib[23] = 0x17; // P9 = 6000
//! # let i2c = I2c::new(&[
//! #     T::write_read(0x76, vec![0xD0], vec![0x60]),
//! #     T::write_read(0x76, vec![0xF3], vec![0x00]),
//! #     T::write_read(0x76, vec![0x88], calib),
//! #     T::write_read(0x76, vec![0xE1], vec![0x6A, 0x01, 0x00, 0x13, 0x29, 0x03, 30]),
//! #     T::write(0x76, vec![0xF4, 0x00]),
//! #     T::write(0x76, vec![0xF2, 0x01]),
//! #     T::write(0x76, vec![0xF5, 0x40]),
//! #     T::write(0x76, vec![0xF4, 0x27]),
//! #     T::write_read(0x76, vec![0xF7], vec![0x65, 0x5A, 0xC0, 0x7E, 0xED, 0x00, 0x75, 0x30]),
//! # ]);
//! use bme280_nb::{Bme280, PRIMARY_ADDRESS};
//!
//! // `i2c` is any embedded-hal 1.0 I2C bus (here a mock).
//! let mut bme = Bme280::new(i2c, PRIMARY_ADDRESS);
//! bme.init()?; // checks the chip id, reads the calibration, starts normal mode
//! // ... at least one measurement period (~10 ms) later:
//! let m = bme.measure()?;
//! assert!((m.temperature - 25.08).abs() < 0.01);
//! assert!((m.pressure - 100653.27).abs() < 0.5); // Pa
//! # bme.release().done();
//! # Ok::<(), bme280_nb::Error<embedded_hal::i2c::ErrorKind>>(())
//! ```
//!
//! [embedded-hal]: https://docs.rs/embedded-hal

#![no_std]
#![warn(missing_docs)]

use embedded_hal::i2c::I2c;

/// SDO tied low.
pub const PRIMARY_ADDRESS: u8 = 0x76;
/// SDO tied high.
pub const SECONDARY_ADDRESS: u8 = 0x77;
/// Value of the chip-id register of a BME280.
pub const CHIP_ID: u8 = 0x60;

/// Registers.
pub mod reg {
    /// First calibration block, 26 bytes (T1..P9, H1).
    pub const CALIB_00: u8 = 0x88;
    /// Chip id.
    pub const ID: u8 = 0xD0;
    /// Soft reset (write 0xB6).
    pub const RESET: u8 = 0xE0;
    /// Second calibration block, 7 bytes (H2..H6).
    pub const CALIB_26: u8 = 0xE1;
    /// Humidity oversampling.
    pub const CTRL_HUM: u8 = 0xF2;
    /// Status: bit 3 measuring, bit 0 NVM copy in progress.
    pub const STATUS: u8 = 0xF3;
    /// Temperature/pressure oversampling and mode.
    pub const CTRL_MEAS: u8 = 0xF4;
    /// Standby time and IIR filter.
    pub const CONFIG: u8 = 0xF5;
    /// Burst-read start: press_msb, press_lsb, press_xlsb, temp_msb, temp_lsb, temp_xlsb,
    /// hum_msb, hum_lsb.
    pub const DATA: u8 = 0xF7;
}

/// Oversampling ×1 for a quantity.
const OSRS_X1: u8 = 0b001;
/// Normal mode.
const MODE_NORMAL: u8 = 0b11;
/// Standby 125 ms.
const T_SB_125MS: u8 = 0b010;
/// `ctrl_hum`: humidity ×1.
const CTRL_HUM_VALUE: u8 = OSRS_X1;
/// `config`: 125 ms standby, filter off.
const CONFIG_VALUE: u8 = T_SB_125MS << 5;
/// `ctrl_meas`: temperature ×1, pressure ×1, normal mode.
const CTRL_MEAS_VALUE: u8 = (OSRS_X1 << 5) | (OSRS_X1 << 2) | MODE_NORMAL;
/// ADC value the chip reports for a skipped (or not yet measured) temperature/pressure.
const SKIPPED_20: u32 = 0x8_0000;
/// ADC value for a skipped humidity.
const SKIPPED_16: u16 = 0x8000;

/// The factory calibration ("trimming") parameters.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[allow(missing_docs)]
pub struct Calibration {
    pub t1: u16,
    pub t2: i16,
    pub t3: i16,
    pub p1: u16,
    pub p2: i16,
    pub p3: i16,
    pub p4: i16,
    pub p5: i16,
    pub p6: i16,
    pub p7: i16,
    pub p8: i16,
    pub p9: i16,
    pub h1: u8,
    pub h2: i16,
    pub h3: u8,
    pub h4: i16,
    pub h5: i16,
    pub h6: i8,
}

impl Calibration {
    /// Decode the blocks at 0x88 (26 bytes) and 0xE1 (7 bytes).
    pub fn from_registers(a: &[u8; 26], b: &[u8; 7]) -> Self {
        let u = |i: usize| u16::from_le_bytes([a[i], a[i + 1]]);
        let s = |i: usize| i16::from_le_bytes([a[i], a[i + 1]]);
        // H4 and H5 are 12-bit signed values sharing the nibbles of 0xE5.
        let h4 = (i16::from(b[3] as i8) << 4) | i16::from(b[4] & 0x0F);
        let h5 = (i16::from(b[5] as i8) << 4) | i16::from(b[4] >> 4);
        Calibration {
            t1: u(0),
            t2: s(2),
            t3: s(4),
            p1: u(6),
            p2: s(8),
            p3: s(10),
            p4: s(12),
            p5: s(14),
            p6: s(16),
            p7: s(18),
            p8: s(20),
            p9: s(22),
            h1: a[25],
            h2: i16::from_le_bytes([b[0], b[1]]),
            h3: b[2],
            h4,
            h5,
            h6: b[6] as i8,
        }
    }

    /// Temperature in °C and the `t_fine` value the other formulas need.
    pub fn temperature(&self, adc_t: u32) -> (f64, f64) {
        let adc = f64::from(adc_t);
        let t1 = f64::from(self.t1);
        let var1 = (adc / 16384.0 - t1 / 1024.0) * f64::from(self.t2);
        let d = adc / 131072.0 - t1 / 8192.0;
        let var2 = d * d * f64::from(self.t3);
        let t_fine = var1 + var2;
        (t_fine / 5120.0, t_fine)
    }

    /// Pressure in Pa (`None` if the calibration would divide by zero).
    pub fn pressure(&self, adc_p: u32, t_fine: f64) -> Option<f64> {
        let mut var1 = t_fine / 2.0 - 64000.0;
        let mut var2 = var1 * var1 * f64::from(self.p6) / 32768.0;
        var2 += var1 * f64::from(self.p5) * 2.0;
        var2 = var2 / 4.0 + f64::from(self.p4) * 65536.0;
        var1 = (f64::from(self.p3) * var1 * var1 / 524288.0 + f64::from(self.p2) * var1) / 524288.0;
        var1 = (1.0 + var1 / 32768.0) * f64::from(self.p1);
        if var1 == 0.0 {
            return None;
        }
        let mut p = 1048576.0 - f64::from(adc_p);
        p = (p - var2 / 4096.0) * 6250.0 / var1;
        let var1 = f64::from(self.p9) * p * p / 2147483648.0;
        let var2 = p * f64::from(self.p8) / 32768.0;
        Some(p + (var1 + var2 + f64::from(self.p7)) / 16.0)
    }

    /// Relative humidity in %, clamped to 0-100.
    pub fn humidity(&self, adc_h: u16, t_fine: f64) -> f64 {
        let mut h = t_fine - 76800.0;
        h = (f64::from(adc_h) - (f64::from(self.h4) * 64.0 + f64::from(self.h5) / 16384.0 * h))
            * (f64::from(self.h2) / 65536.0
                * (1.0
                    + f64::from(self.h6) / 67108864.0
                        * h
                        * (1.0 + f64::from(self.h3) / 67108864.0 * h)));
        h *= 1.0 - f64::from(self.h1) * h / 524288.0;
        h.clamp(0.0, 100.0)
    }
}

/// One compensated measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// °C.
    pub temperature: f64,
    /// Pa.
    pub pressure: f64,
    /// %RH.
    pub humidity: f64,
}

/// Raw ADC values of one burst read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawData {
    /// 20-bit pressure.
    pub adc_p: u32,
    /// 20-bit temperature.
    pub adc_t: u32,
    /// 16-bit humidity.
    pub adc_h: u16,
}

impl RawData {
    /// Decode the 8 bytes read from 0xF7.
    pub fn from_registers(d: &[u8; 8]) -> Self {
        let twenty = |i: usize| {
            (u32::from(d[i]) << 12) | (u32::from(d[i + 1]) << 4) | (u32::from(d[i + 2]) >> 4)
        };
        RawData {
            adc_p: twenty(0),
            adc_t: twenty(3),
            adc_h: u16::from_be_bytes([d[6], d[7]]),
        }
    }
}

/// Why a BME280 operation failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Error<E> {
    /// The bus failed.
    Bus(E),
    /// The chip-id register does not say BME280 (0x58 is a BMP280, which has no humidity).
    WrongChip(u8),
    /// The chip is still copying its calibration from NVM (just powered up); try again.
    CalibrationPending,
    /// The chip reports no measurement: just configured, or it was reset and lost its
    /// configuration (the driver re-initialises it on the next read).
    NoData,
    /// The calibration read back is blank (T1 or P1 is 0): not a working BME280, or a bus
    /// that reads zeros.
    BlankCalibration,
    /// The compensated values lie outside the chip's operating range (-40..85 °C,
    /// 300..1100 hPa) with a margin: a corrupted transfer or calibration. Pressure in Pa.
    Implausible {
        /// °C.
        temperature: f64,
        /// Pa.
        pressure: f64,
    },
}

impl<E> From<E> for Error<E> {
    fn from(e: E) -> Self {
        Error::Bus(e)
    }
}

/// The driver. See the [crate documentation](crate).
#[derive(Debug)]
pub struct Bme280<I2C> {
    i2c: I2C,
    address: u8,
    calibration: Option<Calibration>,
}

impl<I2C: I2c> Bme280<I2C> {
    /// A driver for the chip at `address`; nothing is sent until [`Bme280::init`] or
    /// [`Bme280::measure`].
    pub fn new(i2c: I2C, address: u8) -> Self {
        Bme280 {
            i2c,
            address,
            calibration: None,
        }
    }

    /// The I2C address.
    pub fn address(&self) -> u8 {
        self.address
    }

    /// The calibration read by [`Bme280::init`].
    pub fn calibration(&self) -> Option<&Calibration> {
        self.calibration.as_ref()
    }

    fn read_reg(&mut self, reg: u8, buf: &mut [u8]) -> Result<(), I2C::Error> {
        self.i2c.write_read(self.address, &[reg], buf)
    }

    fn write_reg(&mut self, reg: u8, value: u8) -> Result<(), I2C::Error> {
        self.i2c.write(self.address, &[reg, value])
    }

    /// Check the chip id, read the calibration, and start normal-mode measurements. No soft
    /// reset and no delay: the first measurement is ready about 10 ms later.
    pub fn init(&mut self) -> Result<(), Error<I2C::Error>> {
        self.calibration = None;
        let mut id = [0];
        self.read_reg(reg::ID, &mut id)?;
        if id[0] != CHIP_ID {
            return Err(Error::WrongChip(id[0]));
        }
        let mut status = [0];
        self.read_reg(reg::STATUS, &mut status)?;
        if status[0] & 0x01 != 0 {
            return Err(Error::CalibrationPending);
        }
        let mut a = [0; 26];
        let mut b = [0; 7];
        self.read_reg(reg::CALIB_00, &mut a)?;
        self.read_reg(reg::CALIB_26, &mut b)?;
        let cal = Calibration::from_registers(&a, &b);
        if cal.t1 == 0 || cal.p1 == 0 {
            return Err(Error::BlankCalibration);
        }
        // Sleep first: configuration written in normal mode may be ignored. ctrl_hum takes
        // effect with the following ctrl_meas write.
        self.write_reg(reg::CTRL_MEAS, 0)?;
        self.write_reg(reg::CTRL_HUM, CTRL_HUM_VALUE)?;
        self.write_reg(reg::CONFIG, CONFIG_VALUE)?;
        self.write_reg(reg::CTRL_MEAS, CTRL_MEAS_VALUE)?;
        self.calibration = Some(cal);
        Ok(())
    }

    /// Read the latest measurement, initialising the chip first if needed (and after it lost
    /// its configuration). Never blocks.
    pub fn measure(&mut self) -> Result<Measurement, Error<I2C::Error>> {
        let cal = match self.calibration {
            Some(cal) => cal,
            None => {
                self.init()?;
                // Just started: the first conversion is not finished yet.
                return Err(Error::NoData);
            }
        };
        let mut d = [0; 8];
        if let Err(e) = self.read_reg(reg::DATA, &mut d) {
            // Re-check the chip after a bus failure: it may have been replaced or reset.
            self.calibration = None;
            return Err(Error::Bus(e));
        }
        let raw = RawData::from_registers(&d);
        if raw.adc_t == SKIPPED_20 || raw.adc_p == SKIPPED_20 || raw.adc_h == SKIPPED_16 {
            self.calibration = None;
            return Err(Error::NoData);
        }
        let (temperature, t_fine) = cal.temperature(raw.adc_t);
        let pressure = cal.pressure(raw.adc_p, t_fine).unwrap_or(f64::NAN);
        let humidity = cal.humidity(raw.adc_h, t_fine);
        // Operating range -40..85 °C, 300..1100 hPa, with a margin.
        if !(-45.0..=90.0).contains(&temperature) || !(25_000.0..=125_000.0).contains(&pressure) {
            self.calibration = None;
            return Err(Error::Implausible {
                temperature,
                pressure,
            });
        }
        Ok(Measurement {
            temperature,
            pressure,
            humidity,
        })
    }

    /// Give the bus back.
    pub fn release(self) -> I2C {
        self.i2c
    }
}

#[cfg(any(test, feature = "test-fixtures"))]
pub mod test_fixtures;

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;

    use super::*;
    use embedded_hal::i2c::ErrorKind;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction as T};

    use crate::test_fixtures::*;

    const A: u8 = PRIMARY_ADDRESS;

    #[test]
    fn calibration_decoding_and_datasheet_example() {
        let (a, b) = calib_blocks();
        let c = Calibration::from_registers(&a, &b);
        assert_eq!((c.t1, c.t2, c.t3), (27504, 26435, -1000));
        assert_eq!((c.p1, c.p2, c.p9), (36477, -10685, 6000));
        assert_eq!(
            (c.h1, c.h2, c.h3, c.h4, c.h5, c.h6),
            (75, 362, 0, 313, 50, 30)
        );
        let (t, t_fine) = c.temperature(519888);
        assert!((t - 25.08).abs() < 0.01, "{t}");
        assert!((t_fine - 128422.0).abs() < 1.0, "{t_fine}");
        let p = c.pressure(415148, t_fine).unwrap();
        assert!((p - 100653.27).abs() < 0.5, "{p}");
        // Negative H4/H5 (sign in the high byte).
        let c2 = Calibration::from_registers(&a, &[0, 0, 0, 0xFF, 0xFF, 0xFF, 0]);
        assert_eq!(c2.h4, -1);
        assert_eq!(c2.h5, -1);
    }

    #[test]
    fn negative_temperature() {
        let (a, b) = calib_blocks();
        let c = Calibration::from_registers(&a, &b);
        // Find an ADC value about -10 °C by bisection on the monotonic formula.
        let (mut lo, mut hi) = (0u32, 1 << 20);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if c.temperature(mid).0 < -10.0 {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let mut tx = init_transactions();
        tx.push(T::write_read(A, vec![reg::DATA], data(415148, hi, 30000)));
        let i2c = Mock::new(&tx);
        let mut dev = Bme280::new(i2c, A);
        dev.init().unwrap();
        let m = dev.measure().unwrap();
        assert!((m.temperature + 10.0).abs() < 0.01, "{}", m.temperature);
        dev.release().done();
    }

    #[test]
    fn init_then_measurements() {
        let (a, b) = calib_blocks();
        let cal = Calibration::from_registers(&a, &b);
        let mut tx = init_transactions();
        tx.push(T::write_read(
            A,
            vec![reg::DATA],
            data(415148, 519888, 30000),
        ));
        let mut dev = Bme280::new(Mock::new(&tx), A);
        assert_eq!(dev.calibration(), None);
        dev.init().unwrap();
        assert_eq!(dev.calibration(), Some(&cal));
        let m = dev.measure().unwrap();
        let (t, t_fine) = cal.temperature(519888);
        assert_eq!(m.temperature, t);
        assert!((m.pressure - 100653.27).abs() < 0.5, "{}", m.pressure);
        assert_eq!(m.humidity, reference_humidity(&cal, 30000.0, t_fine));
        dev.release().done();
    }

    #[test]
    fn lazy_init_reset_detection_and_bus_errors() {
        let mut tx = init_transactions();
        // A reset chip reports skipped values: NoData, and the next measure initialises again
        // (and is refused: its first conversion is not done).
        tx.push(T::write_read(
            A,
            vec![reg::DATA],
            data(SKIPPED_20, SKIPPED_20, SKIPPED_16),
        ));
        tx.extend(init_transactions());
        // Bus error on the data read: the chip is checked again next time.
        tx.push(T::write_read(A, vec![reg::DATA], vec![0; 8]).with_error(ErrorKind::Bus));
        tx.push(T::write_read(A, vec![reg::ID], vec![0]).with_error(ErrorKind::Other));
        let mut dev = Bme280::new(Mock::new(&tx), A);
        assert_eq!(dev.measure(), Err(Error::NoData), "lazy init");
        assert_eq!(dev.measure(), Err(Error::NoData), "reset chip");
        assert_eq!(dev.measure(), Err(Error::NoData), "initialised again");
        assert_eq!(dev.measure(), Err(Error::Bus(ErrorKind::Bus)));
        assert_eq!(dev.measure(), Err(Error::Bus(ErrorKind::Other)));
        dev.release().done();
    }

    #[test]
    fn wrong_chip_blank_calibration_and_implausible_data() {
        let tx = faulty_chip_transactions();
        let mut dev = Bme280::new(Mock::new(&tx), A);
        assert_eq!(dev.init(), Err(Error::WrongChip(0x58)));
        assert_eq!(dev.init(), Err(Error::CalibrationPending));
        assert_eq!(dev.init(), Err(Error::BlankCalibration));
        dev.init().unwrap();
        assert!(matches!(dev.measure(), Err(Error::Implausible { .. })));
        // ... and the chip is initialised again before the next reading.
        assert_eq!(dev.calibration(), None);
        dev.release().done();
    }
}
