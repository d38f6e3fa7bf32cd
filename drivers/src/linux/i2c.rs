//! `/dev/i2c-N` through the kernel's i2c-dev ioctls, with no dependency beyond libc.
//!
//! [`LinuxI2c`] implements [`embedded_hal::i2c::I2c`] with `I2C_RDWR` where the adapter can do
//! plain I2C, and falls back to SMBus transfers (`I2C_SMBUS`, see [`crate::smbus`]) where it
//! cannot (`i2c-stub`, SMBus-only controllers) or when told to. It also implements
//! [`Smbus`] directly.
//!
//! (Why not `linux-embedded-hal`'s `I2cdev`: its `i2c` feature pulls `i2cdev`, which brings
//! nix 0.26 next to linux-embedded-hal's own nix 0.31; these few ioctls are simpler than two
//! nix versions in the image.)

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use embedded_hal::i2c::{self, ErrorKind, ErrorType, NoAcknowledgeSource, Operation};

use crate::smbus::{self, Functionality, Smbus, SmbusError, BLOCK_MAX};
use crate::DriverError;

// <linux/i2c-dev.h>, <linux/i2c.h>
const I2C_SLAVE: libc::c_ulong = 0x0703;
const I2C_FUNCS: libc::c_ulong = 0x0705;
const I2C_RDWR: libc::c_ulong = 0x0707;
const I2C_SMBUS: libc::c_ulong = 0x0720;
const I2C_M_RD: u16 = 0x0001;
const I2C_RDWR_IOCTL_MAX_MSGS: usize = 42;

const I2C_FUNC_I2C: libc::c_ulong = 0x0000_0001;
const I2C_FUNC_SMBUS_READ_BYTE: libc::c_ulong = 0x0002_0000;
const I2C_FUNC_SMBUS_WRITE_BYTE: libc::c_ulong = 0x0004_0000;
const I2C_FUNC_SMBUS_READ_BYTE_DATA: libc::c_ulong = 0x0008_0000;
const I2C_FUNC_SMBUS_WRITE_BYTE_DATA: libc::c_ulong = 0x0010_0000;
const I2C_FUNC_SMBUS_READ_WORD_DATA: libc::c_ulong = 0x0020_0000;
const I2C_FUNC_SMBUS_WRITE_WORD_DATA: libc::c_ulong = 0x0040_0000;
const I2C_FUNC_SMBUS_READ_I2C_BLOCK: libc::c_ulong = 0x0400_0000;
const I2C_FUNC_SMBUS_WRITE_I2C_BLOCK: libc::c_ulong = 0x0800_0000;

const I2C_SMBUS_READ: u8 = 1;
const I2C_SMBUS_WRITE: u8 = 0;
const I2C_SMBUS_BYTE: u32 = 1;
const I2C_SMBUS_BYTE_DATA: u32 = 2;
const I2C_SMBUS_WORD_DATA: u32 = 3;
const I2C_SMBUS_I2C_BLOCK_DATA: u32 = 8;

#[repr(C)]
struct I2cMsg {
    addr: u16,
    flags: u16,
    len: u16,
    buf: *mut u8,
}

