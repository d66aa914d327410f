//! Limits per client address that hold across connections: AUTH failures (a password guesser
//! that reconnects after every closed session still runs into the limit), and connections and
//! messages per minute.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed AUTH attempts per client address within a window.
pub struct AuthThrottle {
    limit: u32,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl AuthThrottle {
    /// `limit` failures per `window`.
    pub fn new(limit: u32, window: Duration) -> AuthThrottle {
        AuthThrottle {
            limit,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// When `ip` is over the limit: the delay to impose before refusing (it grows with every
    /// further attempt, up to 10 s). `None` when the attempt may be checked.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let (count, since) = *f.get(&ip)?;
        if since.elapsed() > self.window {
            f.remove(&ip);
            return None;
        }
        (count >= self.limit).then(|| {
            let over = count - self.limit;
            f.insert(ip, (count + 1, since));
            Duration::from_millis(250u64.saturating_mul(1 << over.min(6)))
                .min(Duration::from_secs(10))
        })
    }

    /// Records a failed attempt.
    pub fn failed(&self, ip: IpAddr) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        // Old entries go when the map grows, so it cannot be used to exhaust memory.
        if f.len() > 100_000 {
            let window = self.window;
            f.retain(|_, (_, since)| since.elapsed() <= window);
        }
        let e = f.entry(ip).or_insert((0, Instant::now()));
        if e.1.elapsed() > self.window {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }
}

/// Events per client address per minute (fixed one-minute windows). A limit of 0 means off.
pub struct RateLimit {
    limit: u32,
    counts: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl RateLimit {
    /// At most `limit` events per minute per address (0: unlimited).
    pub fn per_minute(limit: u32) -> RateLimit {
        RateLimit {
            limit,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Counts an event; false when it is over the limit.
    pub fn allow(&self, ip: IpAddr) -> bool {
        if self.limit == 0 {
            return true;
        }
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.len() > 100_000 {
            c.retain(|_, (_, since)| since.elapsed() < Duration::from_secs(60));
        }
        let e = c.entry(ip).or_insert((0, Instant::now()));
        if e.1.elapsed() >= Duration::from_secs(60) {
            *e = (0, Instant::now());
        }
        e.0 += 1;
        e.0 <= self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_per_address() {
        let r = RateLimit::per_minute(2);
        let ip: IpAddr = [192, 0, 2, 1].into();
        assert!(r.allow(ip) && r.allow(ip));
        assert!(!r.allow(ip));
        assert!(r.allow([192, 0, 2, 2].into()));
        let off = RateLimit::per_minute(0);
        assert!((0..1000).all(|_| off.allow(ip)));
    }

    #[test]
    fn limit_then_growing_delay() {
        let t = AuthThrottle::new(3, Duration::from_secs(60));
        let ip: IpAddr = [192, 0, 2, 1].into();
        let other: IpAddr = [192, 0, 2, 2].into();
        for _ in 0..3 {
            assert_eq!(t.blocked(ip), None);
            t.failed(ip);
        }
        let first = t.blocked(ip);
        let second = t.blocked(ip);
        assert!(first.is_some() && second > first, "{first:?} {second:?}");
        assert_eq!(t.blocked(other), None, "other clients are not affected");
    }
}
