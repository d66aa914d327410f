//! Limits per client address that hold across connections: AUTH failures (a password guesser
//! that reconnects after every closed session still runs into the limit), and connections and
//! messages per minute.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The client a per-address limit counts: an IPv4 address as it is, an IPv6 address by its
/// /64 (RFC 4291 §2.5.4: one site's subnet, from which a client rotates addresses at will),
/// an IPv4-mapped IPv6 address as the IPv4 address.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Failed AUTH attempts per client (see [`client_key`]) within a window.
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
        let ip = client_key(ip);
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

    /// Records a failed attempt (or one in flight: see [`AuthThrottle::forgive`]).
    pub fn failed(&self, ip: IpAddr) {
        let ip = client_key(ip);
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

    /// Takes back one recorded attempt: an attempt is counted as failed from its start, so
    /// that many parallel attempts from one client run into the limit before their
    /// passwords are checked, and forgiven when it did not fail.
    pub fn forgive(&self, ip: IpAddr) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = f.get_mut(&client_key(ip)) {
            e.0 = e.0.saturating_sub(1);
        }
    }
}

/// Events per client (see [`client_key`]) per minute (fixed one-minute windows). A limit of 0 means off.
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
        let ip = client_key(ip);
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

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let r = RateLimit::per_minute(2);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap_or(IpAddr::from([0; 4]));
        let b: IpAddr = "2001:db8:1:2:ffff::9"
            .parse()
            .unwrap_or(IpAddr::from([0; 4]));
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(IpAddr::from([0; 4]));
        assert!(r.allow(a) && r.allow(b));
        assert!(
            !r.allow(b),
            "a rotated address of the same /64 is the same client"
        );
        assert!(r.allow(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap_or(IpAddr::from([0; 4]));
        assert_eq!(client_key(mapped), IpAddr::from([192, 0, 2, 1]));
        let t = AuthThrottle::new(1, Duration::from_secs(60));
        t.failed(a);
        t.forgive(b);
        assert!(t.blocked(a).is_none(), "forgiven");
        t.failed(a);
        assert!(t.blocked(b).is_some());
    }
}
