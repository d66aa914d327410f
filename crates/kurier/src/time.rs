//! Time, in one place: the current Unix time, RFC 5322 dates, and a [`Clock`] that tests
//! can fix.
//!
//! Delivery, bounce and greylisting decisions take the time as a value (`now: u64`); the
//! code that drives them asks a `Clock`, so the decisions are tested with a fixed clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Where "now" comes from.
pub trait Clock: Send + Sync {
    /// Seconds since the Unix epoch.
    fn now(&self) -> u64;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        unix_now()
    }
}

/// A clock that says what it is told, for tests.
#[derive(Debug, Default)]
pub struct FixedClock(std::sync::atomic::AtomicU64);

impl FixedClock {
    /// A clock standing at `now`.
    pub fn at(now: u64) -> FixedClock {
        FixedClock(std::sync::atomic::AtomicU64::new(now))
    }

    /// Moves the clock forward.
    pub fn advance(&self, seconds: u64) {
        self.0
            .fetch_add(seconds, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for FixedClock {
    fn now(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Seconds since the Unix epoch (0 if the system clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A Unix time as an RFC 5322 §3.3 date-time, e.g. `Tue, 1 Dec 2026 10:00:00 +0000`.
pub fn rfc5322(unix: u64) -> String {
    chrono::DateTime::from_timestamp(i64::try_from(unix).unwrap_or(0), 0)
        .unwrap_or_default()
        .to_rfc2822()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_a_fixed_clock() {
        assert_eq!(rfc5322(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322(1_796_119_200), "Tue, 1 Dec 2026 10:00:00 +0000");
        let c = FixedClock::at(100);
        c.advance(5);
        assert_eq!(c.now(), 105);
        assert!(SystemClock.now() > 1_700_000_000);
    }
}
