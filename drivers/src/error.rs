//! The error a driver reports when its hardware does not answer or answers nonsense.

use std::fmt;

/// A driver-level failure with a human-readable diagnostic, e.g.
/// `TMP105 at 0x48 on /dev/i2c-1: read temperature: no acknowledge (address)`.
///
/// The text is what a sensor resource answers with its 5.03 and what the daemon logs, so it
/// names the device and the operation that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverError {
    message: String,
}

impl DriverError {
    /// An error with this diagnostic.
    pub fn new(message: impl Into<String>) -> Self {
        DriverError {
            message: message.into(),
        }
    }

    /// A bus error (`E` is an embedded-hal error; its `Debug` form is all a generic driver
    /// knows about it) while doing `what` on `device`.
    pub fn bus<E: fmt::Debug>(device: &str, what: &str, error: E) -> Self {
        DriverError::new(format!("{device}: {what}: {error:?}"))
    }

    /// The diagnostic.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DriverError {}
