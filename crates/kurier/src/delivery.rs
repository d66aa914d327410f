//! The delivery engine: takes queued messages, delivers local recipients into their Maildir
//! and remote ones over SMTP, retries temporary failures on a schedule, gives up after the
//! maximum lifetime, and reports back to the sender with DSNs (RFC 3464).
//!
//! Accepted messages arrive as [`Job`]s (envelope and bytes, so nothing is read back from
//! disk on the hot path); messages found in the spool at startup and retries are loaded from
//! the spool. Each recipient's outcome is recorded in the spool before the message leaves it,
//! so a crash at any point repeats a delivery at worst, never loses one. A per-message lock
//! keeps deliveries and admin commands (`kurier queue …`) from touching a message at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kurier_smtp::client::{OutboundRecipient, OutboundTransaction};
use kurier_smtp::{Mailbox, Notify, OriginalRecipient, Ret};
use kurier_spool::{Envelope, QueueId, RecipientState, RecipientStatus, Spool, SpoolError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::directory::{Directory, Resolution};
use crate::dsn::{self, DsnAction, DsnRecipient};
use crate::maildir;
use crate::outbound::{Outbound, RemoteOutcome};

/// A message to deliver.
#[derive(Debug)]
pub struct Job {
    /// Its envelope.
    pub envelope: Envelope,
    /// Its bytes, when the receiver still has them.
    pub body: Option<Arc<Vec<u8>>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn rfc2822(unix: u64) -> String {
    chrono::DateTime::from_timestamp(i64::try_from(unix).unwrap_or(0), 0)
        .unwrap_or_default()
        .to_rfc2822()
}

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

/// Handle for submitting jobs and running queue commands; cheap to clone.
#[derive(Clone)]
pub struct DeliveryHandle {
    jobs: Option<mpsc::Sender<Job>>,
    engine: Arc<Engine>,
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

    /// The engine, for queue commands.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }
}

/// What the delivery engine needs.
pub struct Setup {
    /// The queue.
    pub spool: Spool,
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
}

/// The engine's shared state.
pub struct Engine {
    spool: Spool,
    directory: Arc<Directory>,
    config: Arc<Config>,
    outbound: Arc<Outbound>,
    signers: Arc<crate::dkim::Signers>,
    retries: Mutex<BTreeMap<u64, Vec<QueueId>>>,
    locks: Mutex<HashMap<QueueId, Arc<tokio::sync::Mutex<()>>>>,
    enabled: bool,
}

/// Starts the workers and the retry timer, and queues what recovery found. With
/// `delivery.enabled = false` nothing is delivered (messages stay queued).
pub fn start(setup: Setup, stop: CancellationToken, tracker: &TaskTracker) -> DeliveryHandle {
    let Setup {
        spool,
        directory,
        config,
        outbound,
        signers,
        recovered,
    } = setup;
    let enabled = config.delivery.enabled;
    let workers = config.delivery.workers;
    let engine = Arc::new(Engine {
        spool,
        directory,
        config,
        outbound,
        signers,
        retries: Mutex::new(BTreeMap::new()),
        locks: Mutex::new(HashMap::new()),
        enabled,
    });
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
                let job = tokio::select! {
                    job = async { rx.lock().await.recv().await } => job,
                    _ = stop.cancelled() => None,
                };
                let Some(job) = job else { break };
                engine.process(job).await;
            }
        });
    }
    // Recovered messages: due ones now, the others at their time.
    let now = unix_now();
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
    let (timer_engine, timer_tx) = (engine.clone(), tx.clone());
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => break,
            }
            timer_engine.outbound.sweep();
            for id in timer_engine.due(unix_now()) {
                let e = timer_engine.clone();
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
    DeliveryHandle {
        jobs: Some(tx),
        engine,
    }
}

