//! How long the next read from a client may take. Pure: the driver passes the time.
//!
//! - Commands: the whole command must arrive within `command_timeout` of our last reply
//!   (RFC 5321 §4.5.3.2.7), not per read, so one byte at a time does not keep it open.
//! - Message data: each read within `data_timeout`, and the whole message within
//!   `data_timeout` plus its size at `min_data_rate` (the deadline grows as data arrives,
//!   so a large message on a slow line is fine, a trickle is not).
//! - Under stress (near the connection limit) each of these is cut to
//!   [`crate::load::STRESS_TIMEOUT`].

use std::time::{Duration, Instant};

use crate::config::Limits;
use crate::load::STRESS_TIMEOUT;

/// The timing state of one session's reads.
#[derive(Debug)]
pub(super) struct ReadClock {
    last_reply: Instant,
    /// When the current message data began and how many octets have come since.
    data: Option<(Instant, u64)>,
}

impl ReadClock {
    /// A session that has just been greeted at `now`.
    pub(super) fn new(now: Instant) -> ReadClock {
        ReadClock {
            last_reply: now,
            data: None,
        }
    }

    /// We wrote replies at `now`: the time for the next command starts.
    pub(super) fn replied(&mut self, now: Instant) {
        self.last_reply = now;
    }

    /// The session did not read for `d` (it waited for memory): that time is not the
    /// client's.
    pub(super) fn paused(&mut self, d: Duration) {
        self.last_reply += d;
        if let Some((started, _)) = &mut self.data {
            *started += d;
        }
    }

    /// `n` octets were read (counted toward the data rate while in message data).
    pub(super) fn read(&mut self, n: usize) {
        if let Some((_, octets)) = &mut self.data {
            *octets = octets.saturating_add(n as u64);
        }
    }

    /// The time the next read may take, from `now`.
    pub(super) fn timeout(
        &mut self,
        now: Instant,
        in_data: bool,
        limits: &Limits,
        stressed: bool,
    ) -> Duration {
        let cut = |d: Duration| if stressed { d.min(STRESS_TIMEOUT) } else { d };
        if !in_data {
            self.data = None;
            let deadline = self.last_reply + cut(limits.command_timeout);
            return deadline.saturating_duration_since(now);
        }
        let (started, octets) = *self.data.get_or_insert((now, 0));
        let idle = cut(limits.data_timeout);
        if limits.min_data_rate == 0 {
            return idle;
        }
        let allowed = Duration::from_secs_f64(octets as f64 / limits.min_data_rate as f64);
        let deadline = started + idle + allowed;
        idle.min(deadline.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(300),
            min_data_rate: 500,
            ..Limits::default()
        }
    }

    #[test]
    fn commands_are_timed_from_the_last_reply() {
        let t0 = Instant::now();
        let mut c = ReadClock::new(t0);
        let l = limits();
        let s = |n| Duration::from_secs(n);
        assert_eq!(c.timeout(t0, false, &l, false), s(300));
        // A byte now and then does not move the deadline; a reply does.
        c.read(1);
        assert_eq!(c.timeout(t0 + s(200), false, &l, false), s(100));
        c.replied(t0 + s(200));
        assert_eq!(c.timeout(t0 + s(200), false, &l, false), s(300));
        // Under stress: 10 s from the last reply.
        assert_eq!(c.timeout(t0 + s(204), false, &l, true), s(6));
    }

    #[test]
    fn message_data_must_keep_a_minimum_rate() {
        let t0 = Instant::now();
        let mut c = ReadClock::new(t0);
        let l = limits();
        let s = |n| Duration::from_secs(n);
        assert_eq!(c.timeout(t0, true, &l, false), s(300));
        // A trickler: one byte every 10 s; after 290 s it has 10 s left, then none.
        for i in 1..=29 {
            c.read(1);
            let left = c.timeout(t0 + s(10 * i), true, &l, false);
            assert!(
                left <= s(300 - 10 * i) + Duration::from_millis(100),
                "{i}: {left:?}"
            );
        }
        c.read(1);
        assert!(c.timeout(t0 + s(300), true, &l, false) < Duration::from_millis(100));
        // A large message at a fair rate: 10 MB in 200 s is far inside its deadline.
        let mut c = ReadClock::new(t0);
        c.timeout(t0, true, &l, false);
        c.read(10_000_000);
        assert_eq!(c.timeout(t0 + s(200), true, &l, false), s(300));
        // Back to commands: the next message starts its own clock.
        c.timeout(t0 + s(201), false, &l, false);
        c.timeout(t0 + s(400), true, &l, false);
        assert_eq!(c.timeout(t0 + s(650), true, &l, false), s(50));
        // No minimum rate: only the idle time.
        let l = Limits {
            min_data_rate: 0,
            ..limits()
        };
        let mut c = ReadClock::new(t0);
        c.timeout(t0, true, &l, false);
        assert_eq!(c.timeout(t0 + s(1000), true, &l, false), s(300));
        assert_eq!(c.timeout(t0 + s(1000), true, &l, true), STRESS_TIMEOUT);
    }
}
