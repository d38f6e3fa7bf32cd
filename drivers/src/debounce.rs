//! A sans-IO debouncer for a mechanical contact (button, reed switch).
//!
//! Feed it the line's edges with their timestamps ([`Debouncer::on_edge`]); a new level becomes
//! the debounced state once the line has stayed there for the settle time. It never reads a
//! clock and never sleeps: [`Debouncer::poll_timeout`] tells when a pending level would settle,
//! and [`Debouncer::handle_timeout`] commits it. Edges arriving from a GPIO character device
//! (gpiocdev edge events) carry kernel timestamps, so bounces are judged by when they happened,
//! not by when the daemon got around to reading them.

use std::time::{Duration, Instant};

/// See the [module documentation](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Debouncer {
    stable: bool,
    pending: Option<(bool, Instant)>,
    settle: Duration,
}

impl Debouncer {
    /// A debouncer whose line is at `initial` and must stay `settle` at a new level before the
    /// change counts.
    pub fn new(initial: bool, settle: Duration) -> Self {
        Debouncer {
            stable: initial,
            pending: None,
            settle,
        }
    }

    /// The debounced level.
    pub fn state(&self) -> bool {
        self.stable
    }

    /// The settle time.
    pub fn settle(&self) -> Duration {
        self.settle
    }

    /// The line went to `level` at `at`. Returns the new debounced level if this edge proves an
    /// earlier pending change settled (the line stayed there until `at`), or if the settle time
    /// is zero.
    pub fn on_edge(&mut self, level: bool, at: Instant) -> Option<bool> {
        let mut changed = self.handle_timeout(at);
        if level == self.stable {
            // Bounced back before settling.
            self.pending = None;
        } else if self.settle.is_zero() {
            self.stable = level;
            changed = Some(level);
        } else if !matches!(self.pending, Some((l, _)) if l == level) {
            // A repeated edge to the pending level keeps the earlier deadline: the line has
            // been there since the first one.
            self.pending = Some((level, at + self.settle));
        }
        changed
    }

    /// When a pending level would settle, if one is pending.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.map(|(_, deadline)| deadline)
    }

    /// Commit a pending level whose settle time has passed at `now`; returns the new debounced
    /// level if it changed.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<bool> {
        match self.pending {
            Some((level, deadline)) if now >= deadline => {
                self.pending = None;
                self.stable = level;
                Some(level)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn bounces_are_ignored() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(false, 20 * MS);
        assert_eq!(d.on_edge(true, t0), None);
        assert_eq!(d.poll_timeout(), Some(t0 + 20 * MS));
        assert_eq!(d.on_edge(false, t0 + 2 * MS), None);
        assert_eq!(d.poll_timeout(), None, "bounced back: nothing pending");
        assert_eq!(d.on_edge(true, t0 + 3 * MS), None);
        assert_eq!(d.poll_timeout(), Some(t0 + 23 * MS));
        assert_eq!(d.handle_timeout(t0 + 22 * MS), None);
        assert!(!d.state());
        assert_eq!(d.handle_timeout(t0 + 23 * MS), Some(true));
        assert!(d.state());
        assert_eq!(d.poll_timeout(), None);
        assert_eq!(d.handle_timeout(t0 + 100 * MS), None);
    }

    #[test]
    fn late_edge_commits_settled_level() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(false, 20 * MS);
        d.on_edge(true, t0);
        // The daemon did not wake for the timeout, but the next edge shows the line stayed high
        // for 50 ms: the change is reported, and the new edge starts a new pending change.
        assert_eq!(d.on_edge(false, t0 + 50 * MS), Some(true));
        assert_eq!(d.poll_timeout(), Some(t0 + 70 * MS));
        assert_eq!(d.handle_timeout(t0 + 70 * MS), Some(false));
    }

    #[test]
    fn repeated_edge_keeps_deadline_and_zero_settle_is_immediate() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(true, 10 * MS);
        d.on_edge(false, t0);
        d.on_edge(false, t0 + 5 * MS);
        assert_eq!(d.poll_timeout(), Some(t0 + 10 * MS));

        let mut d = Debouncer::new(false, Duration::ZERO);
        assert_eq!(d.on_edge(true, t0), Some(true));
        assert_eq!(d.on_edge(true, t0), None);
        assert_eq!(d.on_edge(false, t0), Some(false));
    }
}