#[repr(C)]
struct I2cRdwrIoctlData {
    msgs: *mut I2cMsg,
    nmsgs: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
union I2cSmbusData {
    byte: u8,
    word: u16,
    block: [u8; BLOCK_MAX + 2],
}

#[repr(C)]
struct I2cSmbusIoctlData {
    read_write: u8,
    command: u8,
    size: u32,
    data: *mut I2cSmbusData,
}

/// An I2C error with the device node, the operation, and the OS error.
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
        let kind = match e.raw_os_error() {
            Some(libc::ENXIO) | Some(libc::EREMOTEIO) => {
                ErrorKind::NoAcknowledge(NoAcknowledgeSource::Unknown)
            }
            Some(libc::EAGAIN) => ErrorKind::ArbitrationLoss,
            Some(libc::ETIMEDOUT) | Some(libc::EIO) => ErrorKind::Bus,
            _ => ErrorKind::Other,
        };
        let hint = match e.raw_os_error() {
            Some(libc::EBUSY) if op == "I2C_SLAVE" => {
                " (a kernel driver is bound to this address; unbind it or use another address)"
            }
            _ => "",
        };
        LinuxI2cError {
            kind,
            message: format!("{} {address:#04x}: {op}: {e}{hint}", path.display()),
        }
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
#[derive(Debug)]
pub struct LinuxI2c {
    file: File,
    path: PathBuf,
    funcs: libc::c_ulong,
    slave: Option<u16>,
    force_smbus: bool,
}

impl LinuxI2c {
    /// Opens the device node and asks the adapter what it can do.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DriverError> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| {
                let hint = if e.kind() == io::ErrorKind::NotFound {
                    " (is the bus enabled, e.g. dtparam=i2c_arm=on, and i2c-dev loaded?)"
                } else {
                    ""
                };
                DriverError::new(format!("cannot open {}: {e}{hint}", path.display()))
            })?;
        let mut funcs: libc::c_ulong = 0;
        // SAFETY: I2C_FUNCS writes one unsigned long through the pointer, which is valid.
        let rc = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
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
            file,
            path,
            funcs,
            slave: None,
            force_smbus: false,
        })
    }

    /// The device node.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The adapter's `I2C_FUNC_*` bits.
    // c_ulong is u32 on 32-bit ARM.
    #[allow(clippy::useless_conversion)]
    pub fn functionality_bits(&self) -> u64 {
        u64::from(self.funcs)
    }

    /// Use SMBus transfers even if the adapter can do plain I2C.
    pub fn force_smbus(&mut self, force: bool) {
        self.force_smbus = force;
    }

    /// Whether [`embedded_hal::i2c::I2c`] transactions go out as SMBus transfers.
    pub fn uses_smbus(&self) -> bool {
        self.force_smbus || self.funcs & I2C_FUNC_I2C == 0
    }

    fn set_slave(&mut self, address: u8) -> Result<(), LinuxI2cError> {
        let address = u16::from(address);
        if self.slave == Some(address) {
            return Ok(());
        }
        // SAFETY: I2C_SLAVE takes the address as an integer argument.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                I2C_SLAVE as _,
                libc::c_ulong::from(address),
            )
        };
        if rc < 0 {
            return Err(LinuxI2cError::os(
                &self.path,
                address,
                "I2C_SLAVE",
                io::Error::last_os_error(),
            ));
        }
        self.slave = Some(address);
        Ok(())
    }

    fn smbus_access(
        &mut self,
        address: u8,
        read_write: u8,
        command: u8,
        size: u32,
        data: &mut I2cSmbusData,
    ) -> Result<(), LinuxI2cError> {
        self.set_slave(address)?;
        let mut args = I2cSmbusIoctlData {
            read_write,
            command,
            size,
            data,
        };
        // SAFETY: `args` and the data it points to are valid for the duration of the call and
        // sized as the kernel's `i2c_smbus_ioctl_data` / `i2c_smbus_data`.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                I2C_SMBUS as _,
                &mut args as *mut I2cSmbusIoctlData,
            )
        };
        if rc < 0 {
            return Err(LinuxI2cError::os(
                &self.path,
                u16::from(address),
                "I2C_SMBUS",
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    fn rdwr(&mut self, address: u8, operations: &mut [Operation<'_>]) -> Result<(), LinuxI2cError> {
        let addr = u16::from(address);
        // Adjacent operations of the same kind form one message (embedded-hal: no restart
        // between them).
        let mut bufs: Vec<(bool, Vec<u8>)> = Vec::new();
        for op in operations.iter() {
            match op {
                Operation::Write(data) => match bufs.last_mut() {
                    Some((false, b)) => b.extend_from_slice(data),
                    _ => bufs.push((false, data.to_vec())),
                },
                Operation::Read(buf) => match bufs.last_mut() {
                    Some((true, b)) => b.resize(b.len() + buf.len(), 0),
                    _ => bufs.push((true, vec![0; buf.len()])),
                },
            }
        }
        if bufs.is_empty() {
            return Ok(());
        }
        if bufs.len() > I2C_RDWR_IOCTL_MAX_MSGS
            || bufs.iter().any(|(_, b)| b.len() > usize::from(u16::MAX))
        {
            return Err(LinuxI2cError::unsupported(
                &self.path,
                addr,
                "transaction too long for I2C_RDWR".into(),
            ));
        }
        let mut msgs: Vec<I2cMsg> = bufs
            .iter_mut()
            .map(|(read, b)| I2cMsg {
                addr,
                flags: if *read { I2C_M_RD } else { 0 },
                len: b.len() as u16,
                buf: b.as_mut_ptr(),
            })
            .collect();
        let mut data = I2cRdwrIoctlData {
            msgs: msgs.as_mut_ptr(),
            nmsgs: msgs.len() as u32,
        };
        // SAFETY: every message points into a live buffer of its stated length, and `data`
        // points at `msgs`; all outlive the call.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                I2C_RDWR as _,
                &mut data as *mut I2cRdwrIoctlData,
            )
        };
        if rc < 0 {
            return Err(LinuxI2cError::os(
                &self.path,
                addr,
                "I2C_RDWR",
                io::Error::last_os_error(),
            ));
        }
        // Hand the read bytes back to the caller's buffers, in order.
        let mut reads = bufs.iter().filter(|(r, _)| *r).map(|(_, b)| b.as_slice());
        let mut current: &[u8] = &[];
        for op in operations.iter_mut() {
            if let Operation::Read(buf) = op {
                if current.is_empty() {
                    current = reads.next().unwrap_or(&[]);
                }
                let n = buf.len().min(current.len());
                buf[..n].copy_from_slice(&current[..n]);
                current = &current[n..];
            } else {
                current = &[];
            }
        }
        Ok(())
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
            smbus::transaction(self, address, operations).map_err(|e| match e {
                SmbusError::Bus(e) => e,
                SmbusError::Unsupported(what) => LinuxI2cError::unsupported(
                    &self.path,
                    u16::from(address),
                    format!("not possible on this SMBus-only adapter: {what}"),
                ),
            })
        } else {
            self.rdwr(address, operations)
        }
    }
}

