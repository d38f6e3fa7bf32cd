//! Sans-IO sampling: when to read a sensor next, whether a reading is worth a notification, and
//! what to do when reads fail.
//!
//! [`Sampler`] holds no clock: every call takes `now`, and [`Sampler::poll_timeout`] says when it
//! wants to be called again (the shape of quinn-proto's `poll_timeout`/`handle_timeout`), so the
//! daemon sleeps until that deadline and tests step a virtual clock.
//!
//! - Healthy: a read is due every `period` (fixed rate, no drift). A reading that moved more
//!   than `threshold` away from the last *notified* value (or the first reading) sets
//!   [`SampleReport::notify`].
//! - Faulted: the first failed read marks the resource unavailable
//!   ([`SampleReport::became_unavailable`]) and asks for one log line; retries follow with
//!   exponential back-off from `backoff_initial` doubling up to `backoff_max`. While the fault
//!   lasts, a reminder is logged at most every `log_interval`, and a sensor that keeps flapping
//!   logs at most one fault per `log_interval`.
//! - Recovery: the first good read after a fault publishes at once (notify) and, if the fault was
//!   logged, logs the recovery; then the normal period resumes.
//!
//! [`SensorTask`] puts a [`Sensor`], a [`Sampler`] and the [`ReadingCell`] the resource tree reads
//! together: the daemon owns the task and calls [`SensorTask::handle_timeout`] at
//! [`SensorTask::poll_timeout`].

use std::fmt;
use std::time::{Duration, Instant};

use crate::sensor::{ReadingCell, Sensor};

/// How one sensor is sampled.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// Time between reads while healthy.
    pub period: Duration,
    /// A reading notifies observers when it differs from the last notified value by more than
    /// this (in the quantity's unit). `0.0` notifies every change.
    pub threshold: f64,
    /// Delay before the first retry after a failed read.
    pub backoff_initial: Duration,
    /// Upper bound of the retry delay.
    pub backoff_max: Duration,
    /// Minimum time between two fault log lines of this sensor.
    pub log_interval: Duration,
}

impl SamplerConfig {
    /// `period` and `threshold` with the default fault handling: first retry after
    /// `min(period, 1 s)`, doubling up to `max(period, 60 s)`, fault logs at most every 10
    /// minutes.
    pub fn new(period: Duration, threshold: f64) -> Self {
        SamplerConfig {
            period,
            threshold,
            backoff_initial: period.min(Duration::from_secs(1)),
            backoff_max: period.max(Duration::from_secs(60)),
            log_interval: Duration::from_secs(600),
        }
    }
}

/// Severity of a [`LogRecord`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// A sensor stopped answering.
    Warn,
    /// A sensor answers again.
    Info,
}

/// A line the daemon should log (the sampler itself never logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Severity.
    pub level: LogLevel,
    /// The text, starting with the resource's name (its href).
    pub message: String,
}

impl fmt::Display for LogRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// What the daemon should do after a read (or failed read).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SampleReport {
    /// The representation changed enough (threshold crossed, first reading, or recovery):
    /// notify the resource's observers now.
    pub notify: bool,
    /// This read turned a healthy resource unavailable (its GET now answers 5.03).
    pub became_unavailable: bool,
    /// Something to log, already rate limited.
    pub log: Option<LogRecord>,
}

#[derive(Debug, Clone)]
struct Fault {
    since: Instant,
    failures: u32,
    backoff: Duration,
    logged: bool,
}

/// The sampling state of one sensor. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Sampler {
    name: String,
    cfg: SamplerConfig,
    next_due: Instant,
    last_notified: Option<f64>,
    fault: Option<Fault>,
    last_fault_log: Option<Instant>,
}

