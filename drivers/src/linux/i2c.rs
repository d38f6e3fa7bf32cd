//! `/dev/i2c-N`: plain I2C through `linux-embedded-hal`'s [`I2cdev`], SMBus transfers through
//! the same device's `i2cdev` handle where the adapter can do nothing else.
//!
//! [`LinuxI2c`] asks the adapter what it can do once, at open (`I2C_FUNCS`,
//! Documentation/i2c/functionality.rst). An adapter with `I2C_FUNC_I2C` (the BCM2835/BCM2711
//! BSC controllers, the Pi 5's RP1 DesignWare controllers, QEMU's raspi3b BSC) gets every
//! [`embedded_hal::i2c::I2c`] transaction as one `I2C_RDWR` message list, through
//! [`I2cdev`]. An adapter without it (`i2c-stub`, several SMBus host controllers) cannot
//! carry arbitrary messages at all: for those, and when a board file says `smbus = true`,
//! each transaction is mapped onto one SMBus transfer by [`crate::smbus`] and sent with
//! `I2C_SMBUS` (Documentation/i2c/smbus-protocol.rst). [`LinuxI2c`] also implements
//! [`Smbus`] directly.
//!
//! Of `linux-embedded-hal` only the `i2c` feature is used. It brings `i2cdev` 0.6, which
//! depends on nix 0.26, while `linux-embedded-hal` 0.5 itself depends on nix 0.31 (for its
//! error kinds): two nix versions that no feature switches off. Its `gpio_cdev` feature is not
//! used (a third nix with `gpio-cdev`, and uAPI v1 without kernel edge timestamps): GPIO stays
//! on `gpiocdev` (see [`crate::linux::gpio`]).

use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use embedded_hal::i2c::{self, ErrorKind, ErrorType, NoAcknowledgeSource, Operation};
use linux_embedded_hal::i2cdev::core::I2CDevice;
use linux_embedded_hal::i2cdev::linux::LinuxI2CError;
use linux_embedded_hal::I2cdev;

use crate::smbus::{self, Functionality, Smbus, SmbusError, BLOCK_MAX};
use crate::DriverError;

// <linux/i2c-dev.h>, <uapi/linux/i2c.h>
const I2C_FUNCS: libc::c_ulong = 0x0705;

/// `I2C_FUNC_*` bits of <uapi/linux/i2c.h> that decide how transactions go out.
pub mod func {
    /// Plain I2C messages (`I2C_RDWR`).
    pub const I2C: u64 = 0x0000_0001;
    /// SMBus receive byte.
    pub const SMBUS_READ_BYTE: u64 = 0x0002_0000;
    /// SMBus send byte.
    pub const SMBUS_WRITE_BYTE: u64 = 0x0004_0000;
    /// SMBus read byte data.
    pub const SMBUS_READ_BYTE_DATA: u64 = 0x0008_0000;
    /// SMBus write byte data.
    pub const SMBUS_WRITE_BYTE_DATA: u64 = 0x0010_0000;
    /// SMBus read word data.
    pub const SMBUS_READ_WORD_DATA: u64 = 0x0020_0000;
    /// SMBus write word data.
    pub const SMBUS_WRITE_WORD_DATA: u64 = 0x0040_0000;
    /// SMBus read I2C block data.
    pub const SMBUS_READ_I2C_BLOCK: u64 = 0x0400_0000;
    /// SMBus write I2C block data.
    pub const SMBUS_WRITE_I2C_BLOCK: u64 = 0x0800_0000;
}

/// Whether an adapter with these `I2C_FUNC_*` bits can only do SMBus transfers.
pub fn is_smbus_only(funcs: u64) -> bool {
    funcs & func::I2C == 0
}

/// The SMBus transfers an adapter with these `I2C_FUNC_*` bits supports.
pub fn smbus_functionality(funcs: u64) -> Functionality {
    let has = |bit| funcs & bit != 0;
    Functionality {
        byte: has(func::SMBUS_READ_BYTE) && has(func::SMBUS_WRITE_BYTE),
        byte_data: has(func::SMBUS_READ_BYTE_DATA) && has(func::SMBUS_WRITE_BYTE_DATA),
        word_data: has(func::SMBUS_READ_WORD_DATA) && has(func::SMBUS_WRITE_WORD_DATA),
        read_i2c_block: has(func::SMBUS_READ_I2C_BLOCK),
        write_i2c_block: has(func::SMBUS_WRITE_I2C_BLOCK),
    }
}