/// A recipient's RFC 3461 NOTIFY from its stored flags.
fn notify_of(r: &RecipientState) -> Option<Notify> {
    r.notify.map(|n| Notify {
        never: n.never,
        success: n.success,
        failure: n.failure,
        delay: n.delay,
    })
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
        let mut ids: Vec<QueueId> = due.into_values().flatten().collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// The lock that serializes work on one message.
    fn lock_for(&self, id: &QueueId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(id.clone()).or_default().clone()
    }

    /// True when delivery runs (queue commands that need it say so otherwise).
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    async fn process(self: &Arc<Self>, job: Job) {
        let id = job.envelope.id.clone();
        let lock = self.lock_for(&id);
        let _guard = lock.lock().await;
        // Always work on the spool's current state (a queue command may have changed it).
        let engine = self.clone();
        let fresh_body = job.body;
        let loaded = tokio::task::spawn_blocking(move || match fresh_body {
            Some(b) => engine.spool.envelope(&id).map(|e| (e, b)),
            None => engine.spool.load(&id).map(|(e, b)| (e, Arc::new(b))),
        })
        .await;
        let (mut env, body) = match loaded {
            Ok(Ok(x)) => x,
            Ok(Err(SpoolError::NotFound(_))) => return,
            Ok(Err(e)) => {
                tracing::error!(queue_id = %job.envelope.id, error = %e, "cannot load queued message");
                return;
            }
            Err(_) => return,
        };
        if env.hold {
            return;
        }
        let now = unix_now();
        let engine = self.clone();
        let local_body = body.clone();
        env = match tokio::task::spawn_blocking(move || {
            engine.deliver_local(&mut env, &local_body, now);
            env
        })
        .await
        {
            Ok(e) => e,
            Err(_) => return,
        };
        self.deliver_remote(&mut env, &body, now).await;
        self.expire(&mut env, unix_now());
        let engine = self.clone();
        let _ = tokio::task::spawn_blocking(move || engine.finish(env, &body)).await;
    }

    /// Local recipients into their Maildir (blocking I/O). Also used before the 250 for
    /// all-local messages, which then never touch the spool.
    pub fn deliver_local(&self, env: &mut Envelope, body: &[u8], now: u64) {
        let sender = if env.sender.is_empty() {
            "<>".to_string()
        } else {
            format!("<{}>", env.sender)
        };
        let id = env.id.clone();
        // Several recipient addresses can lead to one mailbox (aliases): one copy each.
        let mut delivered_to: HashSet<String> = HashSet::new();
        let schedule = &self.config.delivery.retry;
        for r in env
            .recipients
            .iter_mut()
            .filter(|r| r.is_pending() && r.local && r.next_attempt <= now)
        {
            r.attempts += 1;
            let mailbox = match Mailbox::parse(&r.address) {
                Ok(m) => m,
                Err(e) => {
                    r.status = failed(now, "5.1.3", format!("x-kurier; bad address: {e}"), None);
                    continue;
                }
            };
            let quarantines = self
                .config
                .authentication
                .policy(mailbox.domain().as_str())
                .dmarc_quarantine;
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
                        // A DMARC failure that was not refused: the recipient's Junk folder
                        // (Maildir++ ".Junk"), if its domain's policy quarantines.
                        let folder = if env.junk && quarantines {
                            maildir::junk_folder(&self.directory.maildir(t))
                        } else {
                            self.directory.maildir(t)
                        };
                        match maildir::deliver(&folder, &self.config.hostname, &headers, body) {
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
                            r.record_attempt(format!(
                                "{}: delivered to {}",
                                rfc2822(now),
                                paths.join(" ")
                            ));
                            r.status = RecipientStatus::Delivered {
                                at: now,
                                detail: paths.join(" "),
                                relayed: false,
                            }
                        }
                        Some(e) => {
                            r.next_attempt = next_attempt(now, r.attempts, schedule);
                            tracing::warn!(queue_id = %id, rcpt = %r.address, error = %e, attempts = r.attempts, "local delivery deferred");
                            r.record_attempt(format!(
                                "{}: local delivery failed: {e}",
                                rfc2822(now)
                            ));
                            r.last_error = Some(format!("x-kurier; local delivery failed: {e}"));
                            r.last_status = Some("4.3.0".into());
                        }
                    }
                }
                Resolution::Unknown => {
                    let reason = format!("x-kurier; <{}>: mailbox no longer exists", r.address);
                    tracing::warn!(queue_id = %id, rcpt = %r.address, "local mailbox no longer exists");
                    r.status = failed(now, "5.1.1", reason, None);
                }
                Resolution::Remote => {
                    // The domain stopped being local after the message was accepted.
                    r.local = false;
                    r.attempts -= 1;
                }
            }
        }
    }

    /// Remote recipients over SMTP, one transaction per destination domain.
    async fn deliver_remote(&self, env: &mut Envelope, body: &[u8], now: u64) {
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, r) in env.recipients.iter().enumerate() {
            if r.is_pending()
                && !r.local
                && r.next_attempt <= now
                && let Some((_, domain)) = r.address.rsplit_once('@')
            {
                groups
                    .entry(domain.to_ascii_lowercase())
                    .or_default()
                    .push(i);
            }
        }
        let schedule = self.config.delivery.retry.clone();
        for (domain, indexes) in groups {
            let recipients: Vec<OutboundRecipient> = indexes
                .iter()
                .map(|&i| {
                    let r = &env.recipients[i];
                    OutboundRecipient {
                        address: r.address.clone(),
                        notify: notify_of(r),
                        orcpt: r.orcpt.as_ref().and_then(|o| {
                            let (t, a) = o.split_once(';')?;
                            Some(OriginalRecipient {
                                addr_type: t.to_string(),
                                address: a.to_string(),
                            })
                        }),
                    }
                })
                .collect();
            let smtputf8 = env.smtputf8
                || !env.sender.is_ascii()
                || recipients.iter().any(|r| !r.address.is_ascii());
            let tx = OutboundTransaction {
                from: env.sender.clone(),
                recipients,
                size: body.len() as u64,
                eight_bit: env.eight_bit || !body.is_ascii(),
                smtputf8,
                ret: match env.ret.as_deref() {
                    Some("HDRS") => Some(Ret::Hdrs),
                    Some("FULL") => Some(Ret::Full),
                    _ => None,
                },
                envid: env.envid.clone(),
            };
            let results = self.outbound.deliver(&domain, &tx, body).await;
            let done = unix_now();
            for (&i, outcome) in indexes.iter().zip(results) {
                let r = &mut env.recipients[i];
                r.attempts += 1;
                r.record_attempt(format!("{}: {}", rfc2822(done), describe(&outcome)));
                match outcome {
                    RemoteOutcome::Delivered { mta, reply, dsn } => {
                        tracing::info!(queue_id = %env.id, rcpt = %r.address, mta = %mta, reply = %reply, "delivered");
                        r.status = RecipientStatus::Delivered {
                            at: done,
                            detail: format!("{mta}: {reply}"),
                            relayed: !dsn,
                        };
                    }
                    RemoteOutcome::Failed {
                        permanent: true,
                        status,
                        diagnostic,
                        mta,
                    } => {
                        let reason = format!("{}; {}", diagnostic.0, diagnostic.1);
                        tracing::info!(queue_id = %env.id, rcpt = %r.address, mta = mta.as_deref().unwrap_or("-"), reason = %reason, "delivery failed");
                        r.status = failed(done, &status, reason, mta);
                    }
                    RemoteOutcome::Failed {
                        permanent: false,
                        status,
                        diagnostic,
                        mta,
                    } => {
                        r.next_attempt = next_attempt(done, r.attempts, &schedule);
                        let reason = format!("{}; {}", diagnostic.0, diagnostic.1);
                        tracing::info!(queue_id = %env.id, rcpt = %r.address, mta = mta.as_deref().unwrap_or("-"), reason = %reason, retry_in_s = r.next_attempt.saturating_sub(done), "delivery deferred");
                        r.last_error = Some(reason);
                        r.last_status = Some(status);
                        r.last_mta = mta;
                    }
                }
            }
        }
    }

    /// Recipients still pending after the maximum lifetime fail (RFC 5321 §4.5.4.1).
    fn expire(&self, env: &mut Envelope, now: u64) {
        let lifetime = self.config.delivery.max_lifetime.as_secs();
        if now < env.received_at.saturating_add(lifetime) {
            return;
        }
        for r in env.recipients.iter_mut().filter(|r| r.is_pending()) {
            let last = r
                .last_error
                .clone()
                .unwrap_or_else(|| "no attempt succeeded".into());
            let reason = format!(
                "x-kurier; message expired after {} in the queue; last error: {last}",
                humantime::format_duration(self.config.delivery.max_lifetime)
            );
            let status = r.last_status.clone().unwrap_or_else(|| "4.4.7".into());
            r.status = failed(now, &status, reason, r.last_mta.clone());
        }
    }

    /// Reports (DSNs), then records the state: removes a finished message, or writes its
    /// progress and books its next attempt (blocking I/O).
    fn finish(&self, mut env: Envelope, body: &[u8]) {
        self.report(&mut env, body);
        let id = env.id.clone();
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
        if let Err(e) = self.spool.update(&env) {
            tracing::error!(queue_id = %id, error = %e, "cannot record delivery progress");
        }
        if let Some(t) = env
            .recipients
            .iter()
            .filter(|r| r.is_pending())
            .map(|r| r.next_attempt)
            .min()
        {
            self.schedule(id, t);
        }
    }

    /// Sends the DSN this pass calls for, if any (RFC 3461 §5: failures, delays, and successes
    /// when asked). Never for the null sender: a bounce is never bounced.
    fn report(&self, env: &mut Envelope, body: &[u8]) {
        let now = unix_now();
        let mut blocks = Vec::new();
        let warn_delay = !env.delay_warned
            && now
                >= env
                    .received_at
                    .saturating_add(self.config.delivery.delay_warning.as_secs())
            && env.recipients.iter().any(RecipientState::is_pending);
        let retry_until = rfc2822(
            env.received_at
                .saturating_add(self.config.delivery.max_lifetime.as_secs()),
        );
        for r in env.recipients.iter_mut() {
            let notify = r.notify;
            let wants = |f: fn(&kurier_spool::NotifyFlags) -> bool, default: bool| match &notify {
                Some(n) if n.never => false,
                Some(n) => f(n),
                None => default,
            };
            let (action, status, remote_mta, diagnostic, last_attempt) = match &r.status {
                RecipientStatus::Failed {
                    at,
                    reason,
                    status,
                    remote_mta,
                } if !r.notified => {
                    r.notified = true;
                    if !wants(|n| n.failure, true) {
                        continue;
                    }
                    (
                        DsnAction::Failed,
                        status.clone(),
                        remote_mta.clone(),
                        Some(reason.clone()),
                        Some(*at),
                    )
                }
                RecipientStatus::Delivered {
                    at,
                    detail,
                    relayed,
                } if !r.notified => {
                    r.notified = true;
                    // A DSN-capable next hop reports success itself (RFC 3461 §5.2.2).
                    if !wants(|n| n.success, false) || (!r.local && !relayed) {
                        continue;
                    }
                    let action = if *relayed {
                        DsnAction::Relayed
                    } else {
                        DsnAction::Delivered
                    };
                    let mta = if r.local {
                        None
                    } else {
                        detail.split(": ").next().map(str::to_string)
                    };
                    (action, "2.0.0".to_string(), mta, None, Some(*at))
                }
                RecipientStatus::Pending if warn_delay && wants(|n| n.delay, true) => (
                    DsnAction::Delayed,
                    r.last_status.clone().unwrap_or_else(|| "4.0.0".into()),
                    r.last_mta.clone(),
                    r.last_error.clone(),
                    None,
                ),
                _ => continue,
            };
            let diagnostic = diagnostic.map(|d| match d.split_once("; ") {
                Some((k, t)) => (k.to_string(), t.to_string()),
                None => ("x-kurier".to_string(), d),
            });
            blocks.push(DsnRecipient {
                final_recipient: r.address.clone(),
                original_recipient: r.orcpt.clone(),
                action,
                status,
                remote_mta: remote_mta.map(|m| m.split(' ').next().unwrap_or_default().to_string()),
                diagnostic,
                last_attempt: last_attempt.map(rfc2822),
                will_retry_until: (action == DsnAction::Delayed).then(|| retry_until.clone()),
            });
        }
        if warn_delay {
            env.delay_warned = true;
        }
        if blocks.is_empty() {
            return;
        }
        if env.sender.is_empty() {
            tracing::warn!(queue_id = %env.id, "not reporting on a message from the null sender (a bounce is never bounced)");
            return;
        }
        let Ok(to) = Mailbox::parse(&env.sender) else {
            tracing::warn!(queue_id = %env.id, sender = %env.sender, "cannot report to an unparsable sender");
            return;
        };
        let id = QueueId::generate();
        let message_id = format!("{id}@{}", self.config.hostname);
        let date = rfc2822(now);
        let report = dsn::build(&dsn::DsnInput {
            reporting_mta: &self.config.hostname,
            to: &env.sender,
            envid: env.envid.as_deref(),
            arrival_date: &rfc2822(env.received_at),
            date: &date,
            message_id: &message_id,
            recipients: &blocks,
            original: body,
            headers_only: env.ret.as_deref() == Some("HDRS"),
            utf8: env.smtputf8,
        });
        let signature = self.signers.sign(&self.config.hostname, &report);
        let report = [signature.as_bytes(), &report].concat();
        let local = self.directory.is_local_domain(to.domain());
        let dsn_env = Envelope {
            id: id.clone(),
            received_at: now,
            sender: String::new(),
            recipients: vec![RecipientState::new(env.sender.clone(), local)],
            size: report.len() as u64,
            eight_bit: !report.is_ascii(),
            smtputf8: env.smtputf8,
            ret: None,
            envid: None,
            client_ip: String::new(),
            helo: String::new(),
            auth_user: None,
            hold: false,
            delay_warned: false,
            junk: false,
        };
        match self.spool.commit(&dsn_env, &report) {
            Ok(()) => {
                let kinds: Vec<&str> = blocks
                    .iter()
                    .map(|b| match b.action {
                        DsnAction::Failed => "failed",
                        DsnAction::Delayed => "delayed",
                        DsnAction::Delivered => "delivered",
                        DsnAction::Relayed => "relayed",
                    })
                    .collect();
                tracing::info!(queue_id = %env.id, dsn_id = %id, to = %env.sender, actions = %kinds.join(","), "delivery status notification queued");
                self.schedule(id, now);
            }
            Err(e) => {
                tracing::error!(queue_id = %env.id, error = %e, "cannot queue the delivery status notification")
            }
        }
    }
}