impl Sampler {
    /// A sampler for the resource `name` whose first read is due at `now`.
    pub fn new(name: impl Into<String>, cfg: SamplerConfig, now: Instant) -> Self {
        Sampler {
            name: name.into(),
            cfg,
            next_due: now,
            last_notified: None,
            fault: None,
            last_fault_log: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// When the next read is due: sleep until then and call [`Sampler::is_due`] /
    /// [`SensorTask::handle_timeout`].
    pub fn poll_timeout(&self) -> Instant {
        self.next_due
    }

    /// Whether a read is due at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        now >= self.next_due
    }

    /// Whether the last read failed.
    pub fn is_faulted(&self) -> bool {
        self.fault.is_some()
    }

    /// Consecutive failed reads so far (0 while healthy).
    pub fn failures(&self) -> u32 {
        self.fault.as_ref().map_or(0, |f| f.failures)
    }

    /// The last value observers were notified of.
    pub fn last_notified(&self) -> Option<f64> {
        self.last_notified
    }

    /// A read at `now` gave `value`.
    pub fn on_sample(&mut self, now: Instant, value: f64) -> SampleReport {
        let recovered = self.fault.take();
        let moved = match self.last_notified {
            None => true,
            Some(last) => (value - last).abs() > self.cfg.threshold,
        };
        let notify = moved || recovered.is_some();
        if notify {
            self.last_notified = Some(value);
        }
        self.next_due = if recovered.is_some() {
            now + self.cfg.period
        } else {
            let next = self.next_due + self.cfg.period;
            // Fell behind (the daemon was busy or suspended): restart the grid from now rather
            // than firing a burst of catch-up reads.
            if next <= now {
                now + self.cfg.period
            } else {
                next
            }
        };
        let log = recovered.filter(|f| f.logged).map(|f| LogRecord {
            level: LogLevel::Info,
            message: format!(
                "{}: sensor answers again after {} failed read{} over {}",
                self.name,
                f.failures,
                if f.failures == 1 { "" } else { "s" },
                human(now.saturating_duration_since(f.since)),
            ),
        });
        SampleReport {
            notify,
            became_unavailable: false,
            log,
        }
    }

    /// A read at `now` failed with `error`.
    pub fn on_fault(&mut self, now: Instant, error: &str) -> SampleReport {
        let may_log = self
            .last_fault_log
            .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.log_interval);
        let (became_unavailable, log) = match &mut self.fault {
            None => {
                self.fault = Some(Fault {
                    since: now,
                    failures: 1,
                    backoff: self.cfg.backoff_initial,
                    logged: may_log,
                });
                let log = may_log.then(|| LogRecord {
                    level: LogLevel::Warn,
                    message: format!(
                        "{}: {error}; resource unavailable (5.03), retrying with back-off",
                        self.name
                    ),
                });
                (true, log)
            }
            Some(f) => {
                f.failures = f.failures.saturating_add(1);
                f.backoff = (f.backoff * 2).min(self.cfg.backoff_max);
                let log = may_log.then(|| LogRecord {
                    level: LogLevel::Warn,
                    message: format!(
                        "{}: still failing after {} reads over {}: {error}",
                        self.name,
                        f.failures,
                        human(now.saturating_duration_since(f.since)),
                    ),
                });
                if may_log {
                    f.logged = true;
                }
                (false, log)
            }
        };
        if log.is_some() {
            self.last_fault_log = Some(now);
        }
        let backoff = self.fault.as_ref().map_or(self.cfg.period, |f| f.backoff);
        self.next_due = now + backoff;
        SampleReport {
            notify: false,
            became_unavailable,
            log,
        }
    }
}

/// `1.5s`, `2m 5s`, `1h 2m` for log lines.
fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 3600 {
        format!("{}h {}m", secs / 3600, secs % 3600 / 60)
    } else if secs >= 60 {
        format!("{}m {}s", secs / 60, secs % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// A sensor resource as the daemon drives it: the driver, its [`Sampler`], and the
/// [`ReadingCell`] shared with the resource tree's backend.
///
/// ```
/// # use std::time::{Duration, Instant};
/// # use ocf_drivers::sampler::{SamplerConfig, SensorTask};
/// # use ocf_drivers::board::SimParams;
/// # use ocf_drivers::kind::ResourceKind;
/// # use ocf_drivers::sim::SimSensor;
/// let now = Instant::now();
/// let params = SimParams { initial: 21.0, step: 0.1, min: 15.0, max: 30.0, seed: 7 };
/// let sensor = SimSensor::new(ResourceKind::Temperature, params);
/// let mut task = SensorTask::new(
///     "/temperature",
///     Box::new(sensor),
///     SamplerConfig::new(Duration::from_secs(2), 0.5),
///     now,
/// );
/// let report = task.handle_timeout(now).expect("first read is due at once");
/// assert!(report.notify);
/// assert_eq!(task.poll_timeout(), now + Duration::from_secs(2));
/// assert!(task.cell().get().is_ok());
/// ```
pub struct SensorTask {
    href: String,
    sensor: Box<dyn Sensor + Send>,
    sampler: Sampler,
    cell: ReadingCell,
}

impl fmt::Debug for SensorTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SensorTask")
            .field("href", &self.href)
            .field("sampler", &self.sampler)
            .finish_non_exhaustive()
    }
}

