//! The spool directory: commit, update, load, remove, recover.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use crate::durable::{DirSync, WriteOptions, write_atomic_with};
use crate::envelope::{Envelope, QueueId};
use crate::message_data::MessageData;
use crate::v1::EnvelopeV1;

/// The header of a queue file in the format written now.
const MAGIC: &str = "KURIER-QUEUE 2";
/// The header of format 1, still read (see [`crate::v1`]).
const MAGIC_V1: &str = "KURIER-QUEUE 1";
/// The first line of a state file in the format written now; a format 1 state file is bare
/// JSON and starts with `{`.
const STATE_MAGIC: &[u8] = b"KURIER-STATE 2\n";

/// Spool failures. `NoSpace` is separate so the server can answer 452 4.3.1.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// The file system is full (ENOSPC) or over quota (EDQUOT).
    #[error("no space left on spool device writing {path}")]
    NoSpace {
        /// The file being written.
        path: PathBuf,
    },
    /// Any other I/O error.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A queue or state file failed validation.
    #[error("corrupt spool file {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No message with this id.
    #[error("no queued message {0}")]
    NotFound(QueueId),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| match source.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => SpoolError::NoSpace {
            path: path.to_path_buf(),
        },
        _ => SpoolError::Io {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// What the code that delivers mail needs of a queue. [`Spool`] is the one on disk;
/// [`crate::MemoryStore`] holds messages in memory for tests of that code.
pub trait Store: Send + Sync {
    /// Makes a new message durable (it must not exist yet).
    fn commit(&self, envelope: &Envelope, body: &[u8]) -> Result<(), SpoolError>;
    /// Records delivery progress.
    fn update(&self, envelope: &Envelope) -> Result<(), SpoolError>;
    /// The current envelope and the bytes.
    fn load(&self, id: &QueueId) -> Result<(Envelope, Vec<u8>), SpoolError>;
    /// The current envelope and the bytes to read in chunks (see [`Spool::message`]).
    fn message(&self, id: &QueueId) -> Result<(Envelope, MessageData), SpoolError>;
    /// The current envelope only.
    fn envelope(&self, id: &QueueId) -> Result<Envelope, SpoolError>;
    /// Removes a finished message.
    fn remove(&self, id: &QueueId) -> Result<(), SpoolError>;
    /// Ids of all queued messages, oldest first.
    fn ids(&self) -> Result<Vec<QueueId>, SpoolError>;
}

impl Store for Spool {
    fn commit(&self, envelope: &Envelope, body: &[u8]) -> Result<(), SpoolError> {
        Spool::commit(self, envelope, body)
    }
    fn update(&self, envelope: &Envelope) -> Result<(), SpoolError> {
        Spool::update(self, envelope)
    }
    fn load(&self, id: &QueueId) -> Result<(Envelope, Vec<u8>), SpoolError> {
        Spool::load(self, id)
    }
    fn message(&self, id: &QueueId) -> Result<(Envelope, MessageData), SpoolError> {
        Spool::message(self, id)
    }
    fn envelope(&self, id: &QueueId) -> Result<Envelope, SpoolError> {
        Spool::envelope(self, id)
    }
    fn remove(&self, id: &QueueId) -> Result<(), SpoolError> {
        Spool::remove(self, id)
    }
    fn ids(&self) -> Result<Vec<QueueId>, SpoolError> {
        Spool::ids(self)
    }
}

/// What startup recovery found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Envelopes of the messages still queued, oldest first.
    pub queued: Vec<Envelope>,
    /// Unacknowledged files removed from `tmp/`.
    pub removed_tmp: usize,
    /// Files moved to `corrupt/`.
    pub quarantined: usize,
}

/// A spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    /// The queue directory's shared fsync: concurrent commits share a directory fsync.
    queue_sync: Option<Arc<DirSync>>,
    /// The same for the state directory.
    state_sync: Option<Arc<DirSync>>,
}