impl Smbus for LinuxI2c {
    type Error = LinuxI2cError;

    fn functionality(&self) -> Functionality {
        let has = |bit| self.funcs & bit != 0;
        Functionality {
            byte: has(I2C_FUNC_SMBUS_READ_BYTE) && has(I2C_FUNC_SMBUS_WRITE_BYTE),
            byte_data: has(I2C_FUNC_SMBUS_READ_BYTE_DATA) && has(I2C_FUNC_SMBUS_WRITE_BYTE_DATA),
            word_data: has(I2C_FUNC_SMBUS_READ_WORD_DATA) && has(I2C_FUNC_SMBUS_WRITE_WORD_DATA),
            read_i2c_block: has(I2C_FUNC_SMBUS_READ_I2C_BLOCK),
            write_i2c_block: has(I2C_FUNC_SMBUS_WRITE_I2C_BLOCK),
        }
    }

    fn read_byte(&mut self, address: u8) -> Result<u8, LinuxI2cError> {
        let mut d = I2cSmbusData {
            block: [0; BLOCK_MAX + 2],
        };
        self.smbus_access(address, I2C_SMBUS_READ, 0, I2C_SMBUS_BYTE, &mut d)?;
        // SAFETY: every bit pattern is a valid u8.
        Ok(unsafe { d.byte })
    }

    fn write_byte(&mut self, address: u8, value: u8) -> Result<(), LinuxI2cError> {
        let mut d = I2cSmbusData {
            block: [0; BLOCK_MAX + 2],
        };
        self.smbus_access(address, I2C_SMBUS_WRITE, value, I2C_SMBUS_BYTE, &mut d)
    }

