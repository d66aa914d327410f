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

/// The budget's unit.
const UNIT: u64 = 64 * 1024;

/// What a message may hold from the shared half of the budget before it needs a large
/// reservation.
pub const SMALL: u64 = 256 * 1024;

/// Memory for message data held by all sessions together, in two halves so that sessions
/// never wait for each other in a circle: every message starts with [`SMALL`] from the
/// first half; one that grows beyond it reserves, at once, all it may still need (its
/// declared SIZE, or the size limit) from the second half. Each reservation is all or
/// nothing, and a large one never waits for a small one, so the large ones always finish
/// and free their memory.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    small: Arc<Semaphore>,
    large: Arc<Semaphore>,
}

/// What one session has reserved of the budget; given back when dropped or released.
#[derive(Debug, Default)]
pub struct Reservation {
    small: Option<OwnedSemaphorePermit>,
    large: Option<(OwnedSemaphorePermit, u64)>,
}

fn units(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX)
}

impl MemoryBudget {
    /// A budget of `bytes` octets, half for the first [`SMALL`] of every message.
    pub fn new(bytes: u64) -> MemoryBudget {
        let half = usize::try_from(bytes / 2 / UNIT)
            .unwrap_or(Semaphore::MAX_PERMITS)
            .clamp(1, Semaphore::MAX_PERMITS);
        MemoryBudget {
            small: Arc::new(Semaphore::new(half)),
            large: Arc::new(Semaphore::new(half)),
        }
    }

    /// Octets not reserved by anyone now.
    pub fn available(&self) -> u64 {
        (self.small.available_permits() + self.large.available_permits()) as u64 * UNIT
    }

    /// Makes `r` cover `bytes` of a message that may grow to `most` octets, waiting while
    /// the budget is spent.
    pub async fn reserve(&self, r: &mut Reservation, bytes: u64, most: u64) {
        if r.small.is_none() {
            match self.small.clone().acquire_many_owned(units(SMALL)).await {
                Ok(p) => r.small = Some(p),
                Err(_) => return,
            }
        }
        if bytes <= SMALL || r.large.as_ref().is_some_and(|(_, b)| *b >= bytes) {
            return;
        }
        // More than foreseen (a client that sent more than it declared): the first large
        // reservation is given back before the new one is waited for, so nobody holds
        // one while waiting for another.
        r.large = None;
        let want = most.max(bytes);
        if let Ok(p) = self.large.clone().acquire_many_owned(units(want)).await {
            r.large = Some((p, want));
        }
    }
}

impl Reservation {
    /// True when `bytes` are covered.
    pub fn covers(&self, bytes: u64) -> bool {
        self.small.is_some()
            && (bytes <= SMALL || self.large.as_ref().is_some_and(|(_, b)| *b >= bytes))
    }

    /// Gives everything back.
    pub fn release(&mut self) {
        self.small = None;
        self.large = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_are_all_or_nothing_and_large_ones_never_wait_for_small_ones() {
        let mib = 1024 * 1024;
        let budget = MemoryBudget::new(8 * mib);
        let (mut a, mut b, mut c) = (
            Reservation::default(),
            Reservation::default(),
            Reservation::default(),
        );
        budget.reserve(&mut a, 1, 3 * mib).await;
        budget.reserve(&mut b, 1, 3 * mib).await;
        assert!(a.covers(SMALL) && !a.covers(SMALL + 1));
        // a grows: all it may need (3 MiB) at once, from the other half.
        budget.reserve(&mut a, SMALL + 1, 3 * mib).await;
        assert!(a.covers(3 * mib));
        // b cannot get its 3 MiB while a holds the large half's 3 of 4: it waits, a does not.
        let waiting = tokio::time::timeout(
            Duration::from_millis(50),
            budget.reserve(&mut b, 2 * mib, 3 * mib),
        );
        assert!(waiting.await.is_err(), "b waits for a");
        // The small half is not starved by the large: c still starts.
        budget.reserve(&mut c, 1, 3 * mib).await;
        assert!(c.covers(SMALL));
        a.release();
        budget.reserve(&mut b, 2 * mib, 3 * mib).await;
        assert!(b.covers(3 * mib));
        drop((b, c));
        assert_eq!(budget.available(), 8 * mib);
    }
}
