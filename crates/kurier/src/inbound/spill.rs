//! A large message goes to disk while it arrives: the session keeps its first [`KEEP`]
//! octets (the header section is there) and hands the driver the rest in pieces of at least
//! [`PIECE`], which go to an unnamed file in the spool's `tmp/`. At the end of the data the
//! message is that start, the file, and what came after the last piece; the spool copies
//! the file into the queue file in the kernel. So a session holds at most about
//! [`IN_MEMORY`] octets of message data, whatever the message's size.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use kurier_smtp::{Reply, codes};
use kurier_spool::{Spool, SpoolError};

use crate::header::{body_start, has_header_end};
use crate::load::SMALL;
use kurier_spool::MessageData;

/// The start of a message that stays in memory; a header section must end within it.
pub const KEEP: usize = SMALL as usize;

/// What the session gathers past [`KEEP`] before the driver writes it out.
pub const PIECE: usize = 256 * 1024;

/// The most message data a session holds in memory (plus one read).
pub const IN_MEMORY: u64 = (KEEP + PIECE) as u64;

/// The file one message's data goes to.
#[derive(Debug)]
pub struct Spill {
    /// The session's serial of the message (`ServerSession::message_serial`).
    serial: u64,
    /// The file, or why there is none (any later data is dropped, the message refused).
    file: Result<Arc<File>, Refusal>,
    /// Octets written.
    len: u64,
}

#[derive(Debug, Clone, Copy)]
enum Refusal {
    NoSpace,
    LocalError,
}

impl Refusal {
    fn of(full: bool) -> Refusal {
        if full {
            Refusal::NoSpace
        } else {
            Refusal::LocalError
        }
    }

    fn reply(self) -> Reply {
        match self {
            Refusal::NoSpace => Reply::new(
                452,
                codes::SYSTEM_FULL,
                "Insufficient system storage, try again later",
            ),
            Refusal::LocalError => Reply::local_error(),
        }
    }
}

fn is_full(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(28) // ENOSPC
}

impl Spill {
    /// A new file in `spool` for the data of message `serial`.
    pub fn new(spool: &Spool, serial: u64) -> Spill {
        let file = match spool.transit_file() {
            Ok(f) => Ok(Arc::new(f)),
            Err(e) => {
                tracing::error!(error = %e, "cannot create a file for message data");
                Err(Refusal::of(matches!(e, SpoolError::NoSpace { .. })))
            }
        };
        Spill {
            serial,
            file,
            len: 0,
        }
    }

    /// The message whose data this file holds.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// Appends a piece, off the reactor. After a failure nothing more is written and the
    /// message will be refused at its end (the client is still sending it).
    pub async fn write(&mut self, piece: Vec<u8>) {
        let Ok(file) = &self.file else {
            return;
        };
        let (file, at) = (file.clone(), self.len);
        let n = piece.len() as u64;
        let written = tokio::task::spawn_blocking(move || file.write_all_at(&piece, at)).await;
        match written {
            Ok(Ok(())) => self.len += n,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot write message data to the spool");
                self.file = Err(Refusal::of(is_full(&e)));
            }
            Err(_) => self.file = Err(Refusal::LocalError),
        }
    }

    /// The whole message: `body` as the session gave it at the end (the kept start, then
    /// what came after the last piece) with the `spilled` octets written here between them.
    pub async fn finish(mut self, mut body: Vec<u8>, spilled: u64) -> Result<MessageData, Reply> {
        let file = self.file.map_err(Refusal::reply)?;
        if self.len != spilled || body.len() < KEEP {
            tracing::error!(
                written = self.len,
                spilled,
                "message data on disk does not match the session's"
            );
            return Err(Reply::local_error());
        }
        let tail = body.split_off(KEEP);
        let (f, at) = (file.clone(), self.len);
        let n = tail.len() as u64;
        match tokio::task::spawn_blocking(move || f.write_all_at(&tail, at)).await {
            Ok(Ok(())) => self.len += n,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot write message data to the spool");
                return Err(Refusal::of(is_full(&e)).reply());
            }
            Err(_) => return Err(Reply::local_error()),
        }
        Ok(MessageData::with_rest(body, file, self.len))
    }
}

/// RFC 5322 sets no limit on the header section, but ours must end within the start of the
/// message kept in memory, where every header check reads it: refused otherwise (Postfix
/// keeps 100 kB of it, and treats the rest as body).
pub fn header_fits(data: &MessageData) -> Result<(), Reply> {
    let spilled_header = data.rest().is_some() && !has_header_end(data.head());
    if spilled_header || body_start(data.head()) > KEEP + 2 {
        return Err(Reply::new(
            552,
            codes::TOO_BIG,
            format!("Message header section longer than {} KiB", KEEP / 1024),
        ));
    }
    Ok(())
}
