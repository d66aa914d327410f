//! The bytes of one message: a start in memory, then the rest in a file. A message being
//! received keeps its start (with the header section) in memory and the rest, for a large
//! one, in an unnamed file it was written to while it arrived; a queued message is a region
//! of its queue file. The receiver's checks and signing, the spool and delivery read it in
//! chunks, so a 25 MiB message never needs 25 MiB of memory on its way in or out.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// What a chunk handed to [`MessageData::for_each_chunk`] is at most.
const CHUNK: usize = 64 * 1024;

/// A message: `head`, then `len` octets of a file from an offset.
#[derive(Debug, Clone)]
pub struct MessageData {
    /// The start of the message (for one being received: with the whole header section;
    /// empty for one read from the queue). Shared: handing the message to a blocking task
    /// or a delivery copies nothing.
    head: Arc<Vec<u8>>,
    rest: Option<Rest>,
}

#[derive(Debug, Clone)]
struct Rest {
    file: Arc<File>,
    offset: u64,
    len: u64,
}

impl MessageData {
    /// A message held whole in memory.
    pub fn in_memory(bytes: Vec<u8>) -> MessageData {
        MessageData::shared(Arc::new(bytes))
    }

    /// A message held whole in memory, shared with others who read it.
    pub fn shared(bytes: Arc<Vec<u8>>) -> MessageData {
        MessageData {
            head: bytes,
            rest: None,
        }
    }

    /// The start of the message held in memory (all of it for [`MessageData::in_memory`]).
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// The start, to change in place (copied first only if it is shared).
    pub fn head_mut(&mut self) -> &mut Vec<u8> {
        Arc::make_mut(&mut self.head)
    }

    /// The start as a buffer of its own (copied only if it is shared).
    pub fn into_head(self) -> Vec<u8> {
        Arc::unwrap_or_clone(self.head)
    }

    /// A message whose octets after `head` are the first `len` of `file`.
    pub fn with_rest(head: Vec<u8>, file: Arc<File>, len: u64) -> MessageData {
        MessageData {
            head: Arc::new(head),
            rest: Some(Rest {
                file,
                offset: 0,
                len,
            }),
        }
    }

    /// A message that is `len` octets of `file` from `offset` (a queue file's body).
    pub fn in_file(file: File, offset: u64, len: u64) -> MessageData {
        MessageData {
            head: Arc::new(Vec::new()),
            rest: Some(Rest {
                file: Arc::new(file),
                offset,
                len,
            }),
        }
    }

    /// The message's size in octets.
    pub fn len(&self) -> u64 {
        self.head.len() as u64 + self.rest.as_ref().map_or(0, |r| r.len)
    }

    /// True for an empty message.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file holding the octets after the head (from its start), and how many there
    /// are; `None` when the message is all in memory or read from the queue.
    pub fn rest(&self) -> Option<(&File, u64)> {
        self.rest
            .as_ref()
            .filter(|r| r.offset == 0)
            .map(|r| (r.file.as_ref(), r.len))
    }

    /// True when part of the message is in a file (reading it is blocking I/O).
    pub fn has_file(&self) -> bool {
        self.rest.is_some()
    }

    /// The octets at `pos` of the message, at most `max` of them (fewer only at its end):
    /// for a reader that must wait between chunks (a socket), where
    /// [`MessageData::for_each_chunk`]'s callback cannot.
    pub fn read_at(&self, pos: u64, max: usize) -> io::Result<Vec<u8>> {
        let head = self.head.len() as u64;
        if pos < head {
            let start = usize::try_from(pos).unwrap_or(usize::MAX);
            let end = start.saturating_add(max).min(self.head.len());
            return Ok(self.head[start..end].to_vec());
        }
        let Some(rest) = &self.rest else {
            return Ok(Vec::new());
        };
        let at = pos - head;
        let want = usize::try_from(rest.len.saturating_sub(at)).map_or(max, |n| n.min(max));
        let mut buf = vec![0u8; want];
        let mut filled = 0;
        while filled < want {
            let n = rest
                .file
                .read_at(&mut buf[filled..], rest.offset + at + filled as u64)?;
            if n == 0 {
                return Err(short_file());
            }
            filled += n;
        }
        Ok(buf)
    }

    /// The whole message in one buffer (a queue command showing it, a report carrying it).
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(usize::try_from(self.len()).unwrap_or(0));
        self.for_each_chunk(0, |c| out.extend_from_slice(c))?;
        Ok(out)
    }

    /// The whole message in one buffer, for one held in memory; `None` for one with a rest
    /// on disk.
    pub fn as_memory(&self) -> Option<&Arc<Vec<u8>>> {
        self.rest.is_none().then_some(&self.head)
    }

    /// Calls `f` with the message's octets from offset `from` (within the head) to the end,
    /// in order, in chunks of at most 64 KiB read from the file (positioned reads: the
    /// file's offset is left alone).
    pub fn for_each_chunk(&self, from: usize, mut f: impl FnMut(&[u8])) -> io::Result<()> {
        if let Some(head) = self.head.get(from..) {
            head.chunks(CHUNK).for_each(&mut f);
        }
        let Some(rest) = &self.rest else {
            return Ok(());
        };
        let mut buf = vec![0u8; CHUNK];
        let mut at = 0u64;
        while at < rest.len {
            let want = usize::try_from(rest.len - at).map_or(CHUNK, |n| n.min(CHUNK));
            let n = rest.file.read_at(&mut buf[..want], rest.offset + at)?;
            if n == 0 {
                return Err(short_file());
            }
            f(&buf[..n]);
            at += n as u64;
        }
        Ok(())
    }
}

fn short_file() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "message data file is shorter than the message",
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;

    #[test]
    fn chunks_run_from_the_head_through_the_file() {
        let mut file = tempfile::tempfile().unwrap();
        let rest = vec![b'r'; 200_000];
        file.write_all(&rest).unwrap();
        file.write_all(b"beyond the message").unwrap();
        let data =
            MessageData::with_rest(b"Subject: s\r\n\r\nhead".to_vec(), Arc::new(file), 200_000);
        assert_eq!(data.len(), 18 + 200_000);
        let mut seen = Vec::new();
        data.for_each_chunk(14, |c| {
            assert!(c.len() <= CHUNK);
            seen.extend_from_slice(c)
        })
        .unwrap();
        assert_eq!(&seen[..4], b"head");
        assert_eq!(&seen[4..], &rest[..]);
        // A file shorter than the message is an error, not a short message.
        let short = MessageData::with_rest(Vec::new(), Arc::new(tempfile::tempfile().unwrap()), 5);
        assert!(short.for_each_chunk(0, |_| {}).is_err());
        assert!(short.read_at(0, 10).is_err());
        // Positioned reads give the same octets, across the border.
        let mut pos = 0;
        let mut read = Vec::new();
        while pos < data.len() {
            let piece = data.read_at(pos, 7777).unwrap();
            assert!(!piece.is_empty() && piece.len() <= 7777);
            pos += piece.len() as u64;
            read.extend(piece);
        }
        assert_eq!(read, data.to_vec().unwrap());
        assert_eq!(&read[14..], &seen[..]);
        // A region of a file from an offset.
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"KURIER-QUEUE envelope\nthe body\r\n")
            .unwrap();
        let queued = MessageData::in_file(file, 22, 10);
        assert_eq!(queued.to_vec().unwrap(), b"the body\r\n");
        assert!(queued.rest().is_none() && queued.has_file());
    }
}
