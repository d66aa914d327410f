//! Each destination's share of outbound delivery. A destination is the next hop: a
//! route's host, or the recipient domain for MX delivery. It has its own limit of
//! connections at once (`delivery.per_destination`), and a worker that finds them all in use
//! does not wait: the recipients are put back for a few seconds, and the worker goes on to
//! other mail. So a dead or slow destination holds only its own slots, never every worker.
//!
//! A destination that could not be reached [`DEAD_AFTER`] times in a row (no connection, no
//! greeting, a failed handshake) is dead for a while: its mail is deferred at once instead
//! of spending a timeout on every message. When the while is over, one delivery probes it;
//! success makes it alive again, failure dead for twice as long (up to [`DEAD_MAX`]).
//!
//! A message put back because its destination was busy waits in that destination's line:
//! when a connection's slot is given back, the first message in line is handed to the
//! engine at once ([`Destinations::on_free`]); the put-back time is only the fallback.
//!
//! A destination may also have a rate (`delivery.rate_limits`, messages per minute; some
//! large receivers block senders that go faster): deliveries to it start at least
//! 60 s / rate apart, and one that comes too early is put back like a busy one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Failures in a row after which a destination is dead.
pub const DEAD_AFTER: u32 = 3;

/// How long a destination stays dead the first time.
pub const DEAD_FIRST: Duration = Duration::from_secs(60);

/// The longest a destination stays dead before it is probed again.
pub const DEAD_MAX: Duration = Duration::from_secs(30 * 60);

/// Destinations remembered at most before idle ones with a few failures are forgotten.
const MAX_REMEMBERED: usize = 10_000;

/// What [`Destinations::admit`] decided.
#[derive(Debug)]
pub enum Admission {
    /// Go ahead: the slot is held until dropped.
    Go(Slot),
    /// All its connections are in use: try again shortly.
    Busy,
    /// Dead: defer, for this long still, for this reason.
    Dead {
        /// Until it is probed again.
        left: Duration,
        /// The last failure.
        reason: String,
    },
}

/// A dead destination, for `kurier queue list`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeadDestination {
    /// The next hop.
    pub name: String,
    /// Until it is probed again.
    #[serde(skip)]
    pub left: Duration,
    /// When it is probed again (Unix time), as written for `kurier queue list`.
    pub until: u64,
    /// Failures in a row.
    pub failures: u32,
    /// The last one.
    pub reason: String,
}

#[derive(Debug, Default)]
struct State {
    busy: usize,
    failures: u32,
    dead_until: Option<Instant>,
    reason: String,
    /// A delivery is probing the destination after its dead time.
    probing: bool,
    /// With a rate limit: the next delivery may not start before this.
    next_start: Option<Instant>,
    /// Messages put back while it was busy, first come first.
    waiting: std::collections::VecDeque<kurier_spool::QueueId>,
}

impl State {
    /// Nothing worth remembering: not in use, no failures, no pacing under way.
    fn forgettable(&self, now: Instant) -> bool {
        self.busy == 0
            && self.failures == 0
            && self.waiting.is_empty()
            && self.next_start.is_none_or(|t| t <= now)
    }
}

/// The destinations with mail in flight or a recent failure.
#[derive(Debug)]
pub struct Destinations {
    per_destination: usize,
    /// Messages per minute, by destination name; `*` for all others.
    rates: BTreeMap<String, u32>,
    states: Mutex<HashMap<String, State>>,
    /// Where a message whose destination has a free slot again is sent.
    free: Mutex<Option<tokio::sync::mpsc::UnboundedSender<kurier_spool::QueueId>>>,
}

/// Messages remembered in one destination's line at most (the rest wait for their
/// put-back time).
const MAX_WAITING: usize = 10_000;

/// One connection's worth of a destination's limit.
#[derive(Debug)]
pub struct Slot {
    owner: Arc<Destinations>,
    name: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut states = self.owner.lock();
        if let Some(s) = states.get_mut(&self.name) {
            s.busy = s.busy.saturating_sub(1);
            s.probing = false;
            if let Some(next) = s.waiting.pop_front() {
                self.owner.wake(next);
            }
            // Nothing to remember about a healthy destination nobody uses.
            if s.forgettable(Instant::now()) {
                states.remove(&self.name);
            }
        }
    }
}

impl Slot {
    /// The destination answered (a transaction ran, whatever its result): alive.
    pub fn reached(&self) {
        let mut states = self.owner.lock();
        if let Some(s) = states.get_mut(&self.name) {
            s.failures = 0;
            s.dead_until = None;
            s.reason.clear();
        }
    }

    /// No connection, greeting or handshake with any of its hosts.
    pub fn unreachable(&self, reason: &str, now: Instant) {
        let mut states = self.owner.lock();
        if let Some(s) = states.get_mut(&self.name) {
            s.failures = s.failures.saturating_add(1);
            s.reason = reason.to_string();
            if s.failures >= DEAD_AFTER {
                let doublings = (s.failures - DEAD_AFTER).min(16);
                let wait = DEAD_FIRST.saturating_mul(1 << doublings).min(DEAD_MAX);
                s.dead_until = Some(now + wait);
                crate::maillog::destination_dead(&self.name, s.failures, wait, reason);
            }
        }
    }
}