impl Spool {
    /// Opens (creating if needed) the spool at `root` and recovers its content: empties
    /// `tmp/`, validates every queued message and quarantines the damaged ones.
    pub fn open(root: impl Into<PathBuf>) -> Result<(Spool, Recovery), SpoolError> {
        let mut spool = Spool::attach(root);
        // Owner only, whatever the umask: queue files hold whole messages (and DSNs their
        // originals); the files themselves are written 0600 (`WriteOptions::private`).
        for dir in ["tmp", "queue", "state", "corrupt"] {
            let p = spool.root.join(dir);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&p)
                .map_err(io_err(&p))?;
        }
        spool.open_dir_syncs();
        let recovery = spool.recover()?;
        Ok((spool, recovery))
    }

    /// Uses an existing spool without recovery, for readers such as `kurier queue list`
    /// while a server runs (recovery would delete the server's files in progress).
    pub fn attach(root: impl Into<PathBuf>) -> Spool {
        let mut spool = Spool {
            root: root.into(),
            queue_sync: None,
            state_sync: None,
        };
        spool.open_dir_syncs();
        spool
    }

    /// Opens the directories' shared fsyncs; a directory that cannot be opened now is
    /// opened by path at each write instead (and the write reports why it failed).
    fn open_dir_syncs(&mut self) {
        let open = |dir: &str| DirSync::open(&self.root.join(dir)).ok().map(Arc::new);
        self.queue_sync = open("queue");
        self.state_sync = open("state");
    }

    /// The spool's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn queue_path(&self, id: &QueueId) -> PathBuf {
        self.root.join("queue").join(id.as_str())
    }

    fn state_path(&self, id: &QueueId) -> PathBuf {
        self.root.join("state").join(id.as_str())
    }

    /// Makes a new message durable. Returns only after the file and its directory entry are
    /// on disk; the caller may then acknowledge the message.
    pub fn commit(&self, envelope: &Envelope, body: &[u8]) -> Result<(), SpoolError> {
        let head =
            encode_queue_head(envelope, body.len()).map_err(|reason| SpoolError::Corrupt {
                path: self.queue_path(&envelope.id),
                reason,
            })?;
        let dest = self.queue_path(&envelope.id);
        self.write_durably(&[&head, body], &dest, None, true)
    }

    /// [`Spool::commit`] for a message whose bytes are `parts` followed by the first `len`
    /// octets of `rest`, a file the receiver wrote while the message arrived; the file is
    /// copied by the kernel, not read into memory.
    pub fn commit_with_rest(
        &self,
        envelope: &Envelope,
        parts: &[&[u8]],
        rest: Option<(&File, u64)>,
    ) -> Result<(), SpoolError> {
        let dest = self.queue_path(&envelope.id);
        let rest_len = rest.map_or(0, |r| r.1);
        let body_len = parts.iter().map(|p| p.len() as u64).sum::<u64>() + rest_len;
        let head = usize::try_from(body_len)
            .map_err(|e| e.to_string())
            .and_then(|len| encode_queue_head(envelope, len))
            .map_err(|reason| SpoolError::Corrupt {
                path: dest.clone(),
                reason,
            })?;
        let mut all = vec![head.as_slice()];
        all.extend_from_slice(parts);
        self.write_durably(&all, &dest, rest, true)
    }

    /// A file for message data in transit, in `tmp/` (same file system as the queue, so the
    /// copy at commit stays in the kernel) and already unlinked: it vanishes with its last
    /// descriptor, whatever happens to the connection or the server.
    pub fn transit_file(&self) -> Result<File, SpoolError> {
        let mut random = [0u8; 8];
        let _ = getrandom::fill(&mut random);
        let name: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let path = self.root.join("tmp").join(format!(".transit.{name}"));
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        fs::remove_file(&path).map_err(io_err(&path))?;
        Ok(file)
    }

    /// Records delivery progress (the whole envelope, atomically).
    pub fn update(&self, envelope: &Envelope) -> Result<(), SpoolError> {
        let dest = self.state_path(&envelope.id);
        let json = serde_json::to_vec(envelope).map_err(|e| SpoolError::Corrupt {
            path: dest.clone(),
            reason: e.to_string(),
        })?;
        self.write_durably(&[STATE_MAGIC, &json], &dest, None, false)
    }

    /// The one durable write, with the temporary file in `tmp/` (emptied by recovery). A
    /// new message (in `queue/`) never replaces a file: a queue id already in use is
    /// `AlreadyExists`. A state file (in `state/`) replaces the last one.
    fn write_durably(
        &self,
        parts: &[&[u8]],
        dest: &Path,
        tail: Option<(&File, u64)>,
        new_message: bool,
    ) -> Result<(), SpoolError> {
        let dir_sync = match new_message {
            true => self.queue_sync.clone(),
            false => self.state_sync.clone(),
        };
        let options = WriteOptions {
            tmp_dir: Some(self.root.join("tmp")),
            replace: !new_message,
            dir_sync,
            ..WriteOptions::private()
        };
        write_atomic_with(dest, parts, tail, &options).map_err(io_err(dest))
    }

    /// Loads a message: its current envelope and its bytes.
    pub fn load(&self, id: &QueueId) -> Result<(Envelope, Vec<u8>), SpoolError> {
        let path = self.queue_path(id);
        let mut data = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => SpoolError::NotFound(id.clone()),
                _ => io_err(&path)(e),
            })?;
        let (mut envelope, body_start) =
            decode_queue_file(&data).map_err(|reason| SpoolError::Corrupt {
                path: path.clone(),
                reason,
            })?;
        if let Some(state) = self.load_state(id)? {
            envelope = state;
        }
        data.drain(..body_start);
        Ok((envelope, data))
    }

    /// A message's current envelope and its bytes as a region of its queue file, which is
    /// read up to the envelope only: delivery reads the body in chunks.
    pub fn message(&self, id: &QueueId) -> Result<(Envelope, MessageData), SpoolError> {
        let path = self.queue_path(id);
        let not_found = |e: io::Error| match e.kind() {
            io::ErrorKind::NotFound => SpoolError::NotFound(id.clone()),
            _ => io_err(&path)(e),
        };
        let mut file = File::open(&path).map_err(not_found)?;
        let file_len = file.metadata().map_err(io_err(&path))?.len();
        let mut head = Vec::with_capacity(QUEUE_LINE_MAX);
        (&mut file)
            .take(QUEUE_LINE_MAX as u64)
            .read_to_end(&mut head)
            .map_err(io_err(&path))?;
        let corrupt = |reason: String| SpoolError::Corrupt {
            path: path.clone(),
            reason,
        };
        // The first line gives the envelope's length: read through its terminator.
        let line = head
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| corrupt("no header line".into()))?;
        let json_len = std::str::from_utf8(&head[..line])
            .ok()
            .and_then(|l| l.split_ascii_whitespace().nth(2))
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| corrupt("bad header lengths".into()))?;
        let envelope_end = (line as u64 + 1).saturating_add(json_len).saturating_add(1);
        if envelope_end > file_len {
            return Err(corrupt("envelope cut short".into()));
        }
        let missing = envelope_end.saturating_sub(head.len() as u64);
        (&mut file)
            .take(missing)
            .read_to_end(&mut head)
            .map_err(io_err(&path))?;
        head.truncate(usize::try_from(envelope_end).unwrap_or(usize::MAX));
        let (mut envelope, body_start) = decode_queue_head(&head, file_len).map_err(corrupt)?;
        if let Some(state) = self.load_state(id)? {
            envelope = state;
        }
        let body_len = file_len - body_start as u64;
        Ok((
            envelope,
            MessageData::in_file(file, body_start as u64, body_len),
        ))
    }

    /// Loads only the current envelope.
    pub fn envelope(&self, id: &QueueId) -> Result<Envelope, SpoolError> {
        if let Some(state) = self.load_state(id)?
            && self.queue_path(id).exists()
        {
            return Ok(state);
        }
        self.load(id).map(|(e, _)| e)
    }

    fn load_state(&self, id: &QueueId) -> Result<Option<Envelope>, SpoolError> {
        let path = self.state_path(id);
        match fs::read(&path) {
            Ok(bytes) => decode_state_file(&bytes)
                .map(Some)
                .map_err(|reason| SpoolError::Corrupt { path, reason }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Removes a finished message. The state file goes first, so a crash in between leaves
    /// the original envelope, never a state file without its message.
    pub fn remove(&self, id: &QueueId) -> Result<(), SpoolError> {
        let state = self.state_path(id);
        match fs::remove_file(&state) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&state)(e)),
        }
        let path = self.queue_path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(SpoolError::NotFound(id.clone())),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Ids of all queued messages, oldest first.
    pub fn ids(&self) -> Result<Vec<QueueId>, SpoolError> {
        let dir = self.root.join("queue");
        let mut ids: Vec<QueueId> = fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| QueueId::parse(&e.file_name().to_string_lossy()))
            .collect();
        ids.sort();
        Ok(ids)
    }

    fn recover(&self) -> Result<Recovery, SpoolError> {
        let mut rec = Recovery::default();
        let tmp = self.root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(io_err(&tmp))?.flatten() {
            if fs::remove_file(entry.path()).is_ok() {
                rec.removed_tmp += 1;
            }
        }
        for id in self.ids()? {
            match self.load(&id) {
                Ok((envelope, _)) if envelope.id == id => rec.queued.push(envelope),
                Ok(_) => {
                    self.quarantine(&id)?;
                    rec.quarantined += 1;
                }
                Err(SpoolError::Corrupt { .. }) => {
                    self.quarantine(&id)?;
                    rec.quarantined += 1;
                }
                Err(e) => return Err(e),
            }
        }
        // State files whose message is gone (a crash during remove) are leftovers.
        let state_dir = self.root.join("state");
        for entry in fs::read_dir(&state_dir)
            .map_err(io_err(&state_dir))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().to_string();
            if QueueId::parse(&name).is_none_or(|id| !self.queue_path(&id).exists()) {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(rec)
    }

    fn quarantine(&self, id: &QueueId) -> Result<(), SpoolError> {
        let corrupt = self.root.join("corrupt");
        for (src, suffix) in [(self.queue_path(id), ""), (self.state_path(id), ".state")] {
            if src.exists() {
                let dest = corrupt.join(format!("{id}{suffix}"));
                fs::rename(&src, &dest).map_err(io_err(&src))?;
            }
        }
        sync_dir(&self.root.join("queue"))
    }
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    crate::durable::sync_dir(dir).map_err(io_err(dir))
}

