//! # history: what happened to a message, after it left the queue
//!
//! Owns the record kept of every message once it is done with (delivered, bounced, deleted
//! by the administrator): its final envelope, which already holds the reception (client,
//! listener, TLS, AUTH user, size, Message-ID), every recipient's attempts (time, host and
//! address, TLS and whether the certificate was verified, the reply or the local error,
//! duration) and the reports sent. `kurier queue history` searches these records and the
//! live queue ([`search`]) and prints a timeline ([`timeline`]).
//!
//! Records are JSON lines appended to one file per UTC day, `history/YYYY-MM-DD.jsonl` in
//! the data directory; files older than `delivery.history_keep` are removed, and the oldest
//! ones go first when they all together would pass `delivery.history_size`. A record is
//! written (one `write`, appended) before the message's queue file is removed, so a crash
//! between the two repeats a record at worst (the search keeps the last one). The files are
//! not fsynced: a history is for people, and a power cut may cost its last seconds, never
//! mail. Failures to write are logged and never hold up delivery.

pub mod search;
pub mod timeline;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use kurier_spool::Envelope;
use serde::{Deserialize, Serialize};

/// How a message left the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Left {
    /// Every recipient reached a final state (delivered or failed, reported as asked).
    Done,
    /// Removed by the administrator (`kurier queue delete`), without a report.
    Deleted,
}

impl Left {
    /// In words, for the timeline.
    pub fn as_str(self) -> &'static str {
        match self {
            Left::Done => "left the queue",
            Left::Deleted => "deleted by the administrator",
        }
    }
}

/// One message's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When it left the queue (unix time).
    pub left_at: u64,
    /// How.
    pub left: Left,
    /// Its envelope as it was then.
    pub envelope: Envelope,
}

/// The settings of the history (from `[delivery]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    /// How long records are kept; zero turns the history off.
    pub days: Duration,
    /// The most the files may hold together (bytes).
    pub bytes: u64,
}

/// The writer: appends records to the day's file. Shared by the delivery workers.
pub struct History {
    dir: PathBuf,
    keep: Keep,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    /// The day of `file`, and the file.
    file: Option<(String, File)>,
    /// Bytes in all files (known once a day's file was opened).
    total: u64,
    /// The size limit was reported (once per day).
    full_reported: bool,
}

impl History {
    /// The history in `dir` (created when the first record is written).
    pub fn new(dir: impl Into<PathBuf>, keep: Keep) -> History {
        History {
            dir: dir.into(),
            keep,
            open: Mutex::new(Open::default()),
        }
    }

    /// The history of the data directory, kept as the configuration says.
    pub fn configured(
        config: &crate::config::Config,
        data_dir: &crate::data_dir::DataDir,
    ) -> History {
        History::new(
            data_dir.history(),
            Keep {
                days: config.delivery.history_keep,
                bytes: config.delivery.history_size,
            },
        )
    }

    /// A history that records nothing (tests, `history_keep = "0s"`).
    pub fn off() -> History {
        History::new(
            PathBuf::new(),
            Keep {
                days: Duration::ZERO,
                bytes: 0,
            },
        )
    }

    /// True when records are kept.
    pub fn is_on(&self) -> bool {
        !self.keep.days.is_zero() && self.keep.bytes > 0
    }

    /// Appends the record of a message that leaves the queue now (blocking I/O; a failure
    /// is logged).
    pub fn record(&self, envelope: &Envelope, left: Left, now: u64) {
        if !self.is_on() {
            return;
        }
        let record = Record {
            left_at: now,
            left,
            envelope: envelope.clone(),
        };
        let mut line = match serde_json::to_vec(&record) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(queue_id = %envelope.id, error = %e, "cannot write history record");
                return;
            }
        };
        line.push(b'\n');
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.append(&mut open, &line, now) {
            tracing::warn!(queue_id = %envelope.id, dir = %self.dir.display(), error = %e, "cannot write history record");
            open.file = None;
        }
    }

    fn append(&self, open: &mut Open, line: &[u8], now: u64) -> std::io::Result<()> {
        let day = day_of(now);
        if open.file.as_ref().is_none_or(|(d, _)| *d != day) {
            std::fs::create_dir_all(&self.dir)?;
            let path = self.dir.join(format!("{day}.jsonl"));
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            open.total = self.prune(now, &day)?;
            open.file = Some((day.clone(), file));
            open.full_reported = false;
        }
        let len = line.len() as u64;
        if open.total + len > self.keep.bytes {
            open.total = self.make_room(&day, len)?;
            if open.total + len > self.keep.bytes {
                if !open.full_reported {
                    open.full_reported = true;
                    tracing::warn!(
                        dir = %self.dir.display(),
                        limit = self.keep.bytes,
                        "history is at delivery.history_size: no more records today"
                    );
                }
                return Ok(());
            }
        }
        if let Some((_, file)) = open.file.as_mut() {
            file.write_all(line)?;
            open.total += len;
        }
        Ok(())
    }

    /// Removes day files older than the keep time; returns the bytes left in all files.
    fn prune(&self, now: u64, today: &str) -> std::io::Result<u64> {
        let oldest = day_of(now.saturating_sub(self.keep.days.as_secs()));
        let mut total = 0;
        for (day, path, size) in day_files(&self.dir)? {
            if day.as_str() < oldest.as_str() && day != today {
                remove(&path);
            } else {
                total += size;
            }
        }
        Ok(total)
    }

    /// Removes the oldest day files (never today's) until `len` more bytes fit; returns the
    /// bytes left.
    fn make_room(&self, today: &str, len: u64) -> std::io::Result<u64> {
        let files = day_files(&self.dir)?;
        let mut total: u64 = files.iter().map(|(_, _, s)| s).sum();
        for (day, path, size) in files {
            if total + len <= self.keep.bytes || day == today {
                break;
            }
            remove(&path);
            total -= size;
        }
        Ok(total)
    }
}

fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove old history file");
    }
}

/// The UTC day of a unix time, `YYYY-MM-DD` (the name of its file).
pub fn day_of(unix: u64) -> String {
    chrono::DateTime::from_timestamp(i64::try_from(unix).unwrap_or(0), 0)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

/// The history's day files, oldest first: (day, path, size).
pub fn day_files(dir: &Path) -> std::io::Result<Vec<(String, PathBuf, u64)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(day) = name.strip_suffix(".jsonl") else {
            continue;
        };
        if day.len() == 10 && chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").is_ok() {
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            files.push((day.to_string(), entry.path(), size));
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests;
