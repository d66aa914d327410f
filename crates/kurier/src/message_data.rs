//! The bytes of one message being received: its start in memory (the header section is
//! there), the rest, for a large message, in an unnamed file it was written to while it
//! arrived. A leaf: the inbound session fills it, the policy's DKIM, ARC and signing code
//! and the spool read it, so a 25 MiB message never needs 25 MiB of memory on its way in.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// What a chunk handed to [`MessageData::for_each_chunk`] is at most.
const CHUNK: usize = 64 * 1024;

/// A message: `head`, then the first `len` octets of `rest`'s file.
#[derive(Debug, Clone)]
pub struct MessageData {
    /// The start of the message, with the whole header section (a message whose header
    /// section does not fit is refused before it gets here).
    pub head: Vec<u8>,
    rest: Option<(Arc<File>, u64)>,
}

impl MessageData {
    /// A message held whole in memory.
    pub fn in_memory(bytes: Vec<u8>) -> MessageData {
        MessageData {
            head: bytes,
            rest: None,
        }
    }

    /// A message whose octets after `head` are the first `len` of `file`.
    pub fn with_rest(head: Vec<u8>, file: Arc<File>, len: u64) -> MessageData {
        MessageData {
            head,
            rest: Some((file, len)),
        }
    }

    /// The message's size in octets.
    pub fn len(&self) -> u64 {
        self.head.len() as u64 + self.rest.as_ref().map_or(0, |r| r.1)
    }

    /// True for an empty message.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file holding the octets after the head, and how many there are; `None` when the
    /// message is all in memory.
    pub fn rest(&self) -> Option<(&File, u64)> {
        self.rest.as_ref().map(|(f, len)| (f.as_ref(), *len))
    }

    /// The whole message in one buffer, for one held in memory; `None` for one with a rest
    /// on disk.
    pub fn as_memory(&self) -> Option<&Vec<u8>> {
        self.rest.is_none().then_some(&self.head)
    }

    /// Calls `f` with the message's octets from offset `from` (within the head) to the end,
    /// in order, in chunks of at most 64 KiB read from the file (positioned reads: the
    /// file's offset is left alone).
    pub fn for_each_chunk(&self, from: usize, mut f: impl FnMut(&[u8])) -> io::Result<()> {
        if let Some(head) = self.head.get(from..) {
            head.chunks(CHUNK).for_each(&mut f);
        }
        let Some((file, len)) = &self.rest else {
            return Ok(());
        };
        let mut buf = vec![0u8; CHUNK];
        let mut at = 0u64;
        while at < *len {
            let want = usize::try_from(*len - at).map_or(CHUNK, |n| n.min(CHUNK));
            let n = file.read_at(&mut buf[..want], at)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "message data file is shorter than the message",
                ));
            }
            f(&buf[..n]);
            at += n as u64;
        }
        Ok(())
    }
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
    }
}
