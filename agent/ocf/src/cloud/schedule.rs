//! The pure timing rules of the cloud session: the token refresh schedule, reconnect back-off with
//! full jitter, and the small deterministic random generator behind tokens and jitter.

use std::time::Duration;

/// When to refresh a token that lives `expiresin` seconds from now (OCF-PROTOCOL.md §7.4, the
/// iotivity-lite schedule): more than 1 h → 10 min before expiry; more than 4 min → 2 min
/// before; more than 20 s → 10 s before; `<= 0` → never (`None`). For 20 s or less
/// iotivity-lite refreshes *at* expiry, which races the cloud's clock; we refresh when a third
/// of the lifetime is left, so a short-lived token is replaced before it expires.
///
/// plgd hub already reports the sign-in `expiresin` 2 min short of the JWT expiry and refuses
/// tokens with less than 2 min left (§10), so the margins are needed.
pub fn refresh_delay(expiresin: i64) -> Option<Duration> {
    let secs = match expiresin {
        s if s <= 0 => return None,
        s if s > 3600 => s - 600,
        s if s > 240 => s - 120,
        s if s > 20 => s - 10,
        s => return Some(Duration::from_millis(s.unsigned_abs() * 2000 / 3)),
    };
    Some(Duration::from_secs(secs.unsigned_abs()))
}

/// The upper bound of the back-off delay after `failures` consecutive failures (>= 1):
/// `min(cap, base · 2^(failures-1))`, so with base 1 s the first retry comes within 1 s.
pub fn backoff_ceiling(failures: u32, base: Duration, cap: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(31);
    base.saturating_mul(1u32 << exp).min(cap)
}

/// The back-off delay with FULL jitter: uniform in `[0, backoff_ceiling(..)]`. Full jitter (AWS
/// architecture blog, "Exponential Backoff And Jitter") spreads a fleet that lost its cloud at the
/// same moment over the whole window, so a restarted cloud is not stampeded.
pub fn backoff_delay(
    failures: u32,
    base: Duration,
    cap: Duration,
    rng: &mut SplitMix64,
) -> Duration {
    let ceiling = backoff_ceiling(failures, base, cap);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.below_inclusive(nanos))
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, good enough for CoAP tokens and jitter, and
/// seeded by the caller so that tests are deterministic. Tokens need no secrecy: the cloud link
/// is TLS, and RFC 8323 matches responses by token within one connection only.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed` (the daemon should take it from the OS, e.g. `getrandom`).
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, max]` (multiply-shift; the bias is below 2^-64 · max).
    pub fn below_inclusive(&mut self, max: u64) -> u64 {
        match max.checked_add(1) {
            None => self.next_u64(),
            Some(n) => ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_schedule_boundaries() {
        let cases = [
            (86_400, Some(86_400 - 600)),
            (3601, Some(3001)),
            (3600, Some(3480)),
            (241, Some(121)),
            (240, Some(230)),
            (21, Some(11)),
            (0, None),
            (-1, None),
            (i64::MIN, None),
        ];
        for (expiresin, secs) in cases {
            assert_eq!(
                refresh_delay(expiresin),
                secs.map(Duration::from_secs),
                "expiresin {expiresin}"
            );
        }
        assert!(refresh_delay(i64::MAX).is_some());
        // Short lifetimes: refreshed with a third of the lifetime left, strictly before expiry.
        assert_eq!(refresh_delay(20), Some(Duration::from_millis(13_333)));
        assert_eq!(refresh_delay(5), Some(Duration::from_millis(3_333)));
        assert_eq!(refresh_delay(1), Some(Duration::from_millis(666)));
    }

    #[test]
    fn backoff_ceilings_double_and_cap() {
        let (base, cap) = (Duration::from_secs(1), Duration::from_secs(60));
        let got: Vec<u64> = (1..=10)
            .map(|n| backoff_ceiling(n, base, cap).as_secs())
            .collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        assert_eq!(backoff_ceiling(0, base, cap), base);
        assert_eq!(backoff_ceiling(u32::MAX, base, cap), cap);
    }

    /// Full jitter: every draw within `[0, ceiling]`, and the draws cover the whole window
    /// (not "half + jitter" as iotivity-lite does): min near 0, max near the ceiling, mean near
    /// the middle.
    #[test]
    fn full_jitter_distribution_bounds() {
        let (base, cap) = (Duration::from_secs(1), Duration::from_secs(60));
        let mut rng = SplitMix64::new(0xC0FFEE);
        for failures in 1..=9 {
            let ceiling = backoff_ceiling(failures, base, cap);
            let draws: Vec<Duration> = (0..2000)
                .map(|_| backoff_delay(failures, base, cap, &mut rng))
                .collect();
            let min = *draws.iter().min().unwrap();
            let max = *draws.iter().max().unwrap();
            let mean = draws.iter().sum::<Duration>() / 2000;
            assert!(max <= ceiling, "failures {failures}: {max:?} > {ceiling:?}");
            assert!(min < ceiling / 50, "failures {failures}: min {min:?}");
            assert!(max > ceiling * 49 / 50, "failures {failures}: max {max:?}");
            assert!(
                mean > ceiling * 45 / 100 && mean < ceiling * 55 / 100,
                "failures {failures}: mean {mean:?} of {ceiling:?}"
            );
            // Below half the ceiling about half of the time (iotivity-lite never goes there).
            let low = draws.iter().filter(|d| **d < ceiling / 2).count();
            assert!((900..1100).contains(&low), "failures {failures}: {low}");
        }
    }

    #[test]
    fn rng_is_deterministic_and_bounded() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
            assert!(a.below_inclusive(10) <= 10);
            b.below_inclusive(10);
        }
        assert_eq!(a.below_inclusive(0), 0);
        let _ = a.below_inclusive(u64::MAX);
    }
}
