//! The delivery wing: takes queued messages, delivers local recipients into their Maildir
//! and remote ones over SMTP, retries temporary failures on a schedule, gives up after the
//! maximum lifetime, and reports back to the sender with DSNs (RFC 3464).
//!
//! Accepted messages arrive as [`Job`]s (envelope and, up to [`CARRIED_BODY`], bytes, so
//! nothing is read back from disk on the hot path); messages found in the spool at startup,
//! retries and large messages are read from their queue files, in chunks as they are
//! delivered (never whole in memory). Each recipient's outcome is recorded in the spool before the message leaves it,
//! so a crash at any point repeats a delivery at worst, never loses one. A per-message lock
//! keeps deliveries and admin commands (`kurier queue …`) from touching a message at once.

//!
//! - [`scheduler`]: when each message is due, the retry schedule, the per-message locks.
//! - [`local`]: local recipients into their Maildirs ([`maildir`]), with aliases and Junk.
//! - [`remote`]: remote recipients over SMTP ([`smtp`]), one transaction per domain; what
//!   each attempt did per recipient ([`outcome`]).
//! - [`bounce`]: expiry and the DSNs of RFC 3464 ([`dsn`]).
//! - [`admin`]: the queue commands of `kurier queue`, under the per-message lock.
//!
//! Two doors lead in: [`DeliveryHandle::submit`] for a message already in the spool (it
//! never waits), and [`DeliveryHandle::deliver_now`] for all-local mail that goes straight
//! to the Maildirs before the `250` and never touches the spool.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kurier_spool::{Envelope, MessageData, QueueId, SpoolError, Store};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::directory::Directory;
use crate::history::{History, Left};
use crate::maillog;
use crate::time::Clock;

pub mod admin;
pub mod bounce;
pub mod destination;
pub mod dsn;
pub mod local;
pub mod maildir;
pub mod outcome;
pub mod remote;
pub mod scheduler;
#[cfg(test)]
mod scheduling_tests;
pub mod smtp;
pub mod suppress;
#[cfg(test)]
mod tests;

use smtp::Outbound;

/// A message to deliver.
#[derive(Debug)]
pub struct Job {
    /// Its envelope.
    pub envelope: Envelope,
    /// Its bytes, when the receiver still has them.
    pub body: Option<Arc<Vec<u8>>>,
    /// The engine's count of queue commands when the envelope was current (a message just
    /// accepted): while no command has run since, the spool need not be read again.
    pub as_of: Option<u64>,
}

/// Handle for handing messages to delivery and running queue commands; cheap to clone.
#[derive(Clone)]
pub struct DeliveryHandle {
    jobs: Option<mpsc::Sender<Job>>,
    engine: Arc<Engine>,
}

impl DeliveryHandle {
    /// Hands a message that is already durable in the spool to the delivery workers. Never
    /// waits: when the workers' queue is full, the message is booked for now in the
    /// scheduler (which keeps only its id, so memory stays bounded) and loaded from the
    /// spool when a worker is free. `body`: the message's bytes, when they are in memory.
    pub fn submit(&self, envelope: Envelope, body: Option<Arc<Vec<u8>>>) {
        let Some(tx) = &self.jobs else {
            return;
        };
        let job = Job {
            envelope,
            body: body.and_then(carried),
            as_of: Some(self.engine.commands.load(Ordering::SeqCst)),
        };
        if let Err(mpsc::error::TrySendError::Full(job)) = tx.try_send(job) {
            self.engine
                .schedule(job.envelope.id, self.engine.clock.now());
        }
    }

    /// Delivers an all-local message into its recipients' Maildirs now (blocking I/O off the
    /// reactor) and returns the envelope with each recipient's outcome; `None` if the
    /// delivery task failed. The caller answers `250` only when every recipient is delivered,
    /// and spools the message otherwise.
    pub async fn deliver_now(&self, envelope: Envelope, body: Arc<Vec<u8>>) -> Option<Envelope> {
        let engine = self.engine.clone();
        let now = engine.clock.now();
        tokio::task::spawn_blocking(move || {
            let mut env = envelope;
            engine.deliver_local(&mut env, &MessageData::shared(body), now);
            // All delivered before the 250: the message never enters the queue, so this is
            // where it leaves it.
            if env.is_done() {
                engine.history.record(&env, Left::Done, engine.clock.now());
            }
            env
        })
        .await
        .ok()
    }

    /// True when delivery runs (`delivery.enabled`).
    pub fn is_enabled(&self) -> bool {
        self.engine.is_enabled()
    }

    /// The engine, for queue commands.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }
}

