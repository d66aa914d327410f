//! The control socket, both sides: `kurier queue flush|hold|release|delete|bounce` (the
//! client) and the running server (which answers through the delivery wing's admin door).
//!
//! Changes go through
//! the running server's control socket (`<data_dir>/control.sock`, mode 0600), where they take
//! the same per-message lock as delivery. With no server running, `hold`, `release` and
//! `delete` change the spool directly under the data directory's lock; `flush` and `bounce`
//! need the server.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use kurier_spool::{QueueId, Spool, SpoolError};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::data_dir::DataDir;

/// Queue command failures, as shown to the admin.
#[derive(Debug, Error)]
pub enum QueueError {
    /// Not a queue id.
    #[error("{0:?} is not a queue id (see `kurier queue list`)")]
    BadId(String),
    /// Spool access failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The server refused or failed.
    #[error("{0}")]
    Server(String),
    /// The command needs the running server.
    #[error("{0}")]
    NeedsServer(String),
}

/// Queue commands carried out by the running server (`kurier queue …`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", content = "id", rename_all = "lowercase")]
pub enum QueueCommand {
    /// Retry now: one message, or all with `None`.
    Flush(Option<QueueId>),
    /// Keep a message from being delivered.
    Hold(QueueId),
    /// Undo hold and retry now.
    Release(QueueId),
    /// Remove a message without notice.
    Delete(QueueId),
    /// Give up on the pending recipients and tell the sender (DSN).
    Bounce(QueueId),
}

#[derive(Serialize, Deserialize)]
struct Response {
    ok: bool,
    message: String,
}

/// Serves queue commands on the control socket until `stop`; `handle` carries each one out.
pub async fn serve<F, Fut>(listener: UnixListener, handle: F, stop: CancellationToken)
where
    F: Fn(QueueCommand) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<String, String>> + Send,
{
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let handle = handle.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(read).take(64 * 1024);
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let response = match serde_json::from_str::<QueueCommand>(&line) {
                Ok(cmd) => match handle(cmd).await {
                    Ok(message) => Response { ok: true, message },
                    Err(message) => Response { ok: false, message },
                },
                Err(e) => Response {
                    ok: false,
                    message: format!("bad request: {e}"),
                },
            };
            let mut out = serde_json::to_vec(&response).unwrap_or_default();
            out.push(b'\n');
            let _ = write.write_all(&out).await;
        });
    }
}

/// Binds the control socket (replacing a stale one) with owner-only permissions.
pub fn bind(data_dir: &DataDir) -> std::io::Result<UnixListener> {
    let path = data_dir.control_socket();
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Runs a changing command: through the server when it runs, else directly where possible.
/// Offline, a deleted message is recorded in `history`.
pub fn run(
    data_dir: &DataDir,
    cmd: QueueCommand,
    history: &crate::history::History,
) -> Result<String, QueueError> {
    match UnixStream::connect(data_dir.control_socket()) {
        Ok(mut stream) => {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(300)));
            let mut request =
                serde_json::to_vec(&cmd).map_err(|e| QueueError::Server(e.to_string()))?;
            request.push(b'\n');
            stream
                .write_all(&request)
                .map_err(|e| QueueError::Server(format!("control socket: {e}")))?;
            let mut line = String::new();
            BufReader::new(stream)
                .read_line(&mut line)
                .map_err(|e| QueueError::Server(format!("control socket: {e}")))?;
            let r: Response = serde_json::from_str(&line).map_err(|_| {
                QueueError::Server("the server closed the control socket without answering".into())
            })?;
            if r.ok {
                Ok(r.message)
            } else {
                Err(QueueError::Server(r.message))
            }
        }
        Err(_) => offline(data_dir, cmd, history),
    }
}

/// No server: change the spool directly, holding the data directory's lock so that a server
/// cannot start meanwhile.
fn offline(
    data_dir: &DataDir,
    cmd: QueueCommand,
    history: &crate::history::History,
) -> Result<String, QueueError> {
    let lock_path = data_dir.server_lock();
    let lock = std::fs::File::create(&lock_path)
        .map_err(|e| QueueError::Server(format!("{}: {e}", lock_path.display())))?;
    if lock.try_lock().is_err() {
        return Err(QueueError::Server(format!(
            "a kurier server holds {} but its control socket does not answer",
            lock_path.display()
        )));
    }
    let spool = Spool::attach(data_dir.spool());
    match cmd {
        QueueCommand::Hold(id) => set_hold(&spool, &id, true),
        QueueCommand::Release(id) => set_hold(&spool, &id, false),
        QueueCommand::Delete(id) => {
            let env = spool.envelope(&id).map_err(|e| not_found(e, &id))?;
            let now = crate::time::unix_now();
            history.record(&env, crate::history::Left::Deleted, now);
            spool.remove(&id).map_err(|e| not_found(e, &id))?;
            Ok(format!("{id} deleted"))
        }
        QueueCommand::Flush(_) | QueueCommand::Bounce(_) => Err(QueueError::NeedsServer(
            "the server is not running: queued mail is delivered when it starts (flush and bounce need a running server)".into(),
        )),
    }
}

fn set_hold(spool: &Spool, id: &QueueId, hold: bool) -> Result<String, QueueError> {
    let mut env = spool.envelope(id).map_err(|e| not_found(e, id))?;
    env.hold = hold;
    spool.update(&env)?;
    let what = if hold { "held" } else { "released" };
    Ok(format!(
        "{id} {what} (the server is not running; it takes effect when it starts)"
    ))
}

/// "No queued message" for a missing id, the spool's error otherwise.
pub fn not_found(e: SpoolError, id: &QueueId) -> QueueError {
    match e {
        SpoolError::NotFound(_) => QueueError::Server(format!("no queued message {id}")),
        e => QueueError::Spool(e),
    }
}