/// The start of a queue file: the header line and the envelope, up to the body.
fn encode_queue_head(envelope: &Envelope, body_len: usize) -> Result<Vec<u8>, String> {
    let json = serde_json::to_vec(envelope).map_err(|e| e.to_string())?;
    let mut head = format!("{MAGIC} {} {body_len}\n", json.len()).into_bytes();
    head.extend_from_slice(&json);
    head.push(b'\n');
    Ok(head)
}

/// A whole queue file in the format written now (what [`Spool::commit`] writes), for
/// tests and the fuzzer's round trip.
pub fn encode_queue_file(envelope: &Envelope, body: &[u8]) -> Result<Vec<u8>, String> {
    let mut file = encode_queue_head(envelope, body.len())?;
    file.extend_from_slice(body);
    Ok(file)
}

/// Decodes a queue file: the header line with its lengths, the envelope (JSON, format 2 or
/// format 1 upgraded), and the exact body length. Returns the envelope and where the body
/// starts. Public so that it can be fuzzed: it reads whatever a damaged disk holds.
pub fn decode_queue_file(data: &[u8]) -> Result<(Envelope, usize), String> {
    decode_queue_head(data, data.len() as u64)
}

/// What comes before the body in a queue file of `file_len` octets: at most its first line,
/// the envelope and its terminator (the header line says how long), read without the body.
const QUEUE_LINE_MAX: usize = 128;

