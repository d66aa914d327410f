//! # kurier-smtp: the SMTP protocol core of Kurier
//!
//! Pure types and functions for the SMTP protocol: no sockets, no async runtime, no clock, no
//! file system. The server and the delivery engine drive these types; everything here can be
//! tested and fuzzed byte by byte.
//!
//! ## Layout
//! - [`reply`]: reply codes and RFC 3463 enhanced status codes.
//! - [`address`]: paths, mailboxes and domains (RFC 5321 §4.1.2, RFC 6531).
//! - [`command`]: command-line parsing with ESMTP parameters (SIZE, BODY, SMTPUTF8, DSN, AUTH).
//! - [`data`]: the DATA/BDAT stream decoder (strict CRLF, dot-unstuffing, limits).
//! - [`session`]: the server session state machine.
//! - [`client`]: the client session state machine for outbound delivery.
//! - [`trace`]: the Received trace header (RFC 5321 §4.4).
//! - `stored` (feature `serde`): the protocol values in their wire form, for the spool.
//!
//! ## Design
//! The wire format's strictness is owned here rather than left to a general parser: only CRLF
//! ends a line, lines have RFC limits, quoted local parts keep their quoting, and every ESMTP
//! parameter that is not advertised is refused. Those are the places where mail servers
//! disagree with each other, and disagreements are what smuggling and relay attacks exploit.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod address;
pub mod client;
pub mod command;
pub mod data;
pub mod reply;
pub mod session;
#[cfg(feature = "serde")]
mod stored;
pub mod trace;

pub use address::{AddressError, Domain, ForwardPath, Mailbox, ReversePath};
pub use command::{
    Body, Command, CommandError, MailParams, Notify, OriginalRecipient, RcptParams, Ret,
};
pub use reply::{EnhancedCode, Reply, codes};
pub use session::{
    Action, AuthVerdict, Message, Recipient, Role, SaslMechanism, ServerSession, SessionConfig,
    TlsInfo, Verdict,
};
