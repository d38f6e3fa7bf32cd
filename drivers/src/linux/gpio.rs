//! GPIO lines through the GPIO character device (gpiocdev, uAPI v2).
//!
//! [`CdevOutput`] implements [`OutputPin`] and [`StatefulOutputPin`], where `is_set_high` asks
//! the kernel for the line's value instead of remembering the last write, so a GET reports the
//! hardware. [`CdevInput`] requests a line with both-edge detection and implements
//! [`EdgeSource`]: its file descriptor becomes readable when edges are queued, and the kernel's
//! timestamps are carried over to [`Instant`]s. Lines are requested active-high; inversion
//! (`active_low`) is done by the adapters, so the same code runs against embedded-hal mocks.

use std::fmt;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use embedded_hal::digital::{self, ErrorType, InputPin, OutputPin, StatefulOutputPin};
use gpiocdev::line::{Bias as CdevBias, EdgeDetection, EdgeKind, Value};
use gpiocdev::Request;

use crate::board::{Bias, GpioChip};
use crate::contact::{Edge, EdgeSource};
use crate::DriverError;

/// A GPIO error; `Debug` is the readable message.
#[derive(Clone, PartialEq, Eq)]
pub struct GpioError(String);

impl fmt::Debug for GpioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for GpioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GpioError {}

impl digital::Error for GpioError {
    fn kind(&self) -> digital::ErrorKind {
        digital::ErrorKind::Other
    }
}

/// The device node of `chip`: `/dev/gpiochipN`, the path, or the chip whose label matches.
pub fn resolve_chip(chip: &GpioChip) -> Result<PathBuf, DriverError> {
    match chip {
        GpioChip::Number(n) => Ok(PathBuf::from(format!("/dev/gpiochip{n}"))),
        GpioChip::Path(p) => Ok(p.clone()),
        GpioChip::Label(label) => {
            let chips = gpiocdev::chip::chips()
                .map_err(|e| DriverError::new(format!("cannot list GPIO chips: {e}")))?;
            let mut seen = Vec::new();
            for path in chips {
                let info = gpiocdev::Chip::from_path(&path).and_then(|c| c.info());
                match info {
                    Ok(info) if info.label == *label => return Ok(path),
                    Ok(info) => seen.push(format!("{} {:?}", info.name, info.label)),
                    Err(_) => seen.push(format!("{} (unreadable)", path.display())),
                }
            }
            Err(DriverError::new(format!(
                "no GPIO chip labelled {label:?} (found: {})",
                if seen.is_empty() {
                    "none".to_owned()
                } else {
                    seen.join(", ")
                }
            )))
        }
    }
}

/// A consumer label for the kernel (shown by `gpioinfo`), at most 31 bytes.
fn consumer(name: &str) -> String {
    let mut s = format!("ocf-agent {name}");
    while s.len() > 31 {
        s.pop();
    }
    s
}

/// An output line.
#[derive(Debug)]
pub struct CdevOutput {
    req: Request,
    offset: u32,
    label: String,
}

impl CdevOutput {
    /// Requests line `line` of `chip` as an output at the physical level `initial_high`;
    /// `name` (e.g. the href) is shown as the line's consumer.
    pub fn open(
        chip: &Path,
        line: u32,
        initial_high: bool,
        name: &str,
    ) -> Result<Self, DriverError> {
        let label = format!("{} line {line}", chip.display());
        let value = if initial_high {
            Value::Active
        } else {
            Value::Inactive
        };
        let req = Request::builder()
            .on_chip(chip)
            .with_consumer(consumer(name))
            .with_line(line)
            .as_output(value)
            .request()
            .map_err(|e| DriverError::new(format!("cannot request {label} as output: {e}")))?;
        Ok(CdevOutput {
            req,
            offset: line,
            label,
        })
    }

    fn err(&self, what: &str, e: gpiocdev::Error) -> GpioError {
        GpioError(format!("{}: {what}: {e}", self.label))
    }
}

impl ErrorType for CdevOutput {
    type Error = GpioError;
}