/// [`decode_queue_file`] from the start of a queue file (through the envelope at least) and
/// the file's length: the body is not read.
fn decode_queue_head(data: &[u8], file_len: u64) -> Result<(Envelope, usize), String> {
    let nl = data
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no header line")?;
    let header = std::str::from_utf8(&data[..nl]).map_err(|_| "header is not UTF-8")?;
    let (rest, v1) = match header.strip_prefix(MAGIC) {
        Some(rest) => (rest, false),
        None => (header.strip_prefix(MAGIC_V1).ok_or("bad magic")?, true),
    };
    let mut nums = rest.split_ascii_whitespace().map(str::parse::<usize>);
    let (Some(Ok(json_len)), Some(Ok(body_len)), None) = (nums.next(), nums.next(), nums.next())
    else {
        return Err("bad header lengths".into());
    };
    let json_start = nl + 1;
    let body_start = json_start
        .checked_add(json_len)
        .and_then(|n| n.checked_add(1))
        .ok_or("length overflow")?;
    let total = body_start.checked_add(body_len).ok_or("length overflow")?;
    if file_len != total as u64 {
        return Err(format!("file is {file_len} bytes, header says {total}"));
    }
    if data.len() < body_start {
        return Err("envelope cut short".into());
    }
    if data[body_start - 1] != b'\n' {
        return Err("missing envelope terminator".into());
    }
    let json = &data[json_start..body_start - 1];
    let envelope = if v1 {
        decode_v1(json)?
    } else {
        serde_json::from_slice(json).map_err(|e| e.to_string())?
    };
    if envelope.size != body_len as u64 {
        return Err("envelope size does not match body".into());
    }
    Ok((envelope, body_start))
}

