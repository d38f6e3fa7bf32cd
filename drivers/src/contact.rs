//! A GPIO input (button, reed contact) as `oic.r.sensor.contact`, driven by edge events.
//!
//! The line is not polled: an [`EdgeSource`] (on Linux a gpiocdev line request with both-edge
//! detection, see [`crate::linux::gpio::CdevInput`]) hands over the kernel's timestamped edges
//! when its file descriptor becomes readable, a [`Debouncer`] turns them into clean changes, and
//! [`ContactTask`] publishes each change into the [`ReadingCell`] the resource tree reads.
//!
//! The daemon's loop for one contact (tokio, sketched):
//!
//! ```text
//! let fd = AsyncFd::new(task.edge_fd().unwrap())?;
//! loop {
//!     let deadline = task.poll_timeout();          // Some while a change is settling
//!     select! {
//!         guard = fd.readable() => { report = task.handle_readable(now()); guard.clear_ready(); }
//!         _ = sleep_until(deadline), if deadline.is_some() => { report = task.handle_timeout(now()); }
//!     }
//!     if report.notify { tree.notify(task.href()) }
//!     if let Some(line) = report.log { log(line) }
//! }
//! ```
//!
//! `value` is `true` when the contact is open: with the usual wiring (contact to GND, pull-up
//! on), an open contact reads high. `active_low` inverts that.

use std::fmt;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use crate::debounce::Debouncer;
use crate::kind::contact_props;
use crate::sampler::{LogLevel, LogRecord, SampleReport};
use crate::sensor::ReadingCell;
use crate::DriverError;

/// A change of an input line's physical level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// The level after the edge (`true` = high).
    pub high: bool,
    /// When it happened (on the daemon's clock).
    pub at: Instant,
}

/// Where a contact's edges come from.
pub trait EdgeSource {
    /// The current physical level (`true` = high).
    fn level(&mut self) -> Result<bool, DriverError>;

    /// Append the edges that are pending, without blocking. `now` is the caller's clock at the
    /// time of the call; sources with their own timestamps (kernel edge events) place them
    /// relative to it.
    fn read_edges(&mut self, now: Instant, out: &mut Vec<Edge>) -> Result<(), DriverError>;

    /// The file descriptor that becomes readable when edges are pending, if any.
    fn raw_fd(&self) -> Option<RawFd> {
        None
    }
}

/// The file descriptor of an [`EdgeSource`], to register with the daemon's reactor (e.g.
/// `tokio::io::unix::AsyncFd::new(edge_fd)`). It stays valid as long as the [`ContactTask`] it
/// came from is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeFd(pub RawFd);

impl AsRawFd for EdgeFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// A contact resource as the daemon drives it. See the [module documentation](self).
pub struct ContactTask {
    href: String,
    source: Box<dyn EdgeSource + Send>,
    debouncer: Debouncer,
    active_low: bool,
    cell: ReadingCell,
    edges: Vec<Edge>,
    faulted: bool,
}

impl fmt::Debug for ContactTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContactTask")
            .field("href", &self.href)
            .field("debouncer", &self.debouncer)
            .field("active_low", &self.active_low)
            .field("faulted", &self.faulted)
            .finish_non_exhaustive()
    }
}

impl ContactTask {
    /// Reads the line's level once and publishes it; after that only edges count.
    pub fn new(
        href: impl Into<String>,
        mut source: Box<dyn EdgeSource + Send>,
        active_low: bool,
        settle: Duration,
    ) -> Result<Self, DriverError> {
        let level = source.level()?;
        let task = ContactTask {
            href: href.into(),
            source,
            debouncer: Debouncer::new(level, settle),
            active_low,
            cell: ReadingCell::new(),
            edges: Vec::new(),
            faulted: false,
        };
        task.publish();
        Ok(task)
    }

    /// The resource's href.
    pub fn href(&self) -> &str {
        &self.href
    }

    /// The cell the resource's backend reads.
    pub fn cell(&self) -> &ReadingCell {
        &self.cell
    }

    /// Whether the contact is open (debounced).
    pub fn is_open(&self) -> bool {
        self.debouncer.state() != self.active_low
    }

    /// The descriptor to wait on for edges (`None` for sources without one).
    pub fn edge_fd(&self) -> Option<EdgeFd> {
        self.source.raw_fd().map(EdgeFd)
    }

