//! How busy the server is: the number of open SMTP connections against the configured
//! limit, and the memory that message data in transit may take. The listeners count
//! connections; the sessions read the count to cut their timeouts when the server is near
//! its limit, so slow or idle clients cannot keep everyone else out (what Postfix calls
//! stress mode). The sessions reserve [`MemoryBudget`] for the message data they hold, so
//! many large messages at once cannot take all the memory: a session that finds the
//! budget spent stops reading (the client waits, TCP backpressure).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// The budget's unit: reservations grow in steps of this many octets.
const UNIT: u64 = 64 * 1024;

/// Memory for message data held by all sessions together.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    units: Arc<Semaphore>,
}

/// What one session has reserved of the budget; given back when dropped or released.
#[derive(Debug, Default)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
}

impl MemoryBudget {
    /// A budget of `bytes` octets (at least one unit).
    pub fn new(bytes: u64) -> MemoryBudget {
        let units = usize::try_from((bytes / UNIT).max(1)).unwrap_or(Semaphore::MAX_PERMITS);
        MemoryBudget {
            units: Arc::new(Semaphore::new(units.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// Octets not reserved by anyone now.
    pub fn available(&self) -> u64 {
        self.units.available_permits() as u64 * UNIT
    }

    /// Grows `r` to cover `bytes`, waiting while the budget is spent.
    pub async fn reserve(&self, r: &mut Reservation, bytes: u64) {
        let want = usize::try_from(bytes.div_ceil(UNIT)).unwrap_or(usize::MAX);
        let have = r.units();
        if want <= have {
            return;
        }
        let more = u32::try_from(want - have).unwrap_or(u32::MAX);
        let Ok(permit) = self.units.clone().acquire_many_owned(more).await else {
            return;
        };
        match &mut r.permit {
            Some(p) => p.merge(permit),
            None => r.permit = Some(permit),
        }
    }
}

impl Reservation {
    /// Units held.
    pub fn units(&self) -> usize {
        self.permit
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// True when `bytes` are covered.
    pub fn covers(&self, bytes: u64) -> bool {
        self.units() as u64 * UNIT >= bytes
    }

    /// Gives everything back.
    pub fn release(&mut self) {
        self.permit = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_grow_and_wait_for_each_other() {
        let budget = MemoryBudget::new(4 * UNIT);
        let mut a = Reservation::default();
        budget.reserve(&mut a, 1).await;
        assert!(a.covers(UNIT) && !a.covers(UNIT + 1));
        budget.reserve(&mut a, 3 * UNIT).await;
        assert_eq!(budget.available(), UNIT);
        let mut b = Reservation::default();
        let waiting =
            tokio::time::timeout(Duration::from_millis(50), budget.reserve(&mut b, 2 * UNIT));
        assert!(waiting.await.is_err(), "the budget is spent: b waits");
        a.release();
        budget.reserve(&mut b, 2 * UNIT).await;
        assert!(b.covers(2 * UNIT));
        drop(b);
        assert_eq!(budget.available(), 4 * UNIT);
    }

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
