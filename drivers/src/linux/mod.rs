//! The Linux side: I2C character devices (`/dev/i2c-N`, plain I2C or SMBus), GPIO character
//! devices (gpiocdev, uAPI v2, with edge events), and finding buses and chips by name.

pub mod gpio;
pub mod i2c;

use std::fs;
use std::path::{Path, PathBuf};

use crate::board::I2cBus;
use crate::DriverError;

/// Where [`resolve_i2c_bus`] looks for adapters.
pub const SYSFS_I2C_ADAPTERS: &str = "/sys/class/i2c-adapter";

/// The device node of `bus`: `/dev/i2c-N` for a number, the path itself, or the adapter found
/// under `sysfs` (normally [`SYSFS_I2C_ADAPTERS`]) by platform device or by name.
pub fn resolve_i2c_bus(bus: &I2cBus, sysfs: &Path) -> Result<PathBuf, DriverError> {
    let (want_device, want): (bool, &str) = match bus {
        I2cBus::Number(n) => return Ok(PathBuf::from(format!("/dev/i2c-{n}"))),
        I2cBus::Path(p) => return Ok(p.clone()),
        I2cBus::Device(d) => (true, d),
        I2cBus::Name(n) => (false, n),
    };
    let entries = fs::read_dir(sysfs).map_err(|e| {
        DriverError::new(format!(
            "cannot list I2C adapters in {}: {e}",
            sysfs.display()
        ))
    })?;
    let mut seen = Vec::new();
    for entry in entries.flatten() {
        let adapter = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let found = if want_device {
            // The adapter's parent device: its `device` link, or the directory above it.
            fs::read_link(path.join("device"))
                .ok()
                .or_else(|| {
                    fs::canonicalize(&path)
                        .ok()
                        .and_then(|p| p.parent().map(Path::to_path_buf))
                })
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        } else {
            fs::read_to_string(path.join("name"))
                .ok()
                .map(|s| s.trim().to_owned())
        };
        if found.as_deref() == Some(want) {
            return Ok(PathBuf::from("/dev").join(&adapter));
        }
        seen.push(format!("{adapter} ({})", found.as_deref().unwrap_or("?")));
    }
    seen.sort();
    Err(DriverError::new(format!(
        "no I2C adapter with {} {want:?} in {} (found: {}); is the bus enabled (dtparam=i2c_arm=on)?",
        if want_device { "device" } else { "name" },
        sysfs.display(),
        if seen.is_empty() { "none".to_owned() } else { seen.join(", ") }
    )))
}

/// `CLOCK_MONOTONIC` in nanoseconds (the clock of gpiocdev edge timestamps).
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pwm::tests::TempDir;

    #[test]
    fn i2c_bus_by_device_and_name() {
        let root = TempDir::new("i2c-sysfs");
        for (adapter, dev, name) in [
            ("i2c-1", "1f00074000.i2c", "Synopsys DesignWare I2C adapter"),
            (
                "i2c-13",
                "1f00088000.i2c",
                "Synopsys DesignWare I2C adapter",
            ),
            ("i2c-20", "fef04500.i2c", "bcm2835 (i2c@7ef04500)"),
        ] {
            let d = root.0.join(adapter);
            fs::create_dir_all(&d).unwrap();
            std::os::unix::fs::symlink(format!("../../{dev}"), d.join("device")).unwrap();
            fs::write(d.join("name"), format!("{name}\n")).unwrap();
        }
        assert_eq!(
            resolve_i2c_bus(&I2cBus::Device("1f00074000.i2c".into()), &root.0).unwrap(),
            PathBuf::from("/dev/i2c-1")
        );
        assert_eq!(
            resolve_i2c_bus(&I2cBus::Name("bcm2835 (i2c@7ef04500)".into()), &root.0).unwrap(),
            PathBuf::from("/dev/i2c-20")
        );
        assert_eq!(
            resolve_i2c_bus(&I2cBus::Number(3), &root.0).unwrap(),
            PathBuf::from("/dev/i2c-3")
        );
        let e = resolve_i2c_bus(&I2cBus::Device("fe804000.i2c".into()), &root.0).unwrap_err();
        assert!(
            e.message()
                .contains("no I2C adapter with device \"fe804000.i2c\""),
            "{e}"
        );
        assert!(e.message().contains("i2c-1 (1f00074000.i2c)"), "{e}");
    }

    #[test]
    fn monotonic_clock_moves() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(a > 0 && b >= a);
    }
}