impl OutputPin for CdevOutput {
    fn set_low(&mut self) -> Result<(), GpioError> {
        self.req
            .set_value(self.offset, Value::Inactive)
            .map_err(|e| self.err("set low", e))
    }

    fn set_high(&mut self) -> Result<(), GpioError> {
        self.req
            .set_value(self.offset, Value::Active)
            .map_err(|e| self.err("set high", e))
    }
}

impl StatefulOutputPin for CdevOutput {
    fn is_set_high(&mut self) -> Result<bool, GpioError> {
        self.req
            .value(self.offset)
            .map(|v| v == Value::Active)
            .map_err(|e| self.err("get value", e))
    }

    fn is_set_low(&mut self) -> Result<bool, GpioError> {
        self.is_set_high().map(|h| !h)
    }
}

/// An input line with both-edge detection.
#[derive(Debug)]
pub struct CdevInput {
    req: Request,
    offset: u32,
    label: String,
}

impl CdevInput {
    /// Requests line `line` of `chip` as an input with `bias` and both-edge events.
    pub fn open(chip: &Path, line: u32, bias: Bias, name: &str) -> Result<Self, DriverError> {
        let label = format!("{} line {line}", chip.display());
        let mut builder = Request::builder();
        builder
            .on_chip(chip)
            .with_consumer(consumer(name))
            .with_line(line)
            .as_input()
            .with_edge_detection(EdgeDetection::BothEdges);
        match bias {
            Bias::AsIs => {}
            Bias::PullUp => {
                builder.with_bias(CdevBias::PullUp);
            }
            Bias::PullDown => {
                builder.with_bias(CdevBias::PullDown);
            }
            Bias::Disabled => {
                builder.with_bias(CdevBias::Disabled);
            }
        }
        let req = builder.request().map_err(|e| {
            DriverError::new(format!(
                "cannot request {label} as input with edge events: {e}"
            ))
        })?;
        Ok(CdevInput {
            req,
            offset: line,
            label,
        })
    }
}

impl ErrorType for CdevInput {
    type Error = GpioError;
}

impl InputPin for CdevInput {
    fn is_high(&mut self) -> Result<bool, GpioError> {
        self.req
            .value(self.offset)
            .map(|v| v == Value::Active)
            .map_err(|e| GpioError(format!("{}: get value: {e}", self.label)))
    }

    fn is_low(&mut self) -> Result<bool, GpioError> {
        self.is_high().map(|h| !h)
    }
}

impl EdgeSource for CdevInput {
    fn level(&mut self) -> Result<bool, DriverError> {
        self.is_high().map_err(|e| DriverError::new(e.0))
    }

    fn read_edges(&mut self, now: Instant, out: &mut Vec<Edge>) -> Result<(), DriverError> {
        let mono_now = super::monotonic_ns();
        let err =
            |e: gpiocdev::Error| DriverError::new(format!("{}: read edge events: {e}", self.label));
        // Drain without blocking: has_edge_event polls with a zero timeout.
        while self.req.has_edge_event().map_err(err)? {
            let ev = self.req.read_edge_event().map_err(err)?;
            let age = Duration::from_nanos(mono_now.saturating_sub(ev.timestamp_ns));
            out.push(Edge {
                high: ev.kind == EdgeKind::Rising,
                at: now.checked_sub(age).unwrap_or(now),
            });
        }
        Ok(())
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.req.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_is_truncated() {
        assert_eq!(consumer("/relay"), "ocf-agent /relay");
        assert_eq!(consumer("/a/very/long/href/that/goes/on").len(), 31);
    }

    #[test]
    fn missing_chips_are_clear_errors() {
        let e =
            CdevOutput::open(Path::new("/dev/gpiochip-missing"), 17, false, "/relay").unwrap_err();
        assert!(
            e.message()
                .starts_with("cannot request /dev/gpiochip-missing line 17 as output"),
            "{e}"
        );
        let e = resolve_chip(&GpioChip::Label("pinctrl-nowhere".into())).unwrap_err();
        assert!(e.message().contains("pinctrl-nowhere"), "{e}");
        assert_eq!(
            resolve_chip(&GpioChip::Number(4)).unwrap(),
            PathBuf::from("/dev/gpiochip4")
        );
    }
}