/// The embedded-hal error kind of an errno from an I2C transfer
/// (Documentation/i2c/fault-codes.rst).
pub fn error_kind(errno: Option<i32>) -> ErrorKind {
    match errno {
        // "ENXIO: returned by I2C adapters to indicate that the address phase of a transfer
        // didn't get an ACK"; EREMOTEIO is what several adapters (bcm2835, designware) return
        // for a NAK in either phase.
        Some(libc::ENXIO) => ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address),
        Some(libc::EREMOTEIO) | Some(libc::ENODEV) => {
            ErrorKind::NoAcknowledge(NoAcknowledgeSource::Unknown)
        }
        Some(libc::EAGAIN) => ErrorKind::ArbitrationLoss,
        Some(libc::ETIMEDOUT) | Some(libc::EIO) | Some(libc::EPROTO) => ErrorKind::Bus,
        _ => ErrorKind::Other,
    }
}

fn io_error(e: &LinuxI2CError) -> io::Error {
    match e {
        LinuxI2CError::Errno(n) => io::Error::from_raw_os_error(*n),
        LinuxI2CError::Io(e) => match e.raw_os_error() {
            Some(n) => io::Error::from_raw_os_error(n),
            None => io::Error::new(e.kind(), e.to_string()),
        },
    }
}

/// An I2C error with the device node, the address, the operation, and the OS error.
///
/// Its `Debug` form is the readable message (e.g. `/dev/i2c-1 0x48: I2C_RDWR: Remote I/O error
/// (os error 121)`), because generic drivers only see `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct LinuxI2cError {
    kind: ErrorKind,
    message: String,
}

impl LinuxI2cError {
    fn os(path: &Path, address: u16, op: &str, e: io::Error) -> Self {
        let hint = match e.raw_os_error() {
            // I2C_SLAVE refuses an address a kernel driver has claimed
            // (Documentation/i2c/dev-interface.rst).
            Some(libc::EBUSY) => {
                " (a kernel driver is bound to this address; unbind it or use another address)"
            }
            _ => "",
        };
        LinuxI2cError {
            kind: error_kind(e.raw_os_error()),
            message: format!("{} {address:#04x}: {op}: {e}{hint}", path.display()),
        }
    }

    fn i2cdev(path: &Path, address: u16, op: &str, e: &LinuxI2CError) -> Self {
        Self::os(path, address, op, io_error(e))
    }

    fn unsupported(path: &Path, address: u16, what: String) -> Self {
        LinuxI2cError {
            kind: ErrorKind::Other,
            message: format!("{} {address:#04x}: {what}", path.display()),
        }
    }
}

impl fmt::Debug for LinuxI2cError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Display for LinuxI2cError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for LinuxI2cError {}

impl i2c::Error for LinuxI2cError {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
}

/// An open `/dev/i2c-N`. See the [module documentation](self).
pub struct LinuxI2c {
    dev: I2cdev,
    path: PathBuf,
    funcs: u64,
    force_smbus: bool,
}

impl fmt::Debug for LinuxI2c {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinuxI2c")
            .field("path", &self.path)
            .field("funcs", &format_args!("{:#010x}", self.funcs))
            .field("smbus", &self.uses_smbus())
            .finish()
    }
}

impl LinuxI2c {
    /// Opens the device node and asks the adapter what it can do.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DriverError> {
        let path = path.as_ref().to_path_buf();
        // I2cdev::new opens the node and selects address 0 with I2C_SLAVE: an open error is an
        // io::Error, a refused ioctl an errno (e.g. ENOTTY: not an i2c-dev node).
        let dev = I2cdev::new(&path).map_err(|e| match e {
            LinuxI2CError::Io(e) => {
                let hint = if e.kind() == io::ErrorKind::NotFound {
                    " (is the bus enabled, e.g. dtparam=i2c_arm=on, and i2c-dev loaded?)"
                } else {
                    ""
                };
                DriverError::new(format!("cannot open {}: {e}{hint}", path.display()))
            }
            e => DriverError::new(format!(
                "{} is not an I2C adapter: I2C_SLAVE: {}",
                path.display(),
                io_error(&e)
            )),
        })?;
        let mut funcs: libc::c_ulong = 0;
        // SAFETY: I2C_FUNCS writes one unsigned long through the pointer, which is valid and
        // writable for the call (Documentation/i2c/dev-interface.rst). i2cdev has no call
        // for it.
        let rc = unsafe {
            libc::ioctl(
                dev.as_raw_fd(),
                I2C_FUNCS as _,
                &mut funcs as *mut libc::c_ulong,
            )
        };
        if rc < 0 {
            return Err(DriverError::new(format!(
                "{} is not an I2C adapter: I2C_FUNCS: {}",
                path.display(),
                io::Error::last_os_error()
            )));
        }
        Ok(LinuxI2c {
            dev,
            path,
            // c_ulong is u32 on 32-bit ARM.
            #[allow(clippy::useless_conversion)]
            funcs: u64::from(funcs),
            force_smbus: false,
        })
    }

    /// The device node.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The adapter's `I2C_FUNC_*` bits.
    pub fn functionality_bits(&self) -> u64 {
        self.funcs
    }

    /// Use SMBus transfers even if the adapter can do plain I2C.
    pub fn force_smbus(&mut self, force: bool) {
        self.force_smbus = force;
    }

    /// Whether [`embedded_hal::i2c::I2c`] transactions go out as SMBus transfers.
    pub fn uses_smbus(&self) -> bool {
        self.force_smbus || is_smbus_only(self.funcs)
    }

    /// Points the i2cdev handle at `address` for the next SMBus transfer. Done before every
    /// transfer, not cached: [`I2cdev`]'s own transactions may reopen the node for another
    /// address, and an `I2C_SLAVE` ioctl costs less than a stale address would.
    fn select(&mut self, address: u8) -> Result<(), LinuxI2cError> {
        let address = u16::from(address);
        self.dev
            .set_slave_address(address)
            .map_err(|e| LinuxI2cError::i2cdev(&self.path, address, "I2C_SLAVE", &e))
    }

    fn smbus_error(&self, address: u8, e: LinuxI2CError) -> LinuxI2cError {
        LinuxI2cError::i2cdev(&self.path, u16::from(address), "I2C_SMBUS", &e)
    }
}

