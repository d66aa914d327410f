//! `kurier queue suppress list|add|remove`: the suppression list (see
//! [`crate::delivery::suppress`]), changed in its file under its lock, so it works with the
//! server running or stopped.

use anyhow::bail;
use clap::Subcommand;
use kurier_smtp::{EnhancedCode, Mailbox};

use crate::data_dir::DataDir;
use crate::delivery::suppress::{Suppressed, SuppressionList};
use crate::history::timeline::rfc3339;
use crate::time::unix_now;

#[derive(Subcommand)]
pub enum SuppressCmd {
    /// The addresses mail from a local sender is not sent to, with the reason.
    List,
    /// Stop mail from SENDER to RECIPIENT (it bounces at once) for delivery.suppress_for.
    Add {
        /// The local sender.
        sender: String,
        /// The address.
        recipient: String,
        /// Why (shown in the bounce).
        #[arg(long, default_value = "added by the administrator")]
        reason: String,
    },
    /// Let mail from SENDER to RECIPIENT go again.
    Remove {
        /// The local sender.
        sender: String,
        /// The address.
        recipient: String,
    },
}

/// Carries out the command; returns what to print.
pub fn run(cmd: &SuppressCmd, data_dir: &DataDir) -> anyhow::Result<String> {
    let list = SuppressionList::new(data_dir.root());
    match cmd {
        SuppressCmd::List => {
            let all = list.list()?;
            let mut out = String::new();
            for s in &all {
                out.push_str(&format!(
                    "{}  {} -> {}  {}: {}\n",
                    rfc3339(s.at),
                    s.sender,
                    s.recipient,
                    s.status,
                    s.reason
                ));
            }
            out.push_str(&format!("{} suppressed address(es)", all.len()));
            Ok(out)
        }
        SuppressCmd::Add {
            sender,
            recipient,
            reason,
        } => {
            let (sender, recipient) = (address(sender)?, address(recipient)?);
            list.add(
                Suppressed {
                    sender: sender.to_string(),
                    recipient: recipient.to_string(),
                    at: unix_now(),
                    status: EnhancedCode(5, 1, 1),
                    reason: reason.clone(),
                },
                0,
            )?;
            Ok(format!("mail from {sender} to {recipient} is suppressed"))
        }
        SuppressCmd::Remove { sender, recipient } => {
            let (sender, recipient) = (address(sender)?, address(recipient)?);
            if !list.remove(&sender.to_string(), &recipient.to_string())? {
                bail!("{sender} -> {recipient} is not on the suppression list");
            }
            Ok(format!("mail from {sender} to {recipient} may go again"))
        }
    }
}

fn address(s: &str) -> anyhow::Result<Mailbox> {
    Mailbox::parse(s.trim_matches(['<', '>'])).map_err(|e| anyhow::anyhow!("{s:?}: {e}"))
}
