//! A `no_std` [embedded-hal] 1.0 driver for the LM75 family of I2C temperature sensors: LM75
//! (A/B), TMP75, TMP105 and TMP175, which share one register map.
//!
//! The temperature register holds a left-aligned two's-complement value in 1/256 °C. The LM75
//! gives 9 bits (0.5 °C); the TMP75/TMP105/TMP175 give 9 to 12 bits (0.0625 °C), selected by
//! the R1:R0 bits of the configuration register (TMP105 datasheet, SBOS323, §7.5.3). The `lm75`
//! crate knows only 9- and 11-bit parts, so it cannot use the TMP105's 12 bits; this one covers
//! the family with the same four registers.
//!
//! Every call is one bus transaction (a register pointer write, then a read, or a pointer and
//! the value), nothing sleeps, and the driver keeps no state but the resolution it converts at.
//!
//! # Usage
//!
//! ```
//! # use embedded_hal_mock::eh1::i2c::{Mock as I2c, Transaction};
//! # let i2c = I2c::new(&[
//! #     Transaction::write_read(0x48, vec![0x01], vec![0x00]),
//! #     Transaction::write(0x48, vec![0x01, 0x60]),
//! #     Transaction::write_read(0x48, vec![0x00], vec![0x19, 0x10]),
//! # ]);
//! use lm75x::{Lm75, Model, DEFAULT_ADDRESS};
//!
//! // `i2c` is any embedded-hal 1.0 I2C bus: linux-embedded-hal's `I2cdev::new("/dev/i2c-1")`
//! // on Linux, a HAL's I2C peripheral on a microcontroller (here a mock).
//! let mut sensor = Lm75::new(i2c, DEFAULT_ADDRESS, Model::Tmp105);
//! sensor.configure()?; // leave shutdown, 12 bits
//! let celsius = sensor.read_celsius()?;
//! assert_eq!(celsius, 25.0625);
//! # sensor.release().done();
//! # Ok::<(), embedded_hal::i2c::ErrorKind>(())
//! ```
//!
//! [embedded-hal]: https://docs.rs/embedded-hal

#![no_std]
#![warn(missing_docs)]

use embedded_hal::i2c::I2c;

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
    /// Shutdown mode (SD).
    pub const SHUTDOWN: u8 = 0b0000_0001;
    /// Resolution bits R1:R0 (TMP75/TMP105/TMP175 only; reserved on the LM75).
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

/// The driver. See the [crate documentation](crate).
#[derive(Debug)]
pub struct Lm75<I2C> {
    i2c: I2C,
    address: u8,
    model: Model,
    resolution: Resolution,
}

impl<I2C: I2c> Lm75<I2C> {
    /// A driver for `model` at `address`. TMP75/TMP105 are set to 12 bits by
    /// [`Lm75::configure`]; the LM75 stays at its fixed 9 bits. Nothing is sent yet.
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
    /// and sets R1:R0 (TMP75/TMP105), keeping the other bits (alert polarity, fault queue).
    /// Writes only if something must change.
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

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;

    use super::*;
    use embedded_hal::i2c::{ErrorKind, NoAcknowledgeSource};
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction as T};

    const A: u8 = DEFAULT_ADDRESS;

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
        assert_eq!(Resolution::Bits9.config_bits(), 0x00);
        for bits in 9..=12 {
            assert_eq!(Resolution::from_bits(bits).unwrap().bits(), bits);
        }
        assert_eq!(Resolution::from_bits(8), None);
        assert_eq!(Resolution::from_bits(13), None);
    }

    #[test]
    fn tmp105_configures_12_bits_then_reads() {
        let i2c = Mock::new(&[
            // Power-on configuration 0x00: 9 bits. Set R1:R0 = 11.
            T::write_read(A, vec![0x01], vec![0x00]),
            T::write(A, vec![0x01, 0x60]),
            T::write_read(A, vec![0x00], vec![0xE4, 0x80]),
            T::write_read(A, vec![0x00], vec![0x19, 0x10]),
        ]);
        let mut dev = Lm75::new(i2c, A, Model::Tmp105);
        assert_eq!(dev.resolution(), Resolution::Bits12);
        dev.configure().unwrap();
        assert_eq!(dev.read_celsius().unwrap(), -27.5);
        assert_eq!(dev.read_celsius().unwrap(), 25.0625);
        dev.release().done();
    }

    #[test]
    fn configure_keeps_other_bits_and_writes_only_changes() {
        let i2c = Mock::new(&[
            // Shut down, 12 bits, polarity and fault-queue bits set: only SD is cleared.
            T::write_read(A, vec![0x01], vec![0x7F]),
            T::write(A, vec![0x01, 0x7E]),
            // Already right: no write.
            T::write_read(A, vec![0x01], vec![0x7E]),
            // 10 bits asked for: R1:R0 = 01.
            T::write_read(A, vec![0x01], vec![0x60]),
            T::write(A, vec![0x01, 0x20]),
        ]);
        let mut dev = Lm75::new(i2c, A, Model::Tmp75);
        dev.configure().unwrap();
        dev.configure().unwrap();
        let mut dev = dev.with_resolution(Resolution::Bits10);
        dev.configure().unwrap();
        dev.release().done();
    }

    #[test]
    fn lm75_leaves_shutdown_and_keeps_9_bits() {
        let i2c = Mock::new(&[
            T::write_read(A, vec![0x01], vec![0x01]),
            T::write(A, vec![0x01, 0x00]),
            T::write_read(A, vec![0x00], vec![0xFF, 0xFF]),
        ]);
        let mut dev = Lm75::new(i2c, A, Model::Lm75).with_resolution(Resolution::Bits12);
        assert_eq!(dev.resolution(), Resolution::Bits9);
        assert_eq!(dev.model().range(), (-55.0, 125.0));
        dev.configure().unwrap();
        assert_eq!(dev.read_celsius().unwrap(), -0.5);
        dev.release().done();
    }

    #[test]
    fn bus_errors_come_back_unchanged() {
        let nack = ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address);
        let i2c = Mock::new(&[
            T::write_read(A, vec![0x01], vec![0]).with_error(ErrorKind::Bus),
            T::write_read(A, vec![0x00], vec![0, 0]).with_error(nack),
            T::write(A, vec![0x01, 0x60]).with_error(ErrorKind::ArbitrationLoss),
        ]);
        let mut dev = Lm75::new(i2c, A, Model::Tmp105);
        assert_eq!(dev.configure(), Err(ErrorKind::Bus));
        assert_eq!(dev.read_raw(), Err(nack));
        assert_eq!(dev.write_config(0x60), Err(ErrorKind::ArbitrationLoss));
        dev.release().done();
    }
}
