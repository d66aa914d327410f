//! A queue in memory, for tests of the code that drives a [`Store`]: the same contract as
//! the spool on disk (an id is never overwritten, state supersedes, removal is final) and a
//! switch that makes writes fail as a full disk does.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::envelope::{Envelope, QueueId};
use crate::message_data::MessageData;
use crate::store::{SpoolError, Store};

/// Messages held in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    messages: Mutex<BTreeMap<QueueId, (Envelope, Vec<u8>)>>,
    full: AtomicBool,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// From now on, writes fail with [`SpoolError::NoSpace`] (or succeed again).
    pub fn set_full(&self, full: bool) {
        self.full.store(full, Ordering::SeqCst);
    }

    /// Every message held, oldest first.
    pub fn all(&self) -> Vec<(Envelope, Vec<u8>)> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<QueueId, (Envelope, Vec<u8>)>> {
        self.messages.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_space(&self, id: &QueueId) -> Result<(), SpoolError> {
        if self.full.load(Ordering::SeqCst) {
            return Err(SpoolError::NoSpace {
                path: PathBuf::from(id.as_str()),
            });
        }
        Ok(())
    }
}

impl Store for MemoryStore {
    fn commit(&self, envelope: &Envelope, body: &[u8]) -> Result<(), SpoolError> {
        self.check_space(&envelope.id)?;
        let mut messages = self.lock();
        if messages.contains_key(&envelope.id) {
            return Err(SpoolError::Io {
                path: PathBuf::from(envelope.id.as_str()),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "queue id already in use",
                ),
            });
        }
        messages.insert(envelope.id.clone(), (envelope.clone(), body.to_vec()));
        Ok(())
    }

    fn update(&self, envelope: &Envelope) -> Result<(), SpoolError> {
        self.check_space(&envelope.id)?;
        match self.lock().get_mut(&envelope.id) {
            Some((env, _)) => {
                *env = envelope.clone();
                Ok(())
            }
            None => Err(SpoolError::NotFound(envelope.id.clone())),
        }
    }

    fn load(&self, id: &QueueId) -> Result<(Envelope, Vec<u8>), SpoolError> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| SpoolError::NotFound(id.clone()))
    }

    fn message(&self, id: &QueueId) -> Result<(Envelope, MessageData), SpoolError> {
        self.load(id).map(|(e, b)| (e, MessageData::in_memory(b)))
    }

    fn envelope(&self, id: &QueueId) -> Result<Envelope, SpoolError> {
        self.load(id).map(|(e, _)| e)
    }

    fn remove(&self, id: &QueueId) -> Result<(), SpoolError> {
        self.lock()
            .remove(id)
            .map(|_| ())
            .ok_or_else(|| SpoolError::NotFound(id.clone()))
    }

    fn ids(&self) -> Result<Vec<QueueId>, SpoolError> {
        Ok(self.lock().keys().cloned().collect())
    }
}
