//! Run I2C drivers on SMBus-only adapters.
//!
//! Many adapters (the kernel's `i2c-stub`, several SoC and PC controllers) implement only SMBus
//! transfers, not arbitrary I2C messages (`I2C_RDWR`). Register-oriented chips such as the LM75
//! family and the BME280 only ever do "write a register pointer, then read N bytes" and "write
//! a register and its value", which are exactly SMBus transfers. [`SmbusI2c`] implements
//! [`embedded_hal::i2c::I2c`] over the small [`Smbus`] trait by mapping each transaction shape
//! onto one SMBus transfer:
//!
//! | I2C transaction | SMBus transfer |
//! |---|---|
//! | write `[cmd]` | send byte |
//! | write `[cmd, v]` | write byte data |
//! | write `[cmd, lo, hi]` | write word data (low byte first on the wire, as written) |
//! | write `[cmd, d1..dn]`, n ≤ 32 | write I2C block data |
//! | read 1 byte | receive byte |
//! | write `[cmd]` + read 1 byte | read byte data |
//! | write `[cmd]` + read 2 bytes | read word data (or I2C block read if word is unsupported) |
//! | write `[cmd]` + read n ≤ 32 bytes | read I2C block data |
//!
//! Anything else (longer transfers, other shapes) fails with [`SmbusError::Unsupported`]
//! without touching the bus. The bytes land in the buffer in wire order, so a driver sees the
//! same data as over plain I2C.
//!
//! Only SMBus-only adapters (and buses a board file marks `smbus = true`) come through here:
//! an adapter that can do plain I2C gets its transactions from linux-embedded-hal's `I2cdev`
//! as they are ([`crate::linux::i2c`]). linux-embedded-hal has no SMBus fallback of its own;
//! on an SMBus-only adapter its `I2C_RDWR` fails with EOPNOTSUPP
//! (Documentation/i2c/functionality.rst: the adapter lacks `I2C_FUNC_I2C`).

use std::fmt;

use embedded_hal::i2c::{self, ErrorKind, ErrorType, I2c, Operation, SevenBitAddress};

/// Longest SMBus/I2C block transfer.
pub const BLOCK_MAX: usize = 32;

/// What an SMBus adapter can do (a subset of the Linux `I2C_FUNC_SMBUS_*` bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Functionality {
    /// Receive/send byte.
    pub byte: bool,
    /// Read/write byte data.
    pub byte_data: bool,
    /// Read/write word data.
    pub word_data: bool,
    /// Read I2C block data.
    pub read_i2c_block: bool,
    /// Write I2C block data.
    pub write_i2c_block: bool,
}

impl Functionality {
    /// Everything.
    pub const ALL: Functionality = Functionality {
        byte: true,
        byte_data: true,
        word_data: true,
        read_i2c_block: true,
        write_i2c_block: true,
    };
}

/// SMBus primitives, addressed per call. Words are in SMBus order (low byte first on the wire).
pub trait Smbus {
    /// The adapter's error.
    type Error: fmt::Debug;

    /// What the adapter supports.
    fn functionality(&self) -> Functionality {
        Functionality::ALL
    }
    /// Receive byte.
    fn read_byte(&mut self, address: u8) -> Result<u8, Self::Error>;
    /// Send byte.
    fn write_byte(&mut self, address: u8, value: u8) -> Result<(), Self::Error>;
    /// Read byte data.
    fn read_byte_data(&mut self, address: u8, command: u8) -> Result<u8, Self::Error>;
    /// Write byte data.
    fn write_byte_data(&mut self, address: u8, command: u8, value: u8) -> Result<(), Self::Error>;
    /// Read word data.
    fn read_word_data(&mut self, address: u8, command: u8) -> Result<u16, Self::Error>;
    /// Write word data.
    fn write_word_data(&mut self, address: u8, command: u8, value: u16) -> Result<(), Self::Error>;
    /// Read `buf.len()` (≤ 32) bytes starting at `command` (I2C block read).
    fn read_i2c_block_data(
        &mut self,
        address: u8,
        command: u8,
        buf: &mut [u8],
    ) -> Result<(), Self::Error>;
    /// Write `data` (≤ 32 bytes) starting at `command` (I2C block write).
    fn write_i2c_block_data(
        &mut self,
        address: u8,
        command: u8,
        data: &[u8],
    ) -> Result<(), Self::Error>;
}

/// An error of [`SmbusI2c`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmbusError<E> {
    /// The adapter failed.
    Bus(E),
    /// The transaction has no SMBus equivalent on this adapter; nothing was sent.
    Unsupported(String),
}

