//! `kurier queue list` and `kurier queue show`: read straight from the spool files, which are
//! only ever replaced atomically, so a reader sees a consistent state while the server runs.

use anyhow::bail;
use clap::Subcommand;
use kurier_spool::{
    Attempt, AttemptResult, Failure, QueueId, RecipientState, RecipientStatus, Spool, SpoolError,
};

use crate::config::Config;
use crate::control::{self, QueueCommand as Q, QueueError, not_found};
use crate::data_dir::DataDir;
use crate::history::History;
use crate::time::{rfc5322, unix_now};

#[derive(Subcommand)]
pub enum QueueCmd {
    /// List queued messages with their recipients' state.
    List {
        /// One line per destination instead (next hop: a route's host or the recipient
        /// domain): messages, recipients, the oldest, the last error, dead or not.
        #[arg(long)]
        destinations: bool,
    },
    /// Show one message: envelope, recipients, every recorded attempt.
    Show {
        /// The queue id.
        id: String,
    },
    /// Retry now (one message, or all with --all).
    Flush {
        /// The queue id.
        id: Option<String>,
        /// Retry every queued message.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Keep a message from being delivered until released.
    Hold {
        /// The queue id.
        id: String,
    },
    /// Release a held message and retry it now.
    Release {
        /// The queue id.
        id: String,
    },
    /// Remove a message without notifying anyone.
    Delete {
        /// The queue id.
        id: String,
    },
    /// Give up on a message's pending recipients and send the sender a DSN.
    Bounce {
        /// The queue id.
        id: String,
    },
    /// What happened to messages, also after they left the queue (kept for
    /// delivery.history_keep): reception, each attempt, reports, the outcome.
    History(super::history::HistoryArgs),
    /// The suppression list: addresses a remote server said do not exist, per local sender.
    Suppress {
        #[command(subcommand)]
        cmd: super::suppress::SuppressCmd,
    },
}

/// Carries out a `kurier queue` command and prints its answer.
pub fn run(cmd: &QueueCmd, config: &Config, data_dir: &DataDir) -> anyhow::Result<()> {
    let history = History::configured(config, data_dir);
    let run = |q: Q| control::run(data_dir, q, &history);
    let out = match cmd {
        QueueCmd::History(args) => super::history::run(args, data_dir)?,
        QueueCmd::Suppress { cmd } => super::suppress::run(cmd, data_dir)?,
        QueueCmd::List {
            destinations: false,
        } => list(data_dir)?,
        QueueCmd::List { destinations: true } => by_destination(config, data_dir)?,
        QueueCmd::Show { id } => show(data_dir, &parse_id(id)?)?,
        QueueCmd::Flush { id: Some(id), .. } => run(Q::Flush(Some(parse_id(id)?)))?,
        QueueCmd::Flush {
            id: None,
            all: true,
        } => run(Q::Flush(None))?,
        QueueCmd::Flush {
            id: None,
            all: false,
        } => bail!("name a queue id, or use --all"),
        QueueCmd::Hold { id } => run(Q::Hold(parse_id(id)?))?,
        QueueCmd::Release { id } => run(Q::Release(parse_id(id)?))?,
        QueueCmd::Delete { id } => run(Q::Delete(parse_id(id)?))?,
        QueueCmd::Bounce { id } => run(Q::Bounce(parse_id(id)?))?,
    };
    println!("{}", printable(out.trim_end()));
    Ok(())
}

/// The output with control characters other than line ends escaped: envelope values come
/// from strangers (ENVID, ORCPT, HELO, remote replies) and must not drive the admin's
/// terminal (an ESC sequence could rewrite what is shown).
pub(super) fn printable(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\n' => "\n".to_string(),
            c if c.is_control() => c.escape_default().to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// Parses a queue id given on the command line.
pub fn parse_id(s: &str) -> Result<QueueId, QueueError> {
    QueueId::parse(s).ok_or_else(|| QueueError::BadId(s.to_string()))
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn status_line(r: &RecipientState, now: u64) -> String {
    match &r.status {
        RecipientStatus::Pending => {
            let next = if r.next_attempt <= now {
                "due now".to_string()
            } else {
                format!("next attempt in {}", age(r.next_attempt - now))
            };
            let last = r
                .last_failure
                .as_ref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default();
            format!("pending, {} attempt(s), {next}{last}", r.attempts)
        }
        RecipientStatus::Delivered { delivered, .. } => delivered.to_string(),
        RecipientStatus::Failed { failure, .. } => format!("failed: {failure}"),
    }
}

/// `deferred by mx.example.org [192.0.2.1]: 451 4.3.0 …`, or the local error.
fn failure_line(verb: &str, f: &Failure) -> String {
    match &f.remote {
        Some(host) => format!("{verb} by {host}: {}", f.text),
        None => format!("{verb}: {f}"),
    }
}

/// One line of a recipient's history.
fn attempt_line(a: &Attempt) -> String {
    let what = match &a.result {
        AttemptResult::Delivered { delivered } => delivered.to_string(),
        AttemptResult::Deferred { failure } => failure_line("deferred", failure),
        AttemptResult::Failed { failure } => failure_line("failed", failure),
        AttemptResult::Note { text } => text.clone(),
        AttemptResult::Recorded { text } => return text.clone(),
    };
    format!("{}: {what}", rfc5322(a.at))
}

/// `kurier queue list`: a column header, then one block per message, oldest first.
pub fn list(data_dir: &DataDir) -> Result<String, QueueError> {
    let spool = Spool::attach(data_dir.spool());
    let now = unix_now();
    let mut out = String::new();
    let ids = match spool.ids() {
        Ok(ids) => ids,
        Err(SpoolError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Vec::new()
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(first) = ids.first() {
        let width = first.as_str().len();
        out.push_str(&format!(
            "{:<width$}  {:>4}  {:>8}  Sender, then each recipient and its state\n",
            "Queue id", "Age", "Size"
        ));
    }
    for id in &ids {
        let env = match spool.envelope(id) {
            Ok(e) => e,
            Err(SpoolError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        out.push_str(&format!(
            "{id}  {:>4}  {:>8}  {}{}\n",
            age(now.saturating_sub(env.received_at)),
            env.size,
            env.sender,
            if env.hold { "  [held]" } else { "" }
        ));
        for r in &env.recipients {
            out.push_str(&format!("    {}  {}\n", r.address, status_line(r, now)));
        }
    }
    out.push_str(&format!("{} message(s) in the queue\n", ids.len()));
    // What the running server found dead: its mail waits without being tried.
    for d in crate::delivery::destination::published(&data_dir.dead_destinations(), now) {
        out.push_str(&printable(&format!(
            "destination {} not answering ({} failures, last: {}); next try in {} s\n",
            d.name,
            d.failures,
            d.reason,
            d.until.saturating_sub(now)
        )));
    }
    Ok(out)
}

/// `kurier queue list --destinations`: pending recipients counted by destination.
pub fn by_destination(config: &Config, data_dir: &DataDir) -> Result<String, QueueError> {
    #[derive(Default)]
    struct Count {
        messages: usize,
        recipients: usize,
        oldest: u64,
        last_error: Option<String>,
    }
    let spool = Spool::attach(data_dir.spool());
    let now = unix_now();
    let ids = match spool.ids() {
        Ok(ids) => ids,
        Err(SpoolError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Vec::new()
        }
        Err(e) => return Err(e.into()),
    };
    let mut counts: std::collections::BTreeMap<String, Count> = Default::default();
    for id in &ids {
        let env = match spool.envelope(id) {
            Ok(e) => e,
            Err(SpoolError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut seen = std::collections::BTreeSet::new();
        for r in env.recipients.iter().filter(|r| r.is_pending()) {
            let name = match r.local {
                true => "(local mailboxes)".to_string(),
                false => crate::config::destination_of(&config.routes, r.address.domain().as_str()),
            };
            let c = counts.entry(name.clone()).or_default();
            c.recipients += 1;
            if seen.insert(name) {
                c.messages += 1;
                c.oldest = c.oldest.max(now.saturating_sub(env.received_at));
            }
            if let Some(f) = &r.last_failure {
                c.last_error = Some(f.to_string());
            }
        }
    }
    let dead = crate::delivery::destination::published(&data_dir.dead_destinations(), now);
    let mut out = format!(
        "{:<30}  {:>8}  {:>10}  {:>6}  State\n",
        "Destination", "Messages", "Recipients", "Oldest"
    );
    for (name, c) in &counts {
        let state = match dead.iter().find(|d| d.name == *name) {
            Some(d) => format!(
                "dead ({} failures, last: {}); next try in {} s",
                d.failures,
                d.reason,
                d.until.saturating_sub(now)
            ),
            None => match &c.last_error {
                Some(e) => format!("last error: {e}"),
                None => "waiting".into(),
            },
        };
        out.push_str(&format!(
            "{name:<30}  {:>8}  {:>10}  {:>6}  {state}\n",
            c.messages,
            c.recipients,
            age(c.oldest)
        ));
    }
    out.push_str(&format!("{} destination(s)\n", counts.len()));
    Ok(out)
}

/// `kurier queue show ID`: the envelope and every recorded attempt.
pub fn show(data_dir: &DataDir, id: &QueueId) -> Result<String, QueueError> {
    let spool = Spool::attach(data_dir.spool());
    let env = spool.envelope(id).map_err(|e| not_found(e, id))?;
    let now = unix_now();
    let mut out = format!(
        "Queue id:    {id}\nArrived:     {} ({} ago)\nSender:      {}\nSize:        {} octets\nClient:      {} (HELO {}){}\n",
        rfc5322(env.received_at),
        age(now.saturating_sub(env.received_at)),
        env.sender,
        env.size,
        env.client_ip
            .map_or_else(|| "local".to_string(), |ip| ip.to_string()),
        if env.helo.is_empty() { "-" } else { &env.helo },
        env.auth_user
            .as_ref()
            .map(|u| format!(", authenticated as {u}"))
            .unwrap_or_default(),
    );
    let mut flags = Vec::new();
    if env.hold {
        flags.push("held".to_string());
    }
    if env.eight_bit {
        flags.push("8BITMIME".to_string());
    }
    if env.smtputf8 {
        flags.push("SMTPUTF8".to_string());
    }
    match env.ret {
        Some(kurier_smtp::Ret::Full) => flags.push("RET=FULL".to_string()),
        Some(kurier_smtp::Ret::Hdrs) => flags.push("RET=HDRS".to_string()),
        None => {}
    }
    if let Some(envid) = &env.envid {
        flags.push(format!("ENVID={envid}"));
    }
    if env.delay_warned {
        flags.push("delay warning sent".to_string());
    }
    if !flags.is_empty() {
        out.push_str(&format!("Flags:       {}\n", flags.join(", ")));
    }
    out.push_str("Recipients:\n");
    for r in &env.recipients {
        out.push_str(&format!(
            "  {} ({})\n    {}\n",
            r.address,
            if r.local { "local" } else { "remote" },
            status_line(r, now)
        ));
        if let Some(o) = &r.orcpt {
            out.push_str(&format!("    ORCPT {};{}\n", o.addr_type, o.address));
        }
        if let Some(n) = &r.notify {
            out.push_str(&format!("    NOTIFY {}\n", notify_list(n)));
        }
        for a in &r.history {
            out.push_str(&format!("    attempt: {}\n", attempt_line(a)));
        }
    }
    Ok(out)
}

/// NOTIFY as written in RCPT (RFC 3461 §4.1).
fn notify_list(n: &kurier_smtp::Notify) -> String {
    if n.never {
        return "NEVER".to_string();
    }
    let items: Vec<&str> = [
        (n.success, "SUCCESS"),
        (n.failure, "FAILURE"),
        (n.delay, "DELAY"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    items.join(",")
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_never_reach_the_terminal() {
        assert_eq!(
            printable("ENVID=a\u{1b}[2Jb\r\nX\tY\u{7f}\nnext"),
            "ENVID=a\\u{1b}[2Jb\\r\nX\\tY\\u{7f}\nnext"
        );
    }
}
