//! # Kurier: the mail server
//!
//! The server crate: everything that does I/O. The protocol itself lives in `kurier-smtp`
//! (sans-IO) and the queue in `kurier-spool`.
//!
//! ## Layout
//! Wings (folders) own one concern each; arrows point one way, from the wings that launch work
//! (server, cli) to the ones that do it (inbound, delivery) and down to the leaves.
//! - [`server`]: listeners, connection limits, startup order, signals, graceful shutdown.
//! - [`inbound`]: drives one SMTP session over TCP/TLS; the durable commit before `250`.
//! - [`policy`]: every decision about a client or a message: relay, recipients, DNSBL,
//!   greylisting, AUTH throttling, SPF/DKIM/DMARC and Authentication-Results.
//! - [`delivery`]: the delivery engine: scheduling, Maildir, SMTP to other servers, bounces and
//!   DSNs (RFC 3464).
//! - [`cli`]: the `kurier` subcommands other than `serve`.
//! - [`config`]: the TOML configuration, its embedded default and its validation.
//! - [`directory`]: local domains, users (argon2), aliases.
//!
//! Leaves, used by several wings and using none of them:
//! - [`data_dir`]: every path under the data directory.
//! - [`fsutil`]: durable file writes (tmp, fsync, rename, fsync of the directory).
//! - [`time`]: the clock and RFC 5322 dates.
//! - [`shutdown`]: the stop and abort signals a running server passes down.
//! - [`control`]: the queue control socket and its commands.
//! - [`dns`]: MX and address lookups behind the [`dns::Lookup`] seam (an in-memory
//!   [`dns::fake::StaticDns`] for unit tests).
//! - [`dkim`]: DKIM keys and signing of mail from local domains.
//! - [`tls`]: certificates (configured or self-signed) and rustls setup.
//! - [`stream`]: a connection in plaintext or TLS.
//! - [`maillog`]: the server's fixed log events and field names, and the escaping of
//!   untrusted values in them (no forged log lines, no terminal escapes).

#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod control;
pub mod data_dir;
pub mod delivery;
pub mod directory;
pub mod dkim;
pub mod dns;
pub mod fsutil;
pub mod header;
pub mod history;
pub mod inbound;
pub mod load;
pub mod maillog;
pub mod policy;
pub mod server;
pub mod shutdown;
pub mod stream;
pub mod time;
pub mod tls;