    /// When a settling change must be committed: call [`ContactTask::handle_timeout`] then.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.debouncer.poll_timeout()
    }

    fn publish(&self) {
        self.cell.publish(contact_props(self.is_open()));
    }

    /// The edge descriptor is readable (or the daemon wants to check): drain the edges and
    /// debounce them.
    pub fn handle_readable(&mut self, now: Instant) -> SampleReport {
        self.edges.clear();
        if let Err(e) = self.source.read_edges(now, &mut self.edges) {
            return self.fault(e);
        }
        let mut report = self.recover();
        let mut changed = false;
        for edge in std::mem::take(&mut self.edges) {
            changed |= self.debouncer.on_edge(edge.high, edge.at).is_some();
        }
        changed |= self.debouncer.handle_timeout(now).is_some();
        if changed {
            self.publish();
            report.notify = true;
        }
        report
    }

    /// The settle deadline passed: commit the pending change, if any.
    pub fn handle_timeout(&mut self, now: Instant) -> SampleReport {
        let mut report = SampleReport::default();
        if self.debouncer.handle_timeout(now).is_some() {
            self.publish();
            report.notify = true;
        }
        report
    }

    fn fault(&mut self, e: DriverError) -> SampleReport {
        self.cell.set_fault(e.message());
        if self.faulted {
            return SampleReport::default();
        }
        self.faulted = true;
        SampleReport {
            notify: false,
            became_unavailable: true,
            log: Some(LogRecord {
                level: LogLevel::Warn,
                message: format!("{}: {e}; resource unavailable (5.03)", self.href),
            }),
        }
    }

    /// After a fault, resynchronise with the line's level.
    fn recover(&mut self) -> SampleReport {
        if !self.faulted {
            return SampleReport::default();
        }
        match self.source.level() {
            Ok(level) => {
                self.faulted = false;
                self.debouncer = Debouncer::new(level, self.debouncer.settle());
                self.publish();
                SampleReport {
                    notify: true,
                    became_unavailable: false,
                    log: Some(LogRecord {
                        level: LogLevel::Info,
                        message: format!("{}: input answers again", self.href),
                    }),
                }
            }
            Err(_) => SampleReport::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ocf::resource::{Backend, ResourceError, Value};
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    const MS: Duration = Duration::from_millis(1);

    #[derive(Default)]
    struct Script {
        level: bool,
        batches: VecDeque<Result<Vec<Edge>, &'static str>>,
    }

    #[derive(Clone, Default)]
    struct FakeLine(Arc<Mutex<Script>>);

    impl EdgeSource for FakeLine {
        fn level(&mut self) -> Result<bool, DriverError> {
            Ok(self.0.lock().unwrap().level)
        }
        fn read_edges(&mut self, _now: Instant, out: &mut Vec<Edge>) -> Result<(), DriverError> {
            match self.0.lock().unwrap().batches.pop_front() {
                Some(Ok(edges)) => {
                    out.extend(edges);
                    Ok(())
                }
                Some(Err(e)) => Err(DriverError::new(e)),
                None => Ok(()),
            }
        }
        fn raw_fd(&self) -> Option<RawFd> {
            Some(42)
        }
    }

    fn value(task: &ContactTask) -> Result<bool, ResourceError> {
        task.cell()
            .backend()
            .retrieve()
            .map(|p| p["value"] == Value::Bool(true))
    }

    #[test]
    fn bouncy_press_gives_one_notification() {
        let t0 = Instant::now();
        let line = FakeLine::default();
        line.0.lock().unwrap().level = true; // pulled up: open
        let mut task = ContactTask::new("/button", Box::new(line.clone()), false, 20 * MS).unwrap();
        assert_eq!(task.edge_fd(), Some(EdgeFd(42)));
        assert_eq!(value(&task), Ok(true));

        // Pressed with bounces: low, high, low within 3 ms.
        line.0.lock().unwrap().batches.push_back(Ok(vec![
            Edge {
                high: false,
                at: t0,
            },
            Edge {
                high: true,
                at: t0 + MS,
            },
            Edge {
                high: false,
                at: t0 + 3 * MS,
            },
        ]));
        let r = task.handle_readable(t0 + 4 * MS);
        assert!(!r.notify);
        assert_eq!(task.poll_timeout(), Some(t0 + 23 * MS));
        assert_eq!(value(&task), Ok(true), "not settled yet");
        let r = task.handle_timeout(t0 + 23 * MS);
        assert!(r.notify);
        assert_eq!(value(&task), Ok(false), "closed");
        assert_eq!(task.poll_timeout(), None);
        assert!(!task.handle_timeout(t0 + 50 * MS).notify);
    }

    #[test]
    fn active_low_and_faults() {
        let t0 = Instant::now();
        let line = FakeLine::default();
        let mut task =
            ContactTask::new("/door", Box::new(line.clone()), true, Duration::ZERO).unwrap();
        assert!(task.is_open(), "low with active_low = open");
        line.0
            .lock()
            .unwrap()
            .batches
            .push_back(Err("gpiochip0 line 22: read edge events: EIO"));
        let r = task.handle_readable(t0);
        assert!(r.became_unavailable);
        assert!(r.log.unwrap().message.contains("EIO"));
        assert!(matches!(value(&task), Err(ResourceError::Unavailable(_))));
        // Logged once only.
        line.0.lock().unwrap().batches.push_back(Err("again"));
        assert_eq!(task.handle_readable(t0), SampleReport::default());
        // Recovers: resynchronised with the level (now high = closed).
        line.0.lock().unwrap().level = true;
        let r = task.handle_readable(t0 + MS);
        assert!(r.notify);
        assert_eq!(r.log.unwrap().level, LogLevel::Info);
        assert_eq!(value(&task), Ok(false));
        // Zero settle time: an edge counts at once.
        line.0.lock().unwrap().batches.push_back(Ok(vec![Edge {
            high: false,
            at: t0 + 2 * MS,
        }]));
        assert!(task.handle_readable(t0 + 2 * MS).notify);
        assert_eq!(value(&task), Ok(true));
    }
}
