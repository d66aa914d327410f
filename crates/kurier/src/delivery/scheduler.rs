//! When each message is due: the retry schedule with jitter, the timer's index of due
//! times, and the per-message locks that keep deliveries and queue commands apart.

use std::sync::Arc;
use std::time::Duration;

use kurier_spool::QueueId;

use super::Engine;

/// The time of the next attempt after `attempts` failed ones: the schedule's entry (the last
/// one repeating) plus up to 10% random jitter, so retries of many messages spread out.
pub fn next_attempt(now: u64, attempts: u32, schedule: &[Duration]) -> u64 {
    let i = (attempts.max(1) as usize - 1).min(schedule.len().saturating_sub(1));
    let base = schedule.get(i).map_or(60, Duration::as_secs).max(1);
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    let jitter = u64::from(u32::from_le_bytes(b)) % (base / 10 + 1);
    now + base + jitter
}

impl Engine {
    pub(super) fn schedule(&self, id: QueueId, at: u64) {
        let mut r = self.retries.lock().unwrap_or_else(|p| p.into_inner());
        r.entry(at).or_default().push(id);
    }

    pub(super) fn due(&self, now: u64) -> Vec<QueueId> {
        let mut r = self.retries.lock().unwrap_or_else(|p| p.into_inner());
        let later = r.split_off(&(now + 1));
        let due = std::mem::replace(&mut *r, later);
        let mut ids: Vec<QueueId> = due.into_values().flatten().collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// The lock that serializes work on one message.
    pub(super) fn lock_for(&self, id: &QueueId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(id.clone()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_schedule_with_jitter() {
        let schedule: Vec<Duration> = [60, 300, 900]
            .iter()
            .map(|s| Duration::from_secs(*s))
            .collect();
        for _ in 0..100 {
            let t = next_attempt(1000, 1, &schedule);
            assert!((1060..=1066).contains(&t), "{t}");
            let t = next_attempt(1000, 3, &schedule);
            assert!((1900..=1990).contains(&t), "{t}");
            let t = next_attempt(1000, 50, &schedule);
            assert!((1900..=1990).contains(&t), "the last step repeats: {t}");
        }
        assert!(next_attempt(1000, 0, &schedule) >= 1060);
    }
}
