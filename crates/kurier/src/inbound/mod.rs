//! Receiving mail: one SMTP session per connection, from the first byte to the durable
//! commit before `250`.
//!
//! - [`driver`] runs a session: it reads bytes into the sans-IO [`ServerSession`], carries
//!   out each action the session asks for (one method per action) and writes the replies.
//!   It decides nothing itself: every question goes to [`crate::policy`].
//! - [`receive`] turns a complete message into a durable one, in steps: the trace and
//!   authentication headers, the envelope, then the disk (the spool, or the Maildir straight
//!   away when every recipient is local, through the delivery wing's door for that).
//!
//! [`ServerSession`]: kurier_smtp::session::ServerSession

use std::sync::Arc;

use kurier_spool::Spool;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::delivery::DeliveryHandle;
use crate::dkim::Signers;
use crate::load::{Load, MemoryBudget};
use crate::policy::Policy;

pub mod driver;
mod read_clock;
pub mod receive;
pub mod spill;

pub use driver::serve;

/// What every inbound session shares.
pub struct Inbound {
    /// The configuration.
    pub config: Arc<Config>,
    /// The decisions.
    pub policy: Policy,
    /// The queue.
    pub spool: Spool,
    /// TLS for STARTTLS and implicit TLS, when a certificate is available.
    pub tls: Option<TlsAcceptor>,
    /// Hand-off to delivery.
    pub delivery: DeliveryHandle,
    /// DKIM keys of the local domains (submissions are signed).
    pub signers: Arc<Signers>,
    /// Open connections against the limit: near it, timeouts are cut.
    pub load: Arc<Load>,
    /// Memory for message data in transit, shared by all sessions.
    pub memory: MemoryBudget,
}