impl<E: fmt::Debug> fmt::Display for SmbusError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SmbusError::Bus(e) => write!(f, "{e:?}"),
            SmbusError::Unsupported(s) => write!(f, "not possible over SMBus: {s}"),
        }
    }
}

impl<E: fmt::Debug + i2c::Error> i2c::Error for SmbusError<E> {
    fn kind(&self) -> ErrorKind {
        match self {
            SmbusError::Bus(e) => e.kind(),
            SmbusError::Unsupported(_) => ErrorKind::Other,
        }
    }
}

fn unsupported<E>(what: impl Into<String>) -> SmbusError<E> {
    SmbusError::Unsupported(what.into())
}

/// Runs one embedded-hal transaction as one SMBus transfer (see the [module docs](self)).
pub fn transaction<S: Smbus>(
    bus: &mut S,
    address: u8,
    operations: &mut [Operation<'_>],
) -> Result<(), SmbusError<S::Error>> {
    let f = bus.functionality();
    match operations {
        [] => Ok(()),
        [Operation::Write(data)] => match **data {
            [] => Err(unsupported("empty write (SMBus quick command)")),
            [cmd] if f.byte => bus.write_byte(address, cmd).map_err(SmbusError::Bus),
            [cmd, v] if f.byte_data => bus
                .write_byte_data(address, cmd, v)
                .map_err(SmbusError::Bus),
            [cmd, lo, hi] if f.word_data => bus
                .write_word_data(address, cmd, u16::from_le_bytes([lo, hi]))
                .map_err(SmbusError::Bus),
            [cmd, ref rest @ ..] if f.write_i2c_block && rest.len() <= BLOCK_MAX => bus
                .write_i2c_block_data(address, cmd, rest)
                .map_err(SmbusError::Bus),
            _ => Err(unsupported(format!("write of {} bytes", data.len()))),
        },
        [Operation::Read(buf)] => match buf.len() {
            1 if f.byte => {
                buf[0] = bus.read_byte(address).map_err(SmbusError::Bus)?;
                Ok(())
            }
            n => Err(unsupported(format!("read of {n} bytes without a command"))),
        },
        [Operation::Write(cmd), Operation::Read(buf)] if cmd.len() == 1 => {
            let cmd = cmd[0];
            match buf.len() {
                0 => Err(unsupported("read of 0 bytes")),
                1 if f.byte_data => {
                    buf[0] = bus.read_byte_data(address, cmd).map_err(SmbusError::Bus)?;
                    Ok(())
                }
                2 if f.word_data => {
                    let w = bus.read_word_data(address, cmd).map_err(SmbusError::Bus)?;
                    buf.copy_from_slice(&w.to_le_bytes());
                    Ok(())
                }
                n if n <= BLOCK_MAX && f.read_i2c_block => bus
                    .read_i2c_block_data(address, cmd, buf)
                    .map_err(SmbusError::Bus),
                n => Err(unsupported(format!("register read of {n} bytes"))),
            }
        }
        ops => Err(unsupported(format!(
            "transaction of {} operations (only write, read, or a 1-byte write then a read)",
            ops.len()
        ))),
    }
}

/// An [`I2c`] bus over an [`Smbus`] adapter. See the [module documentation](self).
///
/// ```
/// # use ocf_drivers::smbus::{Smbus, SmbusI2c};
/// # use embedded_hal::i2c::{ErrorKind, I2c};
/// # struct Stub;
/// # impl Smbus for Stub {
/// #     type Error = ErrorKind;
/// #     fn read_byte(&mut self, _: u8) -> Result<u8, ErrorKind> { Ok(0) }
/// #     fn write_byte(&mut self, _: u8, _: u8) -> Result<(), ErrorKind> { Ok(()) }
/// #     fn read_byte_data(&mut self, _: u8, _: u8) -> Result<u8, ErrorKind> { Ok(0) }
/// #     fn write_byte_data(&mut self, _: u8, _: u8, _: u8) -> Result<(), ErrorKind> { Ok(()) }
/// #     fn read_word_data(&mut self, _: u8, _: u8) -> Result<u16, ErrorKind> { Ok(0x8019) }
/// #     fn write_word_data(&mut self, _: u8, _: u8, _: u16) -> Result<(), ErrorKind> { Ok(()) }
/// #     fn read_i2c_block_data(&mut self, _: u8, _: u8, _: &mut [u8]) -> Result<(), ErrorKind> { Ok(()) }
/// #     fn write_i2c_block_data(&mut self, _: u8, _: u8, _: &[u8]) -> Result<(), ErrorKind> { Ok(()) }
/// # }
/// let mut bus = SmbusI2c::new(Stub);
/// let mut buf = [0; 2];
/// bus.write_read(0x48, &[0x00], &mut buf).unwrap(); // an SMBus "read word data"
/// assert_eq!(buf, [0x19, 0x80]); // wire order: 25.5 °C on an LM75
/// ```
#[derive(Debug)]
pub struct SmbusI2c<S> {
    bus: S,
}

impl<S> SmbusI2c<S> {
    /// Wraps an SMBus adapter.
    pub fn new(bus: S) -> Self {
        SmbusI2c { bus }
    }

    /// The adapter.
    pub fn inner(&mut self) -> &mut S {
        &mut self.bus
    }

    /// Unwraps the adapter.
    pub fn into_inner(self) -> S {
        self.bus
    }
}

impl<S: Smbus> ErrorType for SmbusI2c<S>
where
    S::Error: i2c::Error,
{
    type Error = SmbusError<S::Error>;
}

impl<S: Smbus> I2c<SevenBitAddress> for SmbusI2c<S>
where
    S::Error: i2c::Error,
{
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Self::Error> {
        transaction(&mut self.bus, address, operations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm75::{Lm75, Lm75Sensor, Model};
    use crate::sensor::Sensor;
    use std::collections::VecDeque;

    /// One expected SMBus call and its answer.
    #[derive(Debug, Clone, PartialEq)]
    enum Call {
        ReadByte(u8, u8),
        WriteByte(u8, u8),
        ReadByteData(u8, u8, u8),
        WriteByteData(u8, u8, u8),
        ReadWordData(u8, u8, u16),
        WriteWordData(u8, u8, u16),
        ReadBlock(u8, u8, Vec<u8>),
        WriteBlock(u8, u8, Vec<u8>),
        Fail,
    }

    /// A scripted SMBus adapter (SMBus has no embedded-hal-mock, so this plays its role).
    struct MockSmbus {
        calls: VecDeque<Call>,
        functionality: Functionality,
    }

    impl MockSmbus {
        fn new(calls: Vec<Call>) -> Self {
            MockSmbus {
                calls: calls.into(),
                functionality: Functionality::ALL,
            }
        }
        fn next(&mut self) -> Call {
            self.calls.pop_front().expect("unexpected SMBus call")
        }
        fn done(&self) {
            assert!(self.calls.is_empty(), "calls left: {:?}", self.calls);
        }
    }

    impl Smbus for MockSmbus {
        type Error = ErrorKind;
        fn functionality(&self) -> Functionality {
            self.functionality
        }
        fn read_byte(&mut self, a: u8) -> Result<u8, ErrorKind> {
            match self.next() {
                Call::ReadByte(ea, v) if ea == a => Ok(v),
                Call::Fail => Err(ErrorKind::Bus),
                c => panic!("read_byte({a:#x}), expected {c:?}"),
            }
        }
        fn write_byte(&mut self, a: u8, v: u8) -> Result<(), ErrorKind> {
            assert_eq!(self.next(), Call::WriteByte(a, v));
            Ok(())
        }
        fn read_byte_data(&mut self, a: u8, c: u8) -> Result<u8, ErrorKind> {
            match self.next() {
                Call::ReadByteData(ea, ec, v) if (ea, ec) == (a, c) => Ok(v),
                Call::Fail => Err(ErrorKind::Bus),
                call => panic!("read_byte_data({a:#x}, {c:#x}), expected {call:?}"),
            }
        }
        fn write_byte_data(&mut self, a: u8, c: u8, v: u8) -> Result<(), ErrorKind> {
            assert_eq!(self.next(), Call::WriteByteData(a, c, v));
            Ok(())
        }
        fn read_word_data(&mut self, a: u8, c: u8) -> Result<u16, ErrorKind> {
            match self.next() {
                Call::ReadWordData(ea, ec, v) if (ea, ec) == (a, c) => Ok(v),
                Call::Fail => Err(ErrorKind::NoAcknowledge(i2c::NoAcknowledgeSource::Address)),
                call => panic!("read_word_data({a:#x}, {c:#x}), expected {call:?}"),
            }
        }
        fn write_word_data(&mut self, a: u8, c: u8, v: u16) -> Result<(), ErrorKind> {
            assert_eq!(self.next(), Call::WriteWordData(a, c, v));
            Ok(())
        }
        fn read_i2c_block_data(&mut self, a: u8, c: u8, buf: &mut [u8]) -> Result<(), ErrorKind> {
            match self.next() {
                Call::ReadBlock(ea, ec, v) if (ea, ec) == (a, c) && v.len() == buf.len() => {
                    buf.copy_from_slice(&v);
                    Ok(())
                }
                call => panic!(
                    "read_i2c_block({a:#x}, {c:#x}, {}), expected {call:?}",
                    buf.len()
                ),
            }
        }
        fn write_i2c_block_data(&mut self, a: u8, c: u8, d: &[u8]) -> Result<(), ErrorKind> {
            assert_eq!(self.next(), Call::WriteBlock(a, c, d.to_vec()));
            Ok(())
        }
    }

    #[test]
    fn maps_each_shape() {
        let mut bus = SmbusI2c::new(MockSmbus::new(vec![
            Call::WriteByte(0x48, 0x00),
            Call::WriteByteData(0x48, 0x01, 0x60),
            Call::WriteWordData(0x48, 0x02, 0x804B),
            Call::WriteBlock(0x48, 0x03, vec![1, 2, 3]),
            Call::ReadByte(0x48, 0x19),
            Call::ReadByteData(0x48, 0x01, 0x60),
            Call::ReadWordData(0x48, 0x00, 0x8019),
            Call::ReadBlock(0x76, 0xF7, vec![1, 2, 3, 4, 5, 6, 7, 8]),
        ]));
        bus.write(0x48, &[0x00]).unwrap();
        bus.write(0x48, &[0x01, 0x60]).unwrap();
        bus.write(0x48, &[0x02, 0x4B, 0x80]).unwrap();
        bus.write(0x48, &[0x03, 1, 2, 3]).unwrap();
        let mut one = [0];
        bus.read(0x48, &mut one).unwrap();
        assert_eq!(one, [0x19]);
        bus.write_read(0x48, &[0x01], &mut one).unwrap();
        assert_eq!(one, [0x60]);
        let mut two = [0; 2];
        bus.write_read(0x48, &[0x00], &mut two).unwrap();
        assert_eq!(
            two,
            [0x19, 0x80],
            "word data arrives low byte first = wire order"
        );
        let mut eight = [0; 8];
        bus.write_read(0x76, &[0xF7], &mut eight).unwrap();
        assert_eq!(eight, [1, 2, 3, 4, 5, 6, 7, 8]);
        bus.inner().done();
    }

    #[test]
    fn word_read_falls_back_to_block_read() {
        let mut smbus = MockSmbus::new(vec![Call::ReadBlock(0x48, 0x00, vec![0xE7, 0x00])]);
        smbus.functionality.word_data = false;
        let mut bus = SmbusI2c::new(smbus);
        let mut two = [0; 2];
        bus.write_read(0x48, &[0x00], &mut two).unwrap();
        assert_eq!(two, [0xE7, 0x00]);
        bus.inner().done();
    }

    #[test]
    fn unsupported_shapes_touch_nothing() {
        let mut bus = SmbusI2c::new(MockSmbus::new(vec![]));
        let mut big = [0; 33];
        let e = bus.write_read(0x48, &[0x00], &mut big).unwrap_err();
        assert!(matches!(e, SmbusError::Unsupported(_)));
        assert_eq!(i2c::Error::kind(&e), ErrorKind::Other);
        let mut two = [0; 2];
        assert!(bus.read(0x48, &mut two).is_err());
        assert!(bus.write_read(0x48, &[0, 1], &mut two).is_err());
        assert!(bus.write(0x48, &[]).is_err());
        assert!(bus
            .transaction(
                0x48,
                &mut [
                    Operation::Write(&[0]),
                    Operation::Write(&[1]),
                    Operation::Read(&mut two)
                ]
            )
            .is_err());
        bus.inner().done();
    }

    #[test]
    fn lm75_driver_runs_over_smbus() {
        let bus = SmbusI2c::new(MockSmbus::new(vec![
            Call::ReadByteData(0x48, 0x01, 0x00),
            Call::WriteByteData(0x48, 0x01, 0x60),
            // -25.0625 °C = 0xE6F0 MSB first; as an SMBus word (LSB first) 0xF0E6.
            Call::ReadWordData(0x48, 0x00, 0xF0E6),
            Call::Fail,
        ]));
        let mut s = Lm75Sensor::new(Lm75::new(bus, 0x48, Model::Tmp105), "i2c-stub");
        assert_eq!(s.read().unwrap().value, -25.0625);
        let e = s.read().unwrap_err();
        assert!(e.message().contains("NoAcknowledge"), "{e}");
    }
}
