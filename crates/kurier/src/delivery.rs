//! Delivery of queued mail: local recipients into their Maildir.
//!
//! Accepted messages arrive as [`Job`]s (envelope and bytes, so nothing is read back from
//! disk on the hot path); messages found in the spool at startup and retries are loaded from
//! the spool. Each recipient's outcome is recorded in the spool before the message leaves it,
//! so a crash at any point repeats a delivery at worst, never loses one.
//!
//! Remote recipients (relayed by authenticated users) stay queued for the outbound engine.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kurier_smtp::Mailbox;
use kurier_spool::{Envelope, QueueId, RecipientStatus, Spool, SpoolError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::directory::{Directory, Resolution};
use crate::maildir;

/// A message to deliver.
#[derive(Debug)]
pub struct Job {
    /// Its envelope.
    pub envelope: Envelope,
    /// Its bytes, when the receiver still has them.
    pub body: Option<Arc<Vec<u8>>>,
}

/// Retry delays for local delivery failures (disk full, permissions): attempt n waits
/// `RETRY_DELAYS[n-1]`, the last one repeating.
const RETRY_DELAYS: [u64; 5] = [60, 300, 900, 1800, 3600];

/// The time of the next attempt after `attempts` failed ones.
pub fn next_attempt(now: u64, attempts: u32) -> u64 {
    let i = (attempts.max(1) as usize - 1).min(RETRY_DELAYS.len() - 1);
    now + RETRY_DELAYS[i]
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Handle for submitting jobs; cheap to clone.
#[derive(Clone, Debug)]
pub struct DeliveryHandle {
    jobs: Option<mpsc::Sender<Job>>,
}

impl DeliveryHandle {
    /// Hands a newly accepted message to the delivery workers. Waits when they are behind
    /// (back-pressure on the receiving sessions instead of unbounded memory).
    pub async fn submit(&self, envelope: Envelope, body: Arc<Vec<u8>>) {
        if let Some(tx) = &self.jobs {
            let _ = tx
                .send(Job {
                    envelope,
                    body: Some(body),
                })
                .await;
        }
    }
}

struct Engine {
    spool: Spool,
    directory: Arc<Directory>,
    hostname: String,
    retries: Mutex<BTreeMap<u64, Vec<QueueId>>>,
}

/// What the delivery engine needs.
pub struct Setup {
    /// The queue.
    pub spool: Spool,
    /// Users and mailboxes.
    pub directory: Arc<Directory>,
    /// Our host name (Maildir file names).
    pub hostname: String,
    /// Parallel deliveries.
    pub workers: usize,
    /// False: deliver nothing, keep everything queued.
    pub enabled: bool,
    /// Messages found in the spool at startup.
    pub recovered: Vec<Envelope>,
}

/// Starts the workers and the retry timer, and queues what recovery found. With
/// `enabled == false` nothing is delivered (messages stay queued).
pub fn start(setup: Setup, stop: CancellationToken, tracker: &TaskTracker) -> DeliveryHandle {
    let Setup {
        spool,
        directory,
        hostname,
        workers,
        enabled,
        recovered,
    } = setup;
    if !enabled {
        tracing::warn!(
            queued = recovered.len(),
            "delivery is disabled in the config: mail stays queued"
        );
        return DeliveryHandle { jobs: None };
    }
    let (tx, rx) = mpsc::channel::<Job>(256);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let engine = Arc::new(Engine {
        spool,
        directory,
        hostname,
        retries: Mutex::new(BTreeMap::new()),
    });
    for _ in 0..workers {
        let (engine, rx, stop) = (engine.clone(), rx.clone(), stop.clone());
        tracker.spawn(async move {
            loop {
                let job = tokio::select! {
                    job = async { rx.lock().await.recv().await } => job,
                    _ = stop.cancelled() => None,
                };
                let Some(job) = job else { break };
                let e = engine.clone();
                let _ = tokio::task::spawn_blocking(move || e.deliver(job)).await;
            }
        });
    }
    // Recovered messages: due ones now, the others at their time.
    let now = unix_now();
    let mut due = Vec::new();
    for env in recovered {
        if env.hold {
            continue;
        }
        match env
            .recipients
            .iter()
            .filter(|r| r.is_pending() && r.local)
            .map(|r| r.next_attempt)
            .min()
        {
            Some(t) if t > now => engine.schedule(env.id.clone(), t),
            Some(_) => due.push(env),
            None => {}
        }
    }
    let feeder = tx.clone();
    tracker.spawn(async move {
        for envelope in due {
            if feeder
                .send(Job {
                    envelope,
                    body: None,
                })
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let (engine, timer_tx) = (engine.clone(), tx.clone());
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => break,
            }
            for id in engine.due(unix_now()) {
                let e = engine.clone();
                let loaded = tokio::task::spawn_blocking(move || e.spool.envelope(&id)).await;
                if let Ok(Ok(envelope)) = loaded
                    && timer_tx
                        .send(Job {
                            envelope,
                            body: None,
                        })
                        .await
                        .is_err()
                {
                    return;
                }
            }
        }
    });
    DeliveryHandle { jobs: Some(tx) }
}

impl Engine {
    fn schedule(&self, id: QueueId, at: u64) {
        let mut r = self.retries.lock().unwrap_or_else(|p| p.into_inner());
        r.entry(at).or_default().push(id);
    }

    fn due(&self, now: u64) -> Vec<QueueId> {
        let mut r = self.retries.lock().unwrap_or_else(|p| p.into_inner());
        let later = r.split_off(&(now + 1));
        let due = std::mem::replace(&mut *r, later);
        due.into_values().flatten().collect()
    }

    /// Delivers the local recipients of one message and records the outcome (blocking I/O).
    fn deliver(&self, job: Job) {
        let id = job.envelope.id.clone();
        let (mut env, body) = match job.body {
            Some(b) => (job.envelope, b),
            None => match self.spool.load(&id) {
                Ok((e, b)) => (e, Arc::new(b)),
                Err(SpoolError::NotFound(_)) => return,
                Err(e) => {
                    tracing::error!(queue_id = %id, error = %e, "cannot load queued message");
                    return;
                }
            },
        };
        if env.hold {
            return;
        }
        let now = unix_now();
        let sender = if env.sender.is_empty() {
            "<>".to_string()
        } else {
            format!("<{}>", env.sender)
        };
        let mut changed = false;
        // Several recipient addresses can lead to one mailbox (aliases): one copy each.
        let mut delivered_to: HashSet<String> = HashSet::new();
        for r in env
            .recipients
            .iter_mut()
            .filter(|r| r.is_pending() && r.local && r.next_attempt <= now)
        {
            changed = true;
            r.attempts += 1;
            let mailbox = match Mailbox::parse(&r.address) {
                Ok(m) => m,
                Err(e) => {
                    r.status = RecipientStatus::Failed {
                        at: now,
                        reason: format!("550 5.1.3 bad address: {e}"),
                    };
                    continue;
                }
            };
            match self.directory.resolve(&mailbox) {
                Resolution::Local(targets) => {
                    let mut paths = Vec::new();
                    let mut error = None;
                    for t in &targets {
                        if !delivered_to.insert(crate::directory::address_key(t)) {
                            paths.push(format!("(same message already delivered to {t})"));
                            continue;
                        }
                        // RFC 5321 §4.4: the final delivery adds Return-Path.
                        let headers = format!("Return-Path: {sender}\nDelivered-To: {t}\n");
                        match maildir::deliver(
                            &self.directory.maildir(t),
                            &self.hostname,
                            &headers,
                            &body,
                        ) {
                            Ok(p) => {
                                tracing::info!(queue_id = %id, rcpt = %r.address, mailbox = %t, path = %p.display(), "delivered");
                                paths.push(p.display().to_string());
                            }
                            Err(e) => {
                                error = Some(format!("{t}: {e}"));
                                break;
                            }
                        }
                    }
                    match error {
                        None => {
                            r.status = RecipientStatus::Delivered {
                                at: now,
                                detail: paths.join(" "),
                            }
                        }
                        Some(e) => {
                            r.next_attempt = next_attempt(now, r.attempts);
                            tracing::warn!(queue_id = %id, rcpt = %r.address, error = %e, attempts = r.attempts, "local delivery deferred");
                            r.last_error = Some(format!("451 4.3.0 local delivery failed: {e}"));
                        }
                    }
                }
                Resolution::Unknown => {
                    let reason = format!("550 5.1.1 <{}>: mailbox no longer exists", r.address);
                    tracing::error!(queue_id = %id, rcpt = %r.address, reason = %reason, "delivery failed permanently (DSN generation is not implemented yet)");
                    r.status = RecipientStatus::Failed { at: now, reason };
                }
                Resolution::Remote => {
                    // The domain stopped being local after the message was accepted.
                    r.local = false;
                }
            }
        }
        if env.is_done() {
            match self.spool.remove(&id) {
                Ok(()) | Err(SpoolError::NotFound(_)) => {
                    tracing::debug!(queue_id = %id, "removed from queue")
                }
                Err(e) => {
                    tracing::error!(queue_id = %id, error = %e, "cannot remove delivered message")
                }
            }
            return;
        }
        if changed && let Err(e) = self.spool.update(&env) {
            tracing::error!(queue_id = %id, error = %e, "cannot record delivery progress");
        }
        if let Some(t) = env
            .recipients
            .iter()
            .filter(|r| r.is_pending() && r.local)
            .map(|r| r.next_attempt)
            .min()
        {
            self.schedule(id, t);
        } else if env.recipients.iter().any(|r| r.is_pending()) {
            tracing::info!(queue_id = %id, "remote recipients stay queued (outbound delivery is not implemented yet)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_schedule() {
        assert_eq!(next_attempt(100, 1), 160);
        assert_eq!(next_attempt(100, 2), 400);
        assert_eq!(next_attempt(100, 5), 3700);
        assert_eq!(next_attempt(100, 50), 3700);
        assert_eq!(next_attempt(100, 0), 160);
    }
}
