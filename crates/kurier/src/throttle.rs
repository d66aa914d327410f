//! AUTH failure throttling per client address, across connections: a password guesser that
//! reconnects after every closed session still runs into the limit.

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

#[cfg(test)]
mod tests {
    use super::*;

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
