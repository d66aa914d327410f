//! # kurier-spool: the durable mail queue
//!
//! Every message Kurier accepts is in the spool before the client hears `250`, and stays there
//! until each recipient is delivered or has failed for good. The spool knows files, not time or
//! destinations: scheduling lives in the server.
//!
//! ## Layout
//! ```text
//! spool/
//!   tmp/          files being written; anything here at startup was never acknowledged
//!   queue/<id>    committed messages: header line `KURIER-QUEUE 2 <json-len> <body-len>`,
//!                 envelope (JSON), message bytes
//!   state/<id>    the current envelope once delivery made progress (supersedes the one
//!                 inside queue/<id>); `KURIER-STATE 2`, then the JSON
//!   corrupt/      files that failed validation; kept for the admin, never deleted
//! ```
//!
//! ## Commit protocol
//! 1. Write header, envelope and message into `tmp/<id>`; fsync the file.
//! 2. Rename it to `queue/<id>` (the commit point: rename is atomic).
//! 3. Fsync the `queue/` directory so the rename survives a crash.
//!
//! Only then may the server reply `250`. A crash before step 3 completes leaves either nothing
//! or a complete file; a partially written file can only ever be in `tmp/`, which recovery
//! empties. State updates use the same write-fsync-rename-fsync sequence on `state/<id>`.
//!
//! The queue file carries its own lengths, so recovery detects truncation or damage and moves
//! such a file to `corrupt/` instead of guessing.
//!
//! ## Formats
//! Format 2 stores protocol values typed, in their wire form (mailboxes, RFC 3463 codes,
//! NOTIFY/RET/ORCPT, a failure as status + diagnostic + remote host). Format 1 files (the
//! first release's) are still read and upgraded in `v1`; only format 2 is written.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod durable;
mod envelope;
mod memory;
mod message_data;
mod store;
mod v1;

pub use envelope::{
    Attempt, AttemptResult, Delivered, DiagnosticType, Envelope, Failure, MAX_HISTORY, QueueId,
    RecipientState, RecipientStatus, RemoteHost, ReportKind, ReportSent, TlsUsed,
};
pub use memory::MemoryStore;
pub use message_data::MessageData;
pub use store::{Recovery, Spool, SpoolError, Store, decode_queue_file, encode_queue_file};