    fn read_byte_data(&mut self, address: u8, command: u8) -> Result<u8, LinuxI2cError> {
        let mut d = I2cSmbusData {
            block: [0; BLOCK_MAX + 2],
        };
        self.smbus_access(
            address,
            I2C_SMBUS_READ,
            command,
            I2C_SMBUS_BYTE_DATA,
            &mut d,
        )?;
        // SAFETY: every bit pattern is a valid u8.
        Ok(unsafe { d.byte })
    }

    fn write_byte_data(
        &mut self,
        address: u8,
        command: u8,
        value: u8,
    ) -> Result<(), LinuxI2cError> {
        let mut d = I2cSmbusData {
            block: [0; BLOCK_MAX + 2],
        };
        d.byte = value;
        self.smbus_access(
            address,
            I2C_SMBUS_WRITE,
            command,
            I2C_SMBUS_BYTE_DATA,
            &mut d,
        )
    }

    fn read_word_data(&mut self, address: u8, command: u8) -> Result<u16, LinuxI2cError> {
        let mut d = I2cSmbusData {
            block: [0; BLOCK_MAX + 2],
        };
        self.smbus_access(
            address,
            I2C_SMBUS_READ,
            command,
            I2C_SMBUS_WORD_DATA,
            &mut d,
        )?;
        // SAFETY: every bit pattern is a valid u16.
        Ok(unsafe { d.word })
    }

    fn write_word_data(
        &mut self,
        address: u8,
        command: u8,
        value: u16,
    ) -> Result<(), LinuxI2cError> {
        let mut d = I2cSmbusData {
            block: [0; BLOCK_MAX + 2],
        };
        d.word = value;
        self.smbus_access(
            address,
            I2C_SMBUS_WRITE,
            command,
            I2C_SMBUS_WORD_DATA,
            &mut d,
        )
    }

    fn read_i2c_block_data(
        &mut self,
        address: u8,
        command: u8,
        buf: &mut [u8],
    ) -> Result<(), LinuxI2cError> {
        let n = buf.len().min(BLOCK_MAX);
        let mut block = [0u8; BLOCK_MAX + 2];
        block[0] = n as u8;
        let mut d = I2cSmbusData { block };
        self.smbus_access(
            address,
            I2C_SMBUS_READ,
            command,
            I2C_SMBUS_I2C_BLOCK_DATA,
            &mut d,
        )?;
        // SAFETY: the kernel filled the block member; every bit pattern is valid.
        let block = unsafe { d.block };
        let got = usize::from(block[0]).min(n);
        if got < buf.len() {
            return Err(LinuxI2cError::unsupported(
                &self.path,
                u16::from(address),
                format!("I2C block read returned {got} of {} bytes", buf.len()),
            ));
        }
        buf.copy_from_slice(&block[1..=got]);
        Ok(())
    }

    fn write_i2c_block_data(
        &mut self,
        address: u8,
        command: u8,
        data: &[u8],
    ) -> Result<(), LinuxI2cError> {
        if data.len() > BLOCK_MAX {
            return Err(LinuxI2cError::unsupported(
                &self.path,
                u16::from(address),
                format!("I2C block write of {} bytes (max {BLOCK_MAX})", data.len()),
            ));
        }
        let mut block = [0u8; BLOCK_MAX + 2];
        block[0] = data.len() as u8;
        block[1..=data.len()].copy_from_slice(data);
        let mut d = I2cSmbusData { block };
        self.smbus_access(
            address,
            I2C_SMBUS_WRITE,
            command,
            I2C_SMBUS_I2C_BLOCK_DATA,
            &mut d,
        )
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
        // A file that is not an I2C adapter is refused at open, not at the first read.
        let e = LinuxI2c::open("/dev/null").unwrap_err();
        assert!(
            e.message().starts_with("/dev/null is not an I2C adapter"),
            "{e}"
        );
    }

    #[test]
    fn layouts_match_the_kernel() {
        assert_eq!(std::mem::size_of::<I2cSmbusData>(), 34);
        assert_eq!(std::mem::align_of::<I2cSmbusData>(), 2);
        assert_eq!(
            std::mem::size_of::<I2cMsg>(),
            if cfg!(target_pointer_width = "64") {
                16
            } else {
                12
            }
        );
    }
}
