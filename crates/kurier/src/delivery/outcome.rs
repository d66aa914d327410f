//! What one delivery attempt did for each recipient: from a route that could not be
//! found, a server's reply, a session that failed, or a transaction's results.

use kurier_smtp::client::{RcptOutcome, SessionError, Stage, TransactionResult};
use kurier_smtp::{EnhancedCode, Reply};
use kurier_spool::{DiagnosticType, Failure, RemoteHost};

use crate::dns::RouteError;

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteOutcome {
    /// The next hop accepted the message for this recipient.
    Delivered {
        /// The server.
        host: RemoteHost,
        /// Its final reply.
        reply: String,
        /// It offered DSN (if not, the message is "relayed": no more reports will come).
        dsn: bool,
    },
    /// Not tried: every connection the destination may have is in use, or the server is
    /// stopping. Put back for a few seconds, not counted as an attempt.
    Busy,
    /// Not delivered.
    Failed {
        /// True for permanent failures (bounce now), false for temporary ones (retry).
        permanent: bool,
        /// Why.
        failure: Failure,
    },
}

impl RemoteOutcome {
    pub(super) fn from_route_error(e: &RouteError) -> RemoteOutcome {
        RemoteOutcome::Failed {
            permanent: e.is_permanent(),
            failure: Failure::local(e.status(), e.to_string()),
        }
    }

    pub(super) fn from_reply(reply: &Reply, host: &RemoteHost) -> RemoteOutcome {
        let status = reply
            .enhanced
            .unwrap_or(EnhancedCode((reply.code / 100) as u8, 0, 0));
        RemoteOutcome::Failed {
            permanent: reply.is_permanent(),
            failure: Failure {
                status,
                kind: DiagnosticType::Smtp,
                text: reply.to_string(),
                remote: Some(host.clone()),
            },
        }
    }

    pub(super) fn from_session_error(e: &SessionError, host: &RemoteHost) -> RemoteOutcome {
        let failure = match &e.reply {
            Some(reply) if e.is_permanent() => return RemoteOutcome::from_reply(reply, host),
            Some(reply) => Failure {
                status: reply
                    .enhanced
                    .filter(|c| !c.is_permanent())
                    .unwrap_or(EnhancedCode(4, 0, 0)),
                kind: DiagnosticType::Smtp,
                text: format!("{reply} (in reply to {})", e.stage.command()),
                remote: Some(host.clone()),
            },
            None => Failure {
                remote: Some(host.clone()),
                ..Failure::local(
                    if e.stage == Stage::StartTls {
                        EnhancedCode(4, 7, 0)
                    } else {
                        EnhancedCode(4, 4, 2)
                    },
                    e.message.clone(),
                )
            },
        };
        RemoteOutcome::Failed {
            permanent: false,
            failure,
        }
    }

    pub(super) fn temporary(status: EnhancedCode, message: String) -> RemoteOutcome {
        RemoteOutcome::Failed {
            permanent: false,
            failure: Failure::local(status, message),
        }
    }
}

/// Outcomes per recipient from a transaction result.
pub(super) fn outcomes(
    result: TransactionResult,
    mta: &RemoteHost,
    dsn: bool,
) -> Vec<RemoteOutcome> {
    result
        .rcpts
        .into_iter()
        .map(|o| match o {
            RcptOutcome::Accepted(reply) => RemoteOutcome::Delivered {
                host: mta.clone(),
                reply: reply.to_string(),
                dsn,
            },
            RcptOutcome::Rejected(reply, _) => RemoteOutcome::from_reply(&reply, mta),
        })
        .collect()
}
