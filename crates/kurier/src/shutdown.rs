//! The server's stop signals to its sessions, a leaf both the server (which raises them)
//! and the inbound driver (which obeys them) depend on.

use tokio_util::sync::CancellationToken;

/// Signals from the server to its sessions (RFC 5321 §3.8: a server shutting down answers
/// 421).
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Stop: idle sessions close with 421 at once, busy ones finish their transaction.
    pub stop: CancellationToken,
    /// The grace period is over: every session closes with 421 now.
    pub abort: CancellationToken,
}
