//! Queue management for admins: `kurier queue list|show|flush|hold|release|delete|bounce`.
//!
//! Reading (`list`, `show`) goes straight to the spool files, which are only ever replaced
//! atomically, so a reader sees a consistent state while the server runs. Changes go through
//! the running server's control socket (`<data_dir>/control.sock`, mode 0600), where they take
//! the same per-message lock as delivery. With no server running, `hold`, `release` and
//! `delete` change the spool directly under the data directory's lock; `flush` and `bounce`
//! need the server.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kurier_spool::{QueueId, RecipientStatus, Spool, SpoolError};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::delivery::{Engine, QueueCommand};

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

#[derive(Serialize, Deserialize)]
struct Response {
    ok: bool,
    message: String,
}

/// The control socket's path.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

/// Parses a queue id given on the command line.
pub fn parse_id(s: &str) -> Result<QueueId, QueueError> {
    QueueId::parse(s).ok_or_else(|| QueueError::BadId(s.to_string()))
}

/// Serves queue commands on the control socket until `stop`.
pub async fn serve(listener: UnixListener, engine: Arc<Engine>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            s = listener.accept() => match s {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            _ = stop.cancelled() => return,
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(read).take(64 * 1024);
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let response = match serde_json::from_str::<QueueCommand>(&line) {
                Ok(cmd) => match engine.command(cmd).await {
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
pub fn bind(data_dir: &Path) -> std::io::Result<UnixListener> {
    let path = socket_path(data_dir);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Runs a changing command: through the server when it runs, else directly where possible.
pub fn run(data_dir: &Path, cmd: QueueCommand) -> Result<String, QueueError> {
    match UnixStream::connect(socket_path(data_dir)) {
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
        Err(_) => offline(data_dir, cmd),
    }
}

/// No server: change the spool directly, holding the data directory's lock so that a server
/// cannot start meanwhile.
fn offline(data_dir: &Path, cmd: QueueCommand) -> Result<String, QueueError> {
    let lock_path = data_dir.join("kurier.lock");
    let lock = std::fs::File::create(&lock_path)
        .map_err(|e| QueueError::Server(format!("{}: {e}", lock_path.display())))?;
    if lock.try_lock().is_err() {
        return Err(QueueError::Server(format!(
            "a kurier server holds {} but its control socket does not answer",
            lock_path.display()
        )));
    }
    let spool = Spool::attach(data_dir.join("spool"));
    match cmd {
        QueueCommand::Hold(id) => set_hold(&spool, &id, true),
        QueueCommand::Release(id) => set_hold(&spool, &id, false),
        QueueCommand::Delete(id) => {
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

fn not_found(e: SpoolError, id: &QueueId) -> QueueError {
    match e {
        SpoolError::NotFound(_) => QueueError::Server(format!("no queued message {id}")),
        e => QueueError::Spool(e),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn date(unix: u64) -> String {
    chrono::DateTime::from_timestamp(i64::try_from(unix).unwrap_or(0), 0)
        .map(|d| d.to_rfc2822())
        .unwrap_or_default()
}

fn status_line(r: &kurier_spool::RecipientState, now: u64) -> String {
    match &r.status {
        RecipientStatus::Pending => {
            let next = if r.next_attempt <= now {
                "due now".to_string()
            } else {
                format!("next attempt in {}", age(r.next_attempt - now))
            };
            let last = r
                .last_error
                .as_ref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default();
            format!("pending, {} attempt(s), {next}{last}", r.attempts)
        }
        RecipientStatus::Delivered { detail, .. } => format!("delivered: {detail}"),
        RecipientStatus::Failed { reason, .. } => format!("failed: {reason}"),
    }
}

/// `kurier queue list`: one block per message, oldest first.
pub fn list(data_dir: &Path) -> Result<String, QueueError> {
    let spool = Spool::attach(data_dir.join("spool"));
    let now = now();
    let mut out = String::new();
    let ids = match spool.ids() {
        Ok(ids) => ids,
        Err(SpoolError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Vec::new()
        }
        Err(e) => return Err(e.into()),
    };
    for id in &ids {
        let env = match spool.envelope(id) {
            Ok(e) => e,
            Err(SpoolError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let sender = if env.sender.is_empty() {
            "<>"
        } else {
            &env.sender
        };
        out.push_str(&format!(
            "{id}  {:>4}  {:>8}  {sender}{}\n",
            age(now.saturating_sub(env.received_at)),
            env.size,
            if env.hold { "  [held]" } else { "" }
        ));
        for r in &env.recipients {
            out.push_str(&format!("    {}  {}\n", r.address, status_line(r, now)));
        }
    }
    out.push_str(&format!("{} message(s) in the queue\n", ids.len()));
    Ok(out)
}

/// `kurier queue show ID`: the envelope and every recorded attempt.
pub fn show(data_dir: &Path, id: &QueueId) -> Result<String, QueueError> {
    let spool = Spool::attach(data_dir.join("spool"));
    let env = spool.envelope(id).map_err(|e| not_found(e, id))?;
    let now = now();
    let mut out = format!(
        "Queue id:    {id}\nArrived:     {} ({} ago)\nSender:      <{}>\nSize:        {} octets\nClient:      {} (HELO {}){}\n",
        date(env.received_at),
        age(now.saturating_sub(env.received_at)),
        env.sender,
        env.size,
        if env.client_ip.is_empty() {
            "local"
        } else {
            &env.client_ip
        },
        if env.helo.is_empty() { "-" } else { &env.helo },
        env.auth_user
            .as_ref()
            .map(|u| format!(", authenticated as {u}"))
            .unwrap_or_default(),
    );
    let mut flags = Vec::new();
    if env.hold {
        flags.push("held".to_string());
    }
    if env.eight_bit {
        flags.push("8BITMIME".to_string());
    }
    if env.smtputf8 {
        flags.push("SMTPUTF8".to_string());
    }
    if let Some(ret) = &env.ret {
        flags.push(format!("RET={ret}"));
    }
    if let Some(envid) = &env.envid {
        flags.push(format!("ENVID={envid}"));
    }
    if env.delay_warned {
        flags.push("delay warning sent".to_string());
    }
    if !flags.is_empty() {
        out.push_str(&format!("Flags:       {}\n", flags.join(", ")));
    }
    out.push_str("Recipients:\n");
    for r in &env.recipients {
        out.push_str(&format!(
            "  {} ({})\n    {}\n",
            r.address,
            if r.local { "local" } else { "remote" },
            status_line(r, now)
        ));
        if let Some(o) = &r.orcpt {
            out.push_str(&format!("    ORCPT {o}\n"));
        }
        if let Some(n) = &r.notify {
            out.push_str(&format!("    NOTIFY {n:?}\n"));
        }
        for h in &r.history {
            out.push_str(&format!("    attempt: {h}\n"));
        }
    }
    Ok(out)
}