impl SensorTask {
    /// A task for the resource `href` whose first read is due at `now`.
    pub fn new(
        href: impl Into<String>,
        sensor: Box<dyn Sensor + Send>,
        cfg: SamplerConfig,
        now: Instant,
    ) -> Self {
        let href = href.into();
        SensorTask {
            sampler: Sampler::new(href.clone(), cfg, now),
            href,
            sensor,
            cell: ReadingCell::new(),
        }
    }

    /// The resource's href.
    pub fn href(&self) -> &str {
        &self.href
    }

    /// The cell the resource's backend reads.
    pub fn cell(&self) -> &ReadingCell {
        &self.cell
    }

    /// The sampling state.
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// When to call [`SensorTask::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Instant {
        self.sampler.poll_timeout()
    }

    /// Read the sensor if a read is due at `now` (else `None`: a spurious wake-up), publish the
    /// reading or the fault into the cell, and say what to notify and log.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<SampleReport> {
        if !self.sampler.is_due(now) {
            return None;
        }
        Some(match self.sensor.read() {
            Ok(reading) => {
                self.cell.publish(reading.props);
                self.sampler.on_sample(now, reading.value)
            }
            Err(e) => {
                self.cell.set_fault(e.message());
                self.sampler.on_fault(now, e.message())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::props::{number, props};
    use crate::sensor::Reading;
    use crate::DriverError;
    use ocf::resource::ResourceError;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    const S: Duration = Duration::from_secs(1);

    fn cfg() -> SamplerConfig {
        SamplerConfig::new(5 * S, 0.5)
    }

    #[test]
    fn healthy_period_and_threshold() {
        let t0 = Instant::now();
        let mut s = Sampler::new("/t", cfg(), t0);
        assert_eq!(s.poll_timeout(), t0);
        assert!(s.is_due(t0));
        let r = s.on_sample(t0, 20.0);
        assert!(r.notify, "first reading notifies");
        assert_eq!(s.poll_timeout(), t0 + 5 * S);
        assert!(!s.is_due(t0 + 4 * S));

        // Within the threshold: no notification, fixed-rate schedule.
        let r = s.on_sample(t0 + 5 * S, 20.4);
        assert!(!r.notify);
        assert_eq!(s.poll_timeout(), t0 + 10 * S);
        // Exactly the threshold is not "more than".
        assert!(!s.on_sample(t0 + 10 * S, 20.5).notify);
        // Drift accumulates against the last *notified* value (20.0).
        let r = s.on_sample(t0 + 15 * S, 20.6);
        assert!(r.notify);
        assert_eq!(s.last_notified(), Some(20.6));
        assert!(s.on_sample(t0 + 20 * S, 20.0).notify);
        assert_eq!(r.log, None);
    }

    #[test]
    fn late_wakeup_does_not_burst() {
        let t0 = Instant::now();
        let mut s = Sampler::new("/t", cfg(), t0);
        s.on_sample(t0, 1.0);
        // Woken 12 s late: next read is a full period later, not immediately.
        s.on_sample(t0 + 17 * S, 1.0);
        assert_eq!(s.poll_timeout(), t0 + 22 * S);
    }

    #[test]
    fn fault_backoff_log_once_and_recovery() {
        let t0 = Instant::now();
        let mut s = Sampler::new("/t", cfg(), t0);
        s.on_sample(t0, 20.0);

        let mut now = t0 + 5 * S;
        let r = s.on_fault(now, "bus error");
        assert!(r.became_unavailable);
        let log = r.log.expect("first fault is logged");
        assert_eq!(log.level, LogLevel::Warn);
        assert!(log.message.starts_with("/t: bus error"), "{}", log.message);
        // Retries: 1 s, 2 s, 4 s, ... capped at 60 s; no further logs.
        let mut expected = S;
        for i in 0..10 {
            assert_eq!(s.poll_timeout(), now + expected, "retry {i}");
            now = s.poll_timeout();
            let r = s.on_fault(now, "bus error");
            assert!(!r.became_unavailable);
            assert_eq!(r.log, None, "retry {i} logged");
            expected = (expected * 2).min(60 * S);
        }
        assert_eq!(s.failures(), 11);
        assert_eq!(s.poll_timeout() - now, 60 * S);

        // Recovery: notify (even with the same value) and log once.
        now = s.poll_timeout();
        let r = s.on_sample(now, 20.0);
        assert!(r.notify);
        let log = r.log.expect("recovery is logged");
        assert_eq!(log.level, LogLevel::Info);
        assert!(
            log.message.contains("after 11 failed reads"),
            "{}",
            log.message
        );
        assert!(!s.is_faulted());
        assert_eq!(s.poll_timeout(), now + 5 * S);
    }

    #[test]
    fn long_fault_reminds_every_log_interval() {
        let t0 = Instant::now();
        let mut s = Sampler::new("/t", cfg(), t0);
        assert!(s.on_fault(t0, "e").log.is_some());
        let mut now = t0;
        let mut reminders = 0;
        while now < t0 + Duration::from_secs(1250) {
            now = s.poll_timeout();
            if let Some(l) = s.on_fault(now, "e").log {
                assert!(l.message.contains("still failing"));
                reminders += 1;
            }
        }
        assert_eq!(reminders, 2, "one reminder per 600 s");
    }

    #[test]
    fn flapping_sensor_is_rate_limited() {
        let t0 = Instant::now();
        let mut s = Sampler::new("/t", cfg(), t0);
        assert!(s.on_fault(t0, "e").log.is_some());
        assert!(s.on_sample(t0 + S, 1.0).log.is_some());
        // Fails again soon: unavailable again, but not logged, and so no recovery log either.
        let r = s.on_fault(t0 + 6 * S, "e");
        assert!(r.became_unavailable);
        assert_eq!(r.log, None);
        assert_eq!(s.on_sample(t0 + 7 * S, 1.0).log, None);
        // After the log interval a new fault is logged again.
        assert!(s.on_fault(t0 + 700 * S, "e").log.is_some());
    }

    /// A sensor whose results the test scripts.
    struct Scripted(Arc<Mutex<VecDeque<Result<f64, &'static str>>>>);

    impl Sensor for Scripted {
        fn read(&mut self) -> Result<Reading, DriverError> {
            let next = self.0.lock().unwrap().pop_front().expect("unexpected read");
            next.map(|v| Reading {
                value: v,
                props: props([("temperature", number(v))]),
            })
            .map_err(DriverError::new)
        }
    }

    #[test]
    fn task_publishes_faults_and_recovers() {
        let script = Arc::new(Mutex::new(VecDeque::from([
            Ok(20.0),
            Err("TMP105 at 0x48: no acknowledge"),
            Ok(20.1),
        ])));
        let t0 = Instant::now();
        let mut task = SensorTask::new(
            "/temperature",
            Box::new(Scripted(script.clone())),
            cfg(),
            t0,
        );
        let mut backend = task.cell().backend();
        use ocf::resource::Backend;
        assert!(backend.retrieve().is_err());

        assert!(task.handle_timeout(t0).unwrap().notify);
        assert_eq!(
            backend.retrieve(),
            Ok(props([("temperature", number(20.0))]))
        );
        // Not due: no read happens (the script would panic on an extra read).
        assert_eq!(task.handle_timeout(t0 + 4 * S), None);

        let r = task.handle_timeout(t0 + 5 * S).unwrap();
        assert!(r.became_unavailable && r.log.is_some());
        assert_eq!(
            backend.retrieve(),
            Err(ResourceError::Unavailable(
                "TMP105 at 0x48: no acknowledge".into()
            ))
        );
        assert_eq!(task.poll_timeout(), t0 + 6 * S);
        let r = task.handle_timeout(t0 + 6 * S).unwrap();
        assert!(r.notify);
        assert_eq!(
            backend.retrieve(),
            Ok(props([("temperature", number(20.1))]))
        );
        assert!(script.lock().unwrap().is_empty());
    }
}