/// One line for the attempt history.
fn describe(outcome: &RemoteOutcome) -> String {
    match outcome {
        RemoteOutcome::Delivered { mta, reply, .. } => format!("delivered to {mta}: {reply}"),
        RemoteOutcome::Failed {
            permanent,
            diagnostic,
            mta,
            ..
        } => format!(
            "{} {}{}",
            if *permanent { "failed" } else { "deferred" },
            mta.as_ref()
                .map(|m| format!("by {m}: "))
                .unwrap_or_default(),
            diagnostic.1
        ),
    }
}

/// Queue commands carried out by the running server (`kurier queue …`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "command", content = "id", rename_all = "lowercase")]
pub enum QueueCommand {
    /// Retry now: one message, or all with `None`.
    Flush(Option<QueueId>),
    /// Keep a message from being delivered.
    Hold(QueueId),
    /// Undo hold and retry now.
    Release(QueueId),
    /// Remove a message without notice.
    Delete(QueueId),
    /// Give up on the pending recipients and tell the sender (DSN).
    Bounce(QueueId),
}

impl Engine {
    /// Runs a queue command under the message's lock, so it never races a delivery.
    pub async fn command(self: &Arc<Self>, cmd: QueueCommand) -> Result<String, String> {
        match cmd {
            QueueCommand::Flush(None) => {
                let e = self.clone();
                let ids = tokio::task::spawn_blocking(move || e.spool.ids())
                    .await
                    .map_err(|e| e.to_string())?;
                let ids = ids.map_err(|e| e.to_string())?;
                let mut n = 0;
                for id in ids {
                    if self
                        .change(&id, QueueCommand::Flush(Some(id.clone())))
                        .await
                        .is_ok()
                    {
                        n += 1;
                    }
                }
                Ok(format!(
                    "{n} message(s) scheduled for immediate delivery{}",
                    self.disabled_note()
                ))
            }
            QueueCommand::Flush(Some(ref id))
            | QueueCommand::Hold(ref id)
            | QueueCommand::Release(ref id)
            | QueueCommand::Delete(ref id)
            | QueueCommand::Bounce(ref id) => {
                let id = id.clone();
                self.change(&id, cmd).await
            }
        }
    }