/// Decodes a state file of either format.
fn decode_state_file(data: &[u8]) -> Result<Envelope, String> {
    match data.strip_prefix(STATE_MAGIC) {
        Some(json) => serde_json::from_slice(json).map_err(|e| e.to_string()),
        None if data.first() == Some(&b'{') => decode_v1(data),
        None => Err("bad state file header".into()),
    }
}

fn decode_v1(json: &[u8]) -> Result<Envelope, String> {
    serde_json::from_slice::<EnvelopeV1>(json)
        .map_err(|e| format!("format 1: {e}"))?
        .upgrade()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::envelope::{Delivered, RecipientState};
    use kurier_smtp::{Mailbox, ReversePath};

    fn mailbox(s: &str) -> Mailbox {
        Mailbox::parse(s).unwrap()
    }

    fn envelope(body: &[u8]) -> Envelope {
        let mut env = Envelope::new(
            QueueId::generate(),
            1,
            ReversePath::Mailbox(mailbox("a@x.test")),
            vec![
                RecipientState::new(mailbox("u@local.test"), true),
                RecipientState::new(mailbox("v@remote.test"), false),
            ],
            body.len() as u64,
        );
        env.client_ip = Some([127, 0, 0, 1].into());
        env.helo = "c".into();
        env
    }

    #[test]
    fn commit_then_recover() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, rec) = Spool::open(dir.path()).unwrap();
        assert!(rec.queued.is_empty());
        let body = b"Subject: x\r\n\r\nhello\r\n";
        let env = envelope(body);
        spool.commit(&env, body).unwrap();
        // An id is never overwritten, and the refused copy leaves nothing behind.
        match spool.commit(&env, b"other") {
            Err(SpoolError::Io { source, .. }) => {
                assert_eq!(source.kind(), io::ErrorKind::AlreadyExists)
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(spool.load(&env.id).unwrap().1, body);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        drop(spool);
        let (spool, rec) = Spool::open(dir.path()).unwrap();
        assert_eq!(rec.queued, vec![env.clone()]);
        let (e, b) = spool.load(&env.id).unwrap();
        assert_eq!(e, env);
        assert_eq!(b, body);
        // Read as a region of its file: the same envelope and bytes.
        let (e, data) = spool.message(&env.id).unwrap();
        assert_eq!(e, env);
        assert_eq!(data.len(), body.len() as u64);
        assert_eq!(data.to_vec().unwrap(), body);
        // A large envelope (longer than the first read) and a damaged file.
        let mut big = envelope(body);
        big.helo = "h".repeat(5000);
        spool.commit(&big, body).unwrap();
        let (e, data) = spool.message(&big.id).unwrap();
        assert_eq!((e, data.to_vec().unwrap()), (big.clone(), body.to_vec()));
        let path = dir.path().join("queue").join(big.id.as_str());
        let file = fs::read(&path).unwrap();
        fs::write(&path, &file[..file.len() - 1]).unwrap();
        assert!(matches!(
            spool.message(&big.id),
            Err(SpoolError::Corrupt { .. })
        ));
        fs::write(&path, &file[..100]).unwrap();
        assert!(matches!(
            spool.message(&big.id),
            Err(SpoolError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_message_in_parts_and_a_transit_file_is_committed_whole() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        let mut rest = spool.transit_file().unwrap();
        assert_eq!(
            fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0,
            "the transit file has no name"
        );
        let tail = b"middle of the body\r\n".repeat(10_000);
        rest.write_all(&tail).unwrap();
        rest.write_all(b"not part of it").unwrap();
        let mut whole = b"Received: r\r\nSubject: x\r\n\r\n".to_vec();
        whole.extend_from_slice(&tail);
        let env = envelope(&whole);
        let head: [&[u8]; 2] = [b"Received: r\r\n", b"Subject: x\r\n\r\n"];
        spool
            .commit_with_rest(&env, &head, Some((&rest, tail.len() as u64)))
            .unwrap();
        let (e, b) = spool.load(&env.id).unwrap();
        assert_eq!((e, b), (env, whole));
        let mut env = envelope(b"x");
        env.size = 10_000_002;
        // A file shorter than promised is an error, and nothing is queued.
        let missing = spool.commit_with_rest(&env, &head, Some((&rest, 10_000_000)));
        assert!(missing.is_err());
        assert!(matches!(spool.load(&env.id), Err(SpoolError::NotFound(_))));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn state_supersedes_and_remove_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        let mut env = envelope(b"x\r\n");
        spool.commit(&env, b"x\r\n").unwrap();
        env.recipients[0].delivered(
            2,
            Delivered::Local {
                files: vec!["/m/new/1".into()],
            },
        );
        env.recipients[1].attempts = 1;
        spool.update(&env).unwrap();
        let (_, rec) = Spool::open(dir.path()).unwrap();
        assert_eq!(rec.queued, vec![env.clone()]);
        assert_eq!(spool.envelope(&env.id).unwrap(), env);
        spool.remove(&env.id).unwrap();
        assert!(matches!(spool.load(&env.id), Err(SpoolError::NotFound(_))));
        assert!(matches!(
            spool.remove(&env.id),
            Err(SpoolError::NotFound(_))
        ));
        assert!(spool.ids().unwrap().is_empty());
    }

    #[test]
    fn recovery_empties_tmp_and_quarantines_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        let good = envelope(b"good\r\n");
        spool.commit(&good, b"good\r\n").unwrap();
        let bad = envelope(b"bad body\r\n");
        spool.commit(&bad, b"bad body\r\n").unwrap();
        // Truncate the second file, as a disk fault would.
        let path = dir.path().join("queue").join(bad.id.as_str());
        let data = fs::read(&path).unwrap();
        fs::write(&path, &data[..data.len() - 3]).unwrap();
        fs::write(dir.path().join("queue").join("not-an-id"), b"junk").unwrap();
        fs::write(dir.path().join("tmp").join("half-written"), b"partial").unwrap();
        fs::write(
            dir.path().join("state").join(QueueId::generate().as_str()),
            b"{}",
        )
        .unwrap();
        let (_, rec) = Spool::open(dir.path()).unwrap();
        assert_eq!(rec.queued, vec![good]);
        assert_eq!(rec.quarantined, 1);
        assert_eq!(rec.removed_tmp, 1);
        assert!(dir.path().join("corrupt").join(bad.id.as_str()).exists());
        assert_eq!(fs::read_dir(dir.path().join("state")).unwrap().count(), 0);
    }

    #[test]
    fn spool_directories_and_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("spool");
        let (spool, _) = Spool::open(&root).unwrap();
        let env = envelope(b"x\r\n");
        spool.commit(&env, b"x\r\n").unwrap();
        spool.update(&env).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        for d in ["", "tmp", "queue", "state", "corrupt"] {
            assert_eq!(mode(&root.join(d)), 0o700, "{d}");
        }
        assert_eq!(mode(&root.join("queue").join(env.id.as_str())), 0o600);
        assert_eq!(mode(&root.join("state").join(env.id.as_str())), 0o600);
    }

    #[test]
    fn parse_rejects_malformed_headers() {
        for bad in [
            &b""[..],
            b"KURIER-QUEUE 1 5\n",
            b"OTHER 1 1 1\n{}\nx",
            b"KURIER-QUEUE 1 2 0\n{}x",
            b"KURIER-QUEUE 1 99999999999999999999999 1\n",
            b"KURIER-QUEUE 2 2 0\n{}\n",
            b"KURIER-QUEUE 3 2 0\n{}\n",
        ] {
            assert!(decode_queue_file(bad).is_err(), "{bad:?}");
        }
    }
}