impl ErrorType for LinuxI2c {
    type Error = LinuxI2cError;
}

impl i2c::I2c for LinuxI2c {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Self::Error> {
        if self.uses_smbus() {
            return smbus::transaction(self, address, operations).map_err(|e| match e {
                SmbusError::Bus(e) => e,
                SmbusError::Unsupported(what) => LinuxI2cError::unsupported(
                    &self.path,
                    u16::from(address),
                    format!("not possible on this SMBus-only adapter: {what}"),
                ),
            });
        }
        if operations.is_empty() {
            return Ok(());
        }
        // One I2C_RDWR message per operation, a repeated START between them. embedded-hal
        // would merge adjacent operations of one direction into one message; the chip drivers
        // here never issue two in a row, so the difference does not show.
        i2c::I2c::transaction(&mut self.dev, address, operations).map_err(|e| {
            LinuxI2cError::i2cdev(&self.path, u16::from(address), "I2C_RDWR", e.inner())
        })
    }
}

impl Smbus for LinuxI2c {
    type Error = LinuxI2cError;

    fn functionality(&self) -> Functionality {
        smbus_functionality(self.funcs)
    }

    fn read_byte(&mut self, address: u8) -> Result<u8, LinuxI2cError> {
        self.select(address)?;
        self.dev
            .smbus_read_byte()
            .map_err(|e| self.smbus_error(address, e))
    }

    fn write_byte(&mut self, address: u8, value: u8) -> Result<(), LinuxI2cError> {
        self.select(address)?;
        self.dev
            .smbus_write_byte(value)
            .map_err(|e| self.smbus_error(address, e))
    }

    fn read_byte_data(&mut self, address: u8, command: u8) -> Result<u8, LinuxI2cError> {
        self.select(address)?;
        self.dev
            .smbus_read_byte_data(command)
            .map_err(|e| self.smbus_error(address, e))
    }

    fn write_byte_data(
        &mut self,
        address: u8,
        command: u8,
        value: u8,
    ) -> Result<(), LinuxI2cError> {
        self.select(address)?;
        self.dev
            .smbus_write_byte_data(command, value)
            .map_err(|e| self.smbus_error(address, e))
    }

    fn read_word_data(&mut self, address: u8, command: u8) -> Result<u16, LinuxI2cError> {
        self.select(address)?;
        self.dev
            .smbus_read_word_data(command)
            .map_err(|e| self.smbus_error(address, e))
    }

    fn write_word_data(
        &mut self,
        address: u8,
        command: u8,
        value: u16,
    ) -> Result<(), LinuxI2cError> {
        self.select(address)?;
        self.dev
            .smbus_write_word_data(command, value)
            .map_err(|e| self.smbus_error(address, e))
    }

    fn read_i2c_block_data(
        &mut self,
        address: u8,
        command: u8,
        buf: &mut [u8],
    ) -> Result<(), LinuxI2cError> {
        if buf.len() > BLOCK_MAX {
            return Err(LinuxI2cError::unsupported(
                &self.path,
                u16::from(address),
                format!("I2C block read of {} bytes (max {BLOCK_MAX})", buf.len()),
            ));
        }
        self.select(address)?;
        let got = self
            .dev
            .smbus_read_i2c_block_data(command, buf.len() as u8)
            .map_err(|e| self.smbus_error(address, e))?;
        if got.len() != buf.len() {
            return Err(LinuxI2cError::unsupported(
                &self.path,
                u16::from(address),
                format!(
                    "I2C block read returned {} of {} bytes",
                    got.len(),
                    buf.len()
                ),
            ));
        }
        buf.copy_from_slice(&got);
        Ok(())
    }