impl Destinations {
    /// At most `per_destination` connections at once to each, and at most `rates`
    /// messages a minute to those named there (`*`: every other one; 0: no limit).
    pub fn new(per_destination: usize, rates: BTreeMap<String, u32>) -> Arc<Destinations> {
        let rates = rates
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        Arc::new(Destinations {
            per_destination: per_destination.max(1),
            rates,
            states: Mutex::new(HashMap::new()),
            free: Mutex::new(None),
        })
    }

    /// Where messages go when their destination has a slot again.
    pub fn on_free(&self, to: tokio::sync::mpsc::UnboundedSender<kurier_spool::QueueId>) {
        *self.free.lock().unwrap_or_else(|p| p.into_inner()) = Some(to);
    }

    fn wake(&self, id: kurier_spool::QueueId) {
        if let Some(to) = self.free.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = to.send(id);
        }
    }

    /// Puts a message in the line of a destination that was busy.
    pub fn wait_for(&self, name: &str, id: &kurier_spool::QueueId) {
        let mut states = self.lock();
        if let Some(s) = states.get_mut(name)
            && s.waiting.len() < MAX_WAITING
            && !s.waiting.contains(id)
        {
            s.waiting.push_back(id.clone());
        }
    }

    /// The time between two deliveries to `name`, if it has a rate.
    fn spacing(&self, name: &str) -> Option<Duration> {
        let rate = self
            .rates
            .get(name)
            .or_else(|| self.rates.get("*"))
            .copied()?;
        (rate > 0).then(|| Duration::from_secs(60) / rate)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, State>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May a delivery to `name` start now? Never waits.
    pub fn admit(self: &Arc<Self>, name: &str, now: Instant) -> Admission {
        let mut states = self.lock();
        if states.len() >= MAX_REMEMBERED && !states.contains_key(name) {
            // Failures of destinations that are neither dead nor in use are forgotten
            // first, so the map stays bounded however many domains are mailed.
            states.retain(|_, s| {
                s.busy > 0 || s.dead_until.is_some() || s.next_start.is_some_and(|t| t > now)
            });
        }
        let spacing = self.spacing(name);
        let s = states.entry(name.to_string()).or_default();
        if let Some(until) = s.dead_until {
            if now < until || s.probing || s.busy > 0 {
                return Admission::Dead {
                    left: until.saturating_duration_since(now),
                    reason: s.reason.clone(),
                };
            }
            // Its time is over: this delivery probes it, the others wait for the result.
            s.probing = true;
        } else if s.busy >= self.per_destination || s.next_start.is_some_and(|t| now < t) {
            return Admission::Busy;
        }
        if let Some(gap) = spacing {
            s.next_start = Some(now + gap);
        }
        s.busy += 1;
        Admission::Go(Slot {
            owner: self.clone(),
            name: name.to_string(),
        })
    }

    /// The destinations that are dead now.
    pub fn dead(&self, now: Instant) -> Vec<DeadDestination> {
        let mut dead: Vec<DeadDestination> = self
            .lock()
            .iter()
            .filter_map(|(name, s)| {
                let until = s.dead_until?;
                let left = until.saturating_duration_since(now);
                Some(DeadDestination {
                    name: name.clone(),
                    left,
                    until: crate::time::unix_now().saturating_add(left.as_secs()),
                    failures: s.failures,
                    reason: s.reason.clone(),
                })
            })
            .collect();
        dead.sort_by(|a, b| a.name.cmp(&b.name));
        dead
    }
}

/// Writes the dead destinations where `kurier queue list` reads them (removed when none
/// is dead). Written only when the list changed; losing it loses nothing but the display.
pub fn publish(path: &std::path::Path, dead: &[DeadDestination]) {
    if dead.is_empty() {
        let _ = std::fs::remove_file(path);
        return;
    }
    let written = serde_json::to_vec(dead)
        .map_err(std::io::Error::other)
        .and_then(|json| {
            crate::fsutil::write_atomic(path, &[&json], &crate::fsutil::WriteOptions::private())
        });
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the dead destinations");
    }
}

