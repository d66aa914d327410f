//! Accepting connections: the per-minute rate, the connection limits, and the short 421 for
//! clients over a limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kurier_smtp::{Reply, Role, codes};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::inbound::{self, Inbound};
use crate::load::Load;
use crate::maillog;
use crate::policy::throttle::{RateLimit, client_key};
use crate::shutdown::Shutdown;

/// How long a refused client gets to read its 421 before the connection is dropped.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Counts connections in total and per client address (RFC 5321 §4.5.3.2 lets a server
/// refuse with 421 when it is too busy).
pub(super) struct Limiter {
    total: usize,
    per_ip: usize,
    state: Mutex<(usize, HashMap<IpAddr, usize>)>,
    /// The count the sessions read (stress mode).
    load: Arc<Load>,
}

struct Permit {
    limiter: Arc<Limiter>,
    ip: IpAddr,
}

impl Limiter {
    pub(super) fn new(total: usize, per_ip: usize, load: Arc<Load>) -> Arc<Limiter> {
        Arc::new(Limiter {
            total,
            per_ip,
            state: Mutex::new((0, HashMap::new())),
            load,
        })
    }

    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Reply> {
        let ip = client_key(ip);
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.0 >= self.total {
            return Err(Reply::new(
                421,
                codes::SECURITY_TEMP,
                "Too many connections, try again later",
            ));
        }
        let n = s.1.entry(ip).or_insert(0);
        if *n >= self.per_ip {
            return Err(Reply::new(
                421,
                codes::SECURITY_TEMP,
                "Too many connections from your address, try again later",
            ));
        }
        *n += 1;
        s.0 += 1;
        self.load.opened();
        Ok(Permit {
            limiter: self.clone(),
            ip,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.limiter.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0 = s.0.saturating_sub(1);
        self.limiter.load.closed();
        if let Some(n) = s.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.1.remove(&self.ip);
            }
        }
    }
}

/// Accepts connections until the stop signal and starts a session for each.
pub(super) async fn accept_loop(
    listener: TcpListener,
    role: Role,
    inbound: Arc<Inbound>,
    limiter: Arc<Limiter>,
    shutdown: Shutdown,
    tracker: TaskTracker,
) {
    let connection_rate = RateLimit::per_minute(inbound.config.limits.connections_per_minute);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.stop.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !connection_rate.allow(peer.ip()) {
            let reply = Reply::new(
                421,
                codes::SECURITY_TEMP,
                "Too many connections per minute from your address, try again later",
            );
            maillog::connection_refused(peer.ip(), role, &reply);
            tracker.spawn(refuse(stream, reply));
            continue;
        }
        match limiter.acquire(peer.ip()) {
            Ok(permit) => {
                let (inbound, shutdown) = (inbound.clone(), shutdown.clone());
                tracker.spawn(async move {
                    inbound::serve(stream, peer, role, inbound, shutdown).await;
                    drop(permit);
                });
            }
            Err(reply) => {
                maillog::connection_refused(peer.ip(), role, &reply);
                tracker.spawn(refuse(stream, reply));
            }
        }
    }
}

/// Answers a client that is not served with one reply and closes (RFC 5321 §3.1 allows a
/// 554 or 421 greeting instead of 220).
pub(super) async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, reply: Reply) {
    let _ = tokio::time::timeout(REFUSE_TIMEOUT, async {
        let _ = stream.write_all(&reply.to_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
