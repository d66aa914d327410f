//! How busy the server is: the number of open SMTP connections against the configured
//! limit. The listeners count; the sessions read it to cut their timeouts when the server
//! is near its limit, so slow or idle clients cannot keep everyone else out (what Postfix
//! calls stress mode).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The timeout every wait of a session gets while the server is under stress.
pub const STRESS_TIMEOUT: Duration = Duration::from_secs(10);

/// Open connections and the limit they are counted against.
#[derive(Debug)]
pub struct Load {
    open: AtomicUsize,
    limit: usize,
}

impl Load {
    /// No connections yet, out of `limit`.
    pub fn new(limit: usize) -> Load {
        Load {
            open: AtomicUsize::new(0),
            limit,
        }
    }

    /// A connection was accepted.
    pub fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection ended.
    pub fn closed(&self) {
        let _ = self
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// At 80% of the limit or more.
    pub fn stressed(&self) -> bool {
        self.open().saturating_mul(5) >= self.limit.saturating_mul(4)
    }

    /// `normal`, or [`STRESS_TIMEOUT`] if that is shorter and the server is stressed.
    pub fn timeout(&self, normal: Duration) -> Duration {
        if self.stressed() {
            normal.min(STRESS_TIMEOUT)
        } else {
            normal
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stress_starts_at_four_fifths() {
        let l = Load::new(10);
        let normal = Duration::from_secs(300);
        for _ in 0..7 {
            l.opened();
        }
        assert!(!l.stressed());
        assert_eq!(l.timeout(normal), normal);
        l.opened();
        assert!(l.stressed());
        assert_eq!(l.timeout(normal), STRESS_TIMEOUT);
        assert_eq!(l.timeout(Duration::from_secs(1)), Duration::from_secs(1));
        for _ in 0..20 {
            l.closed();
        }
        assert_eq!(l.open(), 0);
    }
}