/// The largest message a [`Job`] carries in memory. A larger one is read back from the
/// spool by the worker that takes it, so the jobs waiting in the channel (up to its 256)
/// hold at most 64 MiB of message data, however large the messages and however long the
/// workers are busy; the small ones, nearly all mail, still skip the read.
pub const CARRIED_BODY: usize = 256 * 1024;

/// The body a job carries: the message's bytes when they are small enough.
fn carried(body: Arc<Vec<u8>>) -> Option<Arc<Vec<u8>>> {
    (body.len() <= CARRIED_BODY).then_some(body)
}

/// What the delivery engine needs.
pub struct Setup {
    /// The queue.
    pub spool: Arc<dyn Store>,
    /// Where local copies are written.
    pub local: Arc<dyn maildir::LocalDelivery>,
    /// The time.
    pub clock: Arc<dyn Clock>,
    /// Users and mailboxes.
    pub directory: Arc<Directory>,
    /// The configuration (host name, schedule, limits).
    pub config: Arc<Config>,
    /// Outbound SMTP.
    pub outbound: Arc<Outbound>,
    /// DKIM keys (DSNs are signed as the host name's domain when it has one).
    pub signers: Arc<crate::dkim::Signers>,
    /// Messages found in the spool at startup.
    pub recovered: Vec<Envelope>,
    /// Where the dead destinations are shown to `kurier queue list`.
    pub dead_destinations: std::path::PathBuf,
    /// Where messages that leave the queue are recorded.
    pub history: Arc<History>,
    /// Addresses that do not exist, per local sender.
    pub suppressions: Arc<suppress::SuppressionList>,
}

/// The engine's shared state.
pub struct Engine {
    spool: Arc<dyn Store>,
    local: Arc<dyn maildir::LocalDelivery>,
    clock: Arc<dyn Clock>,
    directory: Arc<Directory>,
    config: Arc<Config>,
    outbound: Arc<Outbound>,
    signers: Arc<crate::dkim::Signers>,
    retries: Mutex<BTreeMap<u64, Vec<QueueId>>>,
    locks: Mutex<HashMap<QueueId, Arc<tokio::sync::Mutex<()>>>>,
    enabled: bool,
    dead_destinations: std::path::PathBuf,
    history: Arc<History>,
    suppressions: Arc<suppress::SuppressionList>,
    /// Queue commands run so far (see [`Job::as_of`]).
    commands: AtomicU64,
}

/// Starts the workers and the retry timer, and queues what recovery found. With
/// `delivery.enabled = false` nothing is delivered (messages stay queued).
pub fn start(setup: Setup, stop: CancellationToken, tracker: &TaskTracker) -> DeliveryHandle {
    let (engine, recovered) = Engine::new(setup);
    let engine = Arc::new(engine);
    let enabled = engine.enabled;
    let workers = engine.config.delivery.workers;
    if !enabled {
        tracing::warn!(
            queued = recovered.len(),
            "delivery is disabled in the config: mail stays queued"
        );
        return DeliveryHandle { jobs: None, engine };
    }
    let (tx, rx) = mpsc::channel::<Job>(256);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    for _ in 0..workers {
        let (engine, rx, stop) = (engine.clone(), rx.clone(), stop.clone());
        tracker.spawn(async move {
            loop {
                // Stopping wins over a waiting job: it stays queued for the next start.
                let job = tokio::select! {
                    biased;
                    _ = stop.cancelled() => None,
                    job = async { rx.lock().await.recv().await } => job,
                };
                let Some(job) = job else { break };
                engine.process(job).await;
            }
        });
    }
    // Recovered messages: due ones now, the others at their time.
    let now = engine.clock.now();
    for env in recovered {
        if env.hold {
            continue;
        }
        let at = env
            .recipients
            .iter()
            .filter(|r| r.is_pending())
            .map(|r| r.next_attempt)
            .min();
        if let Some(t) = at {
            engine.schedule(env.id.clone(), t.max(now));
        }
    }
    // A message put back because its destination was busy comes back as soon as one of
    // the destination's connections is free.
    let (free_tx, mut free_rx) = mpsc::unbounded_channel::<QueueId>();
    engine.outbound.on_free(free_tx);
    let (free_engine, free_jobs, free_stop) = (engine.clone(), tx.clone(), stop.clone());
    tracker.spawn(async move {
        loop {
            let id = tokio::select! {
                id = free_rx.recv() => id,
                _ = free_stop.cancelled() => None,
            };
            let Some(id) = id else { break };
            let e = free_engine.clone();
            let loaded = tokio::task::spawn_blocking(move || e.spool.envelope(&id)).await;
            if let Ok(Ok(envelope)) = loaded {
                let job = Job {
                    envelope,
                    body: None,
                    as_of: None,
                };
                if free_jobs.send(job).await.is_err() {
                    break;
                }
            }
        }
    });
    let (timer_engine, timer_tx) = (engine.clone(), tx.clone());
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        // What `kurier queue list` shows of the destinations found dead, kept up to date.
        let dead_file = timer_engine.dead_destinations.clone();
        destination::publish(&dead_file, &[]);
        let mut shown: Vec<(String, u32)> = Vec::new();
        'timer: loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => break,
            }
            timer_engine.outbound.sweep();
            let dead = timer_engine.outbound.dead_destinations();
            let now_shown: Vec<(String, u32)> =
                dead.iter().map(|d| (d.name.clone(), d.failures)).collect();
            if now_shown != shown {
                shown = now_shown;
                let file = dead_file.clone();
                let _ =
                    tokio::task::spawn_blocking(move || destination::publish(&file, &dead)).await;
            }
            for id in timer_engine.due(timer_engine.clock.now()) {
                let e = timer_engine.clone();
                let loaded = tokio::task::spawn_blocking(move || e.spool.envelope(&id)).await;
                if let Ok(Ok(envelope)) = loaded
                    && timer_tx
                        .send(Job {
                            envelope,
                            body: None,
                            as_of: None,
                        })
                        .await
                        .is_err()
                {
                    break 'timer;
                }
            }
        }
        // Stopping: no new delivery starts (those still connecting give up, untried), and
        // pooled connections get their QUIT and close_notify.
        timer_engine.outbound.stop_starting();
        timer_engine.outbound.close_all().await;
        destination::publish(&dead_file, &[]);
    });
    DeliveryHandle {
        jobs: Some(tx),
        engine,
    }
}

