//! The queue commands (`kurier queue flush|hold|release|delete|bounce`) as the running
//! server carries them out: under the message's lock, so they never race a delivery.

use std::sync::Arc;

use kurier_smtp::EnhancedCode;
use kurier_spool::{Failure, QueueId, SpoolError};

use super::Engine;
use crate::control::QueueCommand;
use crate::history::Left;

impl Engine {
    /// Runs a queue command under the message's lock, so it never races a delivery.
    pub async fn command(self: &Arc<Self>, cmd: QueueCommand) -> Result<String, String> {
        match cmd {
            QueueCommand::Flush(None) => {
                let e = self.clone();
                let ids = tokio::task::spawn_blocking(move || e.spool.ids())
                    .await
                    .map_err(|e| e.to_string())?;
                let ids = ids.map_err(|e| e.to_string())?;
                let mut n = 0;
                for id in ids {
                    if self
                        .change(&id, QueueCommand::Flush(Some(id.clone())))
                        .await
                        .is_ok()
                    {
                        n += 1;
                    }
                }
                Ok(format!(
                    "{n} message(s) scheduled for immediate delivery{}",
                    self.disabled_note()
                ))
            }
            QueueCommand::Flush(Some(ref id))
            | QueueCommand::Hold(ref id)
            | QueueCommand::Release(ref id)
            | QueueCommand::Delete(ref id)
            | QueueCommand::Bounce(ref id) => {
                let id = id.clone();
                self.change(&id, cmd).await
            }
        }
    }

    pub(super) fn disabled_note(&self) -> &'static str {
        if self.enabled {
            ""
        } else {
            " (but delivery is disabled in the config)"
        }
    }

    pub(super) async fn change(
        self: &Arc<Self>,
        id: &QueueId,
        cmd: QueueCommand,
    ) -> Result<String, String> {
        // Jobs made before this command no longer know the current state.
        self.commands
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let engine = self.clone();
        let id2 = id.clone();
        let result = tokio::task::spawn_blocking(move || engine.change_locked(&id2, &cmd))
            .await
            .map_err(|e| e.to_string())?;
        if let Ok((_, true)) = &result {
            self.schedule(id.clone(), self.clock.now());
        }
        result.map(|(m, _)| m)
    }

    /// Applies a command; returns the message and whether to deliver now (blocking I/O).
    pub(super) fn change_locked(
        &self,
        id: &QueueId,
        cmd: &QueueCommand,
    ) -> Result<(String, bool), String> {
        let not_found = |e: SpoolError| match e {
            SpoolError::NotFound(_) => format!("no queued message {id}"),
            e => e.to_string(),
        };
        match cmd {
            QueueCommand::Delete(_) => {
                let env = self.spool.envelope(id).map_err(not_found)?;
                self.history.record(&env, Left::Deleted, self.clock.now());
                self.spool.remove(id).map_err(not_found)?;
                tracing::info!(queue_id = %id, "deleted by the administrator");
                Ok((format!("{id} deleted"), false))
            }
            QueueCommand::Bounce(_) => {
                let (mut env, body) = self.spool.load(id).map_err(not_found)?;
                let now = self.clock.now();
                for r in env.recipients.iter_mut().filter(|r| r.is_pending()) {
                    r.failed(
                        now,
                        Failure::local(
                            EnhancedCode(5, 0, 0),
                            "returned to sender by the administrator",
                        ),
                    );
                }
                tracing::info!(queue_id = %id, "bounced by the administrator");
                self.finish(env, &kurier_spool::MessageData::in_memory(body));
                Ok((format!("{id} returned to sender"), false))
            }
            QueueCommand::Flush(_) | QueueCommand::Hold(_) | QueueCommand::Release(_) => {
                let mut env = self.spool.envelope(id).map_err(not_found)?;
                let (message, deliver) = match cmd {
                    QueueCommand::Hold(_) => {
                        env.hold = true;
                        (format!("{id} held"), false)
                    }
                    QueueCommand::Release(_) => {
                        env.hold = false;
                        (format!("{id} released{}", self.disabled_note()), true)
                    }
                    _ if env.hold => return Err(format!("{id} is on hold (release it first)")),
                    _ => (
                        format!(
                            "{id} scheduled for immediate delivery{}",
                            self.disabled_note()
                        ),
                        true,
                    ),
                };
                if deliver {
                    for r in env.recipients.iter_mut().filter(|r| r.is_pending()) {
                        r.next_attempt = 0;
                    }
                }
                self.spool.update(&env).map_err(|e| e.to_string())?;
                Ok((message, deliver))
            }
        }
    }
}