    fn write_i2c_block_data(
        &mut self,
        address: u8,
        command: u8,
        data: &[u8],
    ) -> Result<(), LinuxI2cError> {
        // i2cdev would cut a longer block to 32 bytes without a word.
        if data.len() > BLOCK_MAX {
            return Err(LinuxI2cError::unsupported(
                &self.path,
                u16::from(address),
                format!("I2C block write of {} bytes (max {BLOCK_MAX})", data.len()),
            ));
        }
        self.select(address)?;
        self.dev
            .smbus_write_i2c_block_data(command, data)
            .map_err(|e| self.smbus_error(address, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_errors_are_clear() {
        let e = LinuxI2c::open("/dev/i2c-does-not-exist").unwrap_err();
        assert!(
            e.message()
                .starts_with("cannot open /dev/i2c-does-not-exist: No such file"),
            "{e}"
        );
        assert!(e.message().contains("dtparam=i2c_arm=on"), "{e}");
        // A file that is not an I2C adapter is refused at open, not at the first read.
        let e = LinuxI2c::open("/dev/null").unwrap_err();
        assert!(
            e.message().starts_with("/dev/null is not an I2C adapter"),
            "{e}"
        );
    }

    /// `I2C_FUNCS` of i2c-bcm2835 (Pi 1-4), as read from QEMU raspi3b's BSC1 through this
    /// module: I2C | SMBUS_EMUL.
    const BCM2835_FUNCS: u64 = 0x0eff_0009;
    /// i2c-stub, as its functionality() callback builds it: SMBus QUICK | BYTE | BYTE_DATA |
    /// WORD_DATA | BLOCK_DATA | I2C_BLOCK, no I2C.
    const STUB_FUNCS: u64 =
        0x0001_0000 | 0x0006_0000 | 0x0018_0000 | 0x0060_0000 | 0x0300_0000 | 0x0c00_0000;

    #[test]
    fn plain_i2c_adapters_use_i2c_rdwr_and_smbus_only_ones_smbus() {
        assert!(!is_smbus_only(BCM2835_FUNCS));
        assert!(is_smbus_only(STUB_FUNCS));
        let f = smbus_functionality(STUB_FUNCS);
        assert_eq!(f, Functionality::ALL);
        // An adapter with byte data only cannot read the LM75's temperature word: the SMBus
        // mapping must know that to refuse it instead of sending something else.
        let f = smbus_functionality(func::SMBUS_READ_BYTE_DATA | func::SMBUS_WRITE_BYTE_DATA);
        assert!(f.byte_data && !f.word_data && !f.read_i2c_block && !f.byte);
        // Read without write is not enough for a transfer both ways.
        let f = smbus_functionality(func::SMBUS_READ_WORD_DATA);
        assert!(!f.word_data);
    }

    #[test]
    fn errno_kinds_follow_the_kernel_fault_codes() {
        use embedded_hal::i2c::Error as _;
        assert_eq!(
            error_kind(Some(libc::ENXIO)),
            ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address)
        );
        assert_eq!(
            error_kind(Some(libc::EREMOTEIO)),
            ErrorKind::NoAcknowledge(NoAcknowledgeSource::Unknown)
        );
        assert_eq!(error_kind(Some(libc::EAGAIN)), ErrorKind::ArbitrationLoss);
        assert_eq!(error_kind(Some(libc::ETIMEDOUT)), ErrorKind::Bus);
        assert_eq!(error_kind(Some(libc::EINVAL)), ErrorKind::Other);
        assert_eq!(error_kind(None), ErrorKind::Other);

        let path = Path::new("/dev/i2c-1");
        let e = LinuxI2cError::i2cdev(
            path,
            0x48,
            "I2C_RDWR",
            &LinuxI2CError::Errno(libc::EREMOTEIO),
        );
        assert_eq!(
            format!("{e:?}"),
            format!(
                "/dev/i2c-1 0x48: I2C_RDWR: {}",
                io::Error::from_raw_os_error(libc::EREMOTEIO)
            )
        );
        assert_eq!(
            e.kind(),
            ErrorKind::NoAcknowledge(NoAcknowledgeSource::Unknown)
        );
        let e = LinuxI2cError::i2cdev(path, 0x48, "I2C_SLAVE", &LinuxI2CError::Errno(libc::EBUSY));
        assert!(
            e.to_string().ends_with(
                "(a kernel driver is bound to this address; unbind it or use another address)"
            ),
            "{e}"
        );
    }
}
