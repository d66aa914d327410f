//! `kurier queue history`: a message's timeline from the history files and the live queue,
//! read straight from the data directory (it works with the server running or stopped).

use anyhow::{Context as _, bail};
use clap::Args;

use super::queue::{parse_id, printable};
use crate::data_dir::DataDir;
use crate::history::search::{Selector, search};
use crate::time::unix_now;

/// What to look for; with none of them, every message in the time range.
#[derive(Args)]
pub struct HistoryArgs {
    /// A queue id (reports about that message are shown with it).
    pub id: Option<String>,
    /// The message's Message-ID (angle brackets optional).
    #[arg(long, conflicts_with_all = ["id", "recipient", "sender"])]
    pub message_id: Option<String>,
    /// A recipient address.
    #[arg(long, conflicts_with_all = ["id", "sender"])]
    pub recipient: Option<String>,
    /// An envelope sender (`<>` for reports).
    #[arg(long, conflicts_with = "id")]
    pub sender: Option<String>,
    /// Only messages active since then: a time ago ("2h", "3d") or a UTC date and time
    /// ("2026-12-04", "2026-12-04T10:00:00Z").
    #[arg(long)]
    pub since: Option<String>,
    /// The same as JSON (an array of messages, each with its envelope and timeline).
    #[arg(long)]
    pub json: bool,
}

/// Searches and prints (as text or JSON).
pub fn run(args: &HistoryArgs, data_dir: &DataDir) -> anyhow::Result<String> {
    let now = unix_now();
    let selector = if let Some(id) = &args.id {
        Selector::Id(parse_id(id)?)
    } else if let Some(m) = &args.message_id {
        Selector::MessageId(m.clone())
    } else if let Some(r) = &args.recipient {
        Selector::Recipient(r.clone())
    } else if let Some(s) = &args.sender {
        Selector::Sender(s.clone())
    } else {
        Selector::All
    };
    let since = match &args.since {
        Some(s) => since(s, now)?,
        None => 0,
    };
    let found = search(
        &data_dir.history(),
        &data_dir.spool(),
        &selector,
        since,
        now,
    )?;
    if args.json {
        return serde_json::to_string_pretty(&found).context("writing JSON");
    }
    if found.is_empty() {
        return Ok("no message found in the queue or its history".into());
    }
    let text: Vec<String> = found.iter().map(|f| printable(&f.text())).collect();
    Ok(text.join("\n"))
}

/// `--since`: a duration ago, a date (midnight UTC) or an RFC 3339 time.
fn since(s: &str, now: u64) -> anyhow::Result<u64> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now.saturating_sub(d.as_secs()));
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(u64::try_from(t.timestamp()).unwrap_or(0));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(u64::try_from(t.and_utc().timestamp()).unwrap_or(0));
    }
    bail!(
        "--since {s:?}: give a time ago (\"2h\", \"3d\"), a date (2026-12-04) or an RFC 3339 time"
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn since_takes_durations_dates_and_times() {
        assert_eq!(super::since("2h", 10_000).unwrap(), 10_000 - 7200);
        assert_eq!(super::since("1970-01-02", 0).unwrap(), 86_400);
        assert_eq!(super::since("1970-01-01T00:01:00Z", 0).unwrap(), 60);
        assert!(super::since("yesterday", 0).is_err());
    }
}