impl Engine {
    /// The engine without its workers (what [`start`] runs; tests drive it directly), and the
    /// recovered messages to schedule.
    pub fn new(setup: Setup) -> (Engine, Vec<Envelope>) {
        let Setup {
            spool,
            local,
            clock,
            directory,
            config,
            outbound,
            signers,
            recovered,
            dead_destinations,
            history,
            suppressions,
        } = setup;
        let engine = Engine {
            spool,
            local,
            clock,
            enabled: config.delivery.enabled,
            directory,
            config,
            outbound,
            signers,
            retries: Mutex::new(BTreeMap::new()),
            locks: Mutex::new(HashMap::new()),
            dead_destinations,
            history,
            suppressions,
            commands: AtomicU64::new(0),
        };
        (engine, recovered)
    }

    /// True when delivery runs (queue commands that need it say so otherwise).
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// One delivery pass over a message: local recipients, remote ones, expiry, reports,
    /// and the recorded state.
    pub async fn process(self: &Arc<Self>, job: Job) {
        let id = job.envelope.id.clone();
        let lock = self.lock_for(&id);
        let _guard = lock.lock().await;
        // Work on the spool's current state (a queue command may have changed it), unless
        // the job's is current: a message just accepted, and no command ran since.
        let engine = self.clone();
        let fresh_body = job.body;
        let current = job.as_of == Some(self.commands.load(Ordering::SeqCst));
        let fresh_envelope = job.envelope.clone();
        // A large message is read from its queue file in chunks as it is delivered.
        let loaded = match (fresh_body, current) {
            (Some(b), true) => Ok(Ok((fresh_envelope, MessageData::shared(b)))),
            (fresh_body, _) => {
                tokio::task::spawn_blocking(move || match fresh_body {
                    Some(b) => engine
                        .spool
                        .envelope(&id)
                        .map(|e| (e, MessageData::shared(b))),
                    None => engine.spool.message(&id),
                })
                .await
            }
        };
        let (mut env, body) = match loaded {
            Ok(Ok(x)) => x,
            Ok(Err(SpoolError::NotFound(_))) => return,
            Ok(Err(e)) => {
                maillog::queued_message_unreadable(&job.envelope.id, &e);
                return;
            }
            Err(_) => return,
        };
        if env.hold {
            return;
        }
        let now = self.clock.now();
        let before = env.clone();
        let engine = self.clone();
        let local_body = body.clone();
        let local_due = env
            .recipients
            .iter()
            .any(|r| r.is_pending() && r.local && r.next_attempt <= now);
        env = match local_due {
            false => env,
            true => match tokio::task::spawn_blocking(move || {
                engine.deliver_local(&mut env, &local_body, now);
                env
            })
            .await
            {
                Ok(e) => e,
                Err(_) => return,
            },
        };
        self.deliver_remote(&mut env, &body, now).await;
        self.expire(&mut env, self.clock.now());
        let engine = self.clone();
        let _ = tokio::task::spawn_blocking(move || engine.finish_after(env, &body, Some(&before)))
            .await;
    }
}
