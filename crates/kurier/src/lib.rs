//! # Kurier: the mail server
//!
//! The server crate: everything that does I/O. The protocol itself lives in `kurier-smtp`
//! (sans-IO) and the queue in `kurier-spool`.
//!
//! ## Layout
//! - [`config`]: the TOML configuration and its embedded default.
//! - [`directory`]: local domains, users (argon2), aliases, mailbox paths.
//! - [`server`]: listeners, connection limits, startup order, graceful shutdown.
//! - [`connection`]: drives one SMTP session over TCP/TLS.
//! - [`inbound`]: relay and recipient policy; the durable commit before `250`.
//! - [`delivery`]: local delivery workers and retries.
//! - [`queue`]: `kurier queue` commands and the control socket.
//! - [`dns`]: MX and address lookups.
//! - [`outbound`]: SMTP delivery to other servers (routes, MX, TLS, connection reuse).
//! - [`dsn`]: delivery status notifications (RFC 3464).
//! - [`maildir`]: Maildir writing with fsync.
//! - [`stream`]: a connection in plaintext or TLS.
//! - [`dnsbl`], [`greylist`], [`throttle`]: abuse defences (blocklists, greylisting, AUTH failures).
//! - [`dkim`]: DKIM keys and signing of mail from local domains.
//! - [`sender_auth`]: SPF, DKIM and DMARC of incoming mail, Authentication-Results.
//! - [`spf`], [`spf_record`]: SPF evaluation with RFC 7208's strict record rules.
//! - [`tls`]: certificates (configured or self-signed) and rustls setup.
//! - [`privilege`]: switching to an unprivileged user after binding.

#![forbid(unsafe_code)]

pub mod config;
pub mod connection;
pub mod delivery;
pub mod directory;
pub mod dkim;
pub mod dns;
pub mod dnsbl;
pub mod dsn;
pub mod greylist;
pub mod inbound;
pub mod maildir;
pub mod outbound;
pub mod privilege;
pub mod queue;
pub mod sender_auth;
pub mod server;
pub mod spf;
pub mod spf_record;
pub mod stream;
pub mod throttle;
pub mod tls;