    fn disabled_note(&self) -> &'static str {
        if self.enabled {
            ""
        } else {
            " (but delivery is disabled in the config)"
        }
    }

    async fn change(self: &Arc<Self>, id: &QueueId, cmd: QueueCommand) -> Result<String, String> {
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let engine = self.clone();
        let id2 = id.clone();
        let result = tokio::task::spawn_blocking(move || engine.change_locked(&id2, &cmd))
            .await
            .map_err(|e| e.to_string())?;
        if let Ok((_, true)) = &result {
            self.schedule(id.clone(), unix_now());
        }
        result.map(|(m, _)| m)
    }

    /// Applies a command; returns the message and whether to deliver now (blocking I/O).
    fn change_locked(&self, id: &QueueId, cmd: &QueueCommand) -> Result<(String, bool), String> {
        let not_found = |e: SpoolError| match e {
            SpoolError::NotFound(_) => format!("no queued message {id}"),
            e => e.to_string(),
        };
        match cmd {
            QueueCommand::Delete(_) => {
                self.spool.remove(id).map_err(not_found)?;
                tracing::info!(queue_id = %id, "deleted by the administrator");
                Ok((format!("{id} deleted"), false))
            }
            QueueCommand::Bounce(_) => {
                let (mut env, body) = self.spool.load(id).map_err(not_found)?;
                let now = unix_now();
                for r in env.recipients.iter_mut().filter(|r| r.is_pending()) {
                    r.record_attempt(format!(
                        "{}: returned to sender by the administrator",
                        rfc2822(now)
                    ));
                    r.status = failed(
                        now,
                        "5.0.0",
                        "x-kurier; returned to sender by the administrator".into(),
                        None,
                    );
                }
                tracing::info!(queue_id = %id, "bounced by the administrator");
                self.finish(env, &body);
                Ok((format!("{id} returned to sender"), false))
            }
            QueueCommand::Flush(_) | QueueCommand::Hold(_) | QueueCommand::Release(_) => {
                let mut env = self.spool.envelope(id).map_err(not_found)?;
                let (message, deliver) = match cmd {
                    QueueCommand::Hold(_) => {
                        env.hold = true;
                        (format!("{id} held"), false)
                    }
                    QueueCommand::Release(_) => {
                        env.hold = false;
                        (format!("{id} released{}", self.disabled_note()), true)
                    }
                    _ if env.hold => return Err(format!("{id} is on hold (release it first)")),
                    _ => (
                        format!(
                            "{id} scheduled for immediate delivery{}",
                            self.disabled_note()
                        ),
                        true,
                    ),
                };
                if deliver {
                    for r in env.recipients.iter_mut().filter(|r| r.is_pending()) {
                        r.next_attempt = 0;
                    }
                }
                self.spool.update(&env).map_err(|e| e.to_string())?;
                Ok((message, deliver))
            }
        }
    }
}

fn failed(at: u64, status: &str, reason: String, remote_mta: Option<String>) -> RecipientStatus {
    RecipientStatus::Failed {
        at,
        reason,
        status: status.to_string(),
        remote_mta,
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
