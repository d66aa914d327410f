//! `kurier queue list` and `kurier queue show`: read straight from the spool files, which are
//! only ever replaced atomically, so a reader sees a consistent state while the server runs.

use anyhow::bail;
use clap::Subcommand;
use kurier_spool::{QueueId, RecipientStatus, Spool, SpoolError};

use crate::control::{self, QueueCommand as Q, QueueError, not_found};
use crate::data_dir::DataDir;
use crate::time::{rfc5322, unix_now};

#[derive(Subcommand)]
pub enum QueueCmd {
    /// List queued messages with their recipients' state.
    List,
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
}

/// Carries out a `kurier queue` command and prints its answer.
pub fn run(cmd: &QueueCmd, data_dir: &DataDir) -> anyhow::Result<()> {
    let out = match cmd {
        QueueCmd::List => list(data_dir)?,
        QueueCmd::Show { id } => show(data_dir, &parse_id(id)?)?,
        QueueCmd::Flush { id: Some(id), .. } => {
            control::run(data_dir, Q::Flush(Some(parse_id(id)?)))?
        }
        QueueCmd::Flush {
            id: None,
            all: true,
        } => control::run(data_dir, Q::Flush(None))?,
        QueueCmd::Flush {
            id: None,
            all: false,
        } => bail!("name a queue id, or use --all"),
        QueueCmd::Hold { id } => control::run(data_dir, Q::Hold(parse_id(id)?))?,
        QueueCmd::Release { id } => control::run(data_dir, Q::Release(parse_id(id)?))?,
        QueueCmd::Delete { id } => control::run(data_dir, Q::Delete(parse_id(id)?))?,
        QueueCmd::Bounce { id } => control::run(data_dir, Q::Bounce(parse_id(id)?))?,
    };
    println!("{}", out.trim_end());
    Ok(())
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

fn status_line(r: &kurier_spool::RecipientState, now: u64) -> String {
    match &r.status {
        RecipientStatus::Pending => {
            let next = if r.next_attempt <= now {
                "due now".to_string()
            } else {
                format!("next attempt in {}", age(r.next_attempt - now))
            };
            let last = r
                .last_error
                .as_ref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default();
            format!("pending, {} attempt(s), {next}{last}", r.attempts)
        }
        RecipientStatus::Delivered { detail, .. } => format!("delivered: {detail}"),
        RecipientStatus::Failed { reason, .. } => format!("failed: {reason}"),
    }
}

/// `kurier queue list`: one block per message, oldest first.
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
    for id in &ids {
        let env = match spool.envelope(id) {
            Ok(e) => e,
            Err(SpoolError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let sender = if env.sender.is_empty() {
            "<>"
        } else {
            &env.sender
        };
        out.push_str(&format!(
            "{id}  {:>4}  {:>8}  {sender}{}\n",
            age(now.saturating_sub(env.received_at)),
            env.size,
            if env.hold { "  [held]" } else { "" }
        ));
        for r in &env.recipients {
            out.push_str(&format!("    {}  {}\n", r.address, status_line(r, now)));
        }
    }
    out.push_str(&format!("{} message(s) in the queue\n", ids.len()));
    Ok(out)
}

/// `kurier queue show ID`: the envelope and every recorded attempt.
pub fn show(data_dir: &DataDir, id: &QueueId) -> Result<String, QueueError> {
    let spool = Spool::attach(data_dir.spool());
    let env = spool.envelope(id).map_err(|e| not_found(e, id))?;
    let now = unix_now();
    let mut out = format!(
        "Queue id:    {id}\nArrived:     {} ({} ago)\nSender:      <{}>\nSize:        {} octets\nClient:      {} (HELO {}){}\n",
        rfc5322(env.received_at),
        age(now.saturating_sub(env.received_at)),
        env.sender,
        env.size,
        if env.client_ip.is_empty() {
            "local"
        } else {
            &env.client_ip
        },
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
    if let Some(ret) = &env.ret {
        flags.push(format!("RET={ret}"));
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
            out.push_str(&format!("    ORCPT {o}\n"));
        }
        if let Some(n) = &r.notify {
            out.push_str(&format!("    NOTIFY {n:?}\n"));
        }
        for h in &r.history {
            out.push_str(&format!("    attempt: {h}\n"));
        }
    }
    Ok(out)
}