/// What [`publish`] wrote, still dead at `now` (Unix time); nothing when the file is
/// missing or unreadable.
pub fn published(path: &std::path::Path, now: u64) -> Vec<DeadDestination> {
    let read: Vec<DeadDestination> = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    read.into_iter().filter(|d| d.until > now).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_message_put_back_for_a_busy_destination_comes_back_when_a_slot_is_free() {
        let d = Destinations::new(1, BTreeMap::new());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        d.on_free(tx);
        let t0 = Instant::now();
        let Admission::Go(slot) = d.admit("x.test", t0) else {
            panic!("the first goes")
        };
        assert!(matches!(d.admit("x.test", t0), Admission::Busy));
        let id = kurier_spool::QueueId::generate();
        d.wait_for("x.test", &id);
        d.wait_for("x.test", &id);
        assert!(rx.try_recv().is_err());
        drop(slot);
        assert_eq!(rx.try_recv().ok(), Some(id));
        assert!(rx.try_recv().is_err(), "once in line");
    }

    #[test]
    fn a_rate_spaces_deliveries_and_applies_per_destination() {
        let rates = BTreeMap::from([("Slow.test".to_string(), 6), ("*".to_string(), 0)]);
        let d = Destinations::new(4, rates);
        let t0 = Instant::now();
        let Admission::Go(first) = d.admit("slow.test", t0) else {
            panic!("the first goes")
        };
        drop(first);
        // 6 a minute: one each 10 s, even with free connections.
        assert!(matches!(
            d.admit("slow.test", t0 + Duration::from_secs(9)),
            Admission::Busy
        ));
        assert!(matches!(d.admit("fast.test", t0), Admission::Go(_)));
        assert!(matches!(d.admit("fast.test", t0), Admission::Go(_)));
        assert!(matches!(
            d.admit("slow.test", t0 + Duration::from_secs(10)),
            Admission::Go(_)
        ));
        assert!(matches!(
            d.admit("slow.test", t0 + Duration::from_secs(11)),
            Admission::Busy
        ));
    }

    fn go(a: Admission) -> Slot {
        match a {
            Admission::Go(s) => s,
            other => panic!("not admitted: {other:?}"),
        }
    }

    #[test]
    fn a_full_destination_says_busy_and_others_go_on() {
        let d = Destinations::new(2, BTreeMap::new());
        let now = Instant::now();
        let a = go(d.admit("slow.test", now));
        let _b = go(d.admit("slow.test", now));
        assert!(matches!(d.admit("slow.test", now), Admission::Busy));
        // Another destination is not held by this one's slots.
        let _c = go(d.admit("fast.test", now));
        drop(a);
        let _a = go(d.admit("slow.test", now));
    }

    #[test]
    fn dead_after_failures_then_probed_once_and_alive_again() {
        let d = Destinations::new(4, BTreeMap::new());
        let t0 = Instant::now();
        for i in 0..DEAD_AFTER {
            let s = go(d.admit("dead.test", t0));
            s.unreachable("timed out waiting for the greeting", t0);
            assert_eq!(d.dead(t0).is_empty(), i + 1 < DEAD_AFTER);
        }
        let Admission::Dead { left, reason } = d.admit("dead.test", t0) else {
            panic!("not dead");
        };
        assert_eq!(
            (left, reason.as_str()),
            (DEAD_FIRST, "timed out waiting for the greeting")
        );
        assert_eq!(d.dead(t0)[0].failures, DEAD_AFTER);
        // Others are not affected.
        drop(go(d.admit("alive.test", t0)));
        // After its time, one probe; meanwhile the rest are still deferred.
        let later = t0 + DEAD_FIRST;
        let probe = go(d.admit("dead.test", later));
        assert!(matches!(
            d.admit("dead.test", later),
            Admission::Dead { .. }
        ));
        // The probe fails: dead twice as long.
        probe.unreachable("connection refused", later);
        drop(probe);
        let Admission::Dead { left, .. } = d.admit("dead.test", later) else {
            panic!("not dead again");
        };
        assert_eq!(left, DEAD_FIRST * 2);
        // The next probe gets through: alive, and forgotten once idle.
        let again = later + DEAD_FIRST * 2;
        let probe = go(d.admit("dead.test", again));
        probe.reached();
        drop(probe);
        assert!(d.dead(again).is_empty());
        drop(go(d.admit("dead.test", again)));
        assert!(d.lock().is_empty());
    }

    #[test]
    fn the_dead_time_stops_growing() {
        let d = Destinations::new(1, BTreeMap::new());
        let mut now = Instant::now();
        for _ in 0..40 {
            if let Admission::Go(s) = d.admit("x.test", now) {
                s.unreachable("refused", now);
            }
            now += DEAD_MAX;
        }
        assert!(d.dead(now - DEAD_MAX)[0].left <= DEAD_MAX);
    }

    #[test]
    fn dead_destinations_are_published_and_read_back_while_dead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.json");
        let d = Destinations::new(1, BTreeMap::new());
        let now = Instant::now();
        for _ in 0..DEAD_AFTER {
            if let Admission::Go(s) = d.admit("mx.dead.test", now) {
                s.unreachable("no greeting", now);
            }
        }
        publish(&path, &d.dead(now));
        let t = crate::time::unix_now();
        let read = published(&path, t);
        assert_eq!(read.len(), 1);
        assert_eq!(
            (read[0].name.as_str(), read[0].reason.as_str()),
            ("mx.dead.test", "no greeting")
        );
        assert!(published(&path, t + DEAD_FIRST.as_secs() + 1).is_empty());
        publish(&path, &[]);
        assert!(!path.exists());
    }
}
