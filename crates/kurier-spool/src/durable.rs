//! The one durable file write: write a temporary file, fsync it, rename it over the
//! destination, fsync the directory.
//!
//! After [`write_atomic`] returns, the destination holds the new content and survives a
//! crash; before it returns, the destination holds the old content (or nothing). A reader
//! never sees a half-written file, and a crash never leaves half a key or half a users file.
//! The spool's queue files, the users file, DKIM keys, the TLS key and certificate and the
//! greylist state are all written through it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// How [`write_atomic`] writes.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Permission bits of the new file (the process umask still applies).
    pub mode: u32,
    /// Where the temporary file goes (the destination's directory when `None`); it must be
    /// on the same file system. The spool uses its `tmp/`, which recovery empties.
    pub tmp_dir: Option<PathBuf>,
    /// Owner and group to give the file before it appears under its name (a root-run
    /// command writing a file for the unprivileged server).
    pub owner: Option<(u32, u32)>,
    /// Replace an existing destination (`true`), or fail with `AlreadyExists`.
    pub replace: bool,
}

impl WriteOptions {
    /// Readable by the owner only (keys, password hashes, queue files), replacing.
    pub fn private() -> WriteOptions {
        WriteOptions {
            mode: 0o600,
            tmp_dir: None,
            owner: None,
            replace: true,
        }
    }

    /// Readable by everyone (certificates), replacing.
    pub fn public() -> WriteOptions {
        WriteOptions {
            mode: 0o644,
            ..WriteOptions::private()
        }
    }
}

/// Writes `parts` one after the other into `dest`, durably and atomically (see the module
/// documentation). Taking the content in parts lets callers write a header, an envelope and
/// a message body without first joining them into one buffer.
pub fn write_atomic(dest: &Path, parts: &[&[u8]], options: &WriteOptions) -> io::Result<()> {
    write_atomic_with(dest, parts, None, options)
}

/// [`write_atomic`], with the content of `tail` (its first `len` octets) after the parts:
/// a large message the receiver wrote to a file while it arrived is copied by the kernel
/// (copy_file_range), never read into memory.
pub fn write_atomic_with(
    dest: &Path,
    parts: &[&[u8]],
    tail: Option<(&File, u64)>,
    options: &WriteOptions,
) -> io::Result<()> {
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = dest
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut random = [0u8; 6];
    let _ = getrandom::fill(&mut random);
    let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = options.tmp_dir.as_deref().unwrap_or(dir).join(format!(
        ".{}.{}.{suffix}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        // A fresh random name, created exclusively (O_EXCL): a link planted in the directory
        // is never followed, and nothing existing is truncated.
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(options.mode)
            .open(&tmp)?;
        for part in parts {
            f.write_all(part)?;
        }
        if let Some((mut src, len)) = tail {
            src.seek(SeekFrom::Start(0))?;
            let copied = io::copy(&mut src.take(len), &mut f)?;
            if copied != len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{copied} of {len} octets copied"),
                ));
            }
        }
        // On the descriptor, not the name: whoever can write the directory could have put a
        // link in the temporary file's place by now.
        if let Some((uid, gid)) = options.owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        f.sync_all()?;
        drop(f);
        if options.replace {
            fs::rename(&tmp, dest)?;
        } else {
            // link(2) refuses an existing name: nothing is overwritten.
            fs::hard_link(&tmp, dest)?;
            fs::remove_file(&tmp)?;
        }
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Fsyncs a directory, so a rename or a new name in it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_parts_replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("key.pem");
        write_atomic(&dest, &[b"one ", b"two"], &WriteOptions::private()).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"one two");
        let mode = fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        write_atomic(&dest, &[b"three"], &WriteOptions::private()).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"three");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn without_replace_an_existing_file_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("k");
        let once = WriteOptions {
            replace: false,
            ..WriteOptions::private()
        };
        write_atomic(&dest, &[b"first"], &once).unwrap();
        let e = write_atomic(&dest, &[b"second"], &once).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&dest).unwrap(), b"first");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_write_leaves_the_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("state.json");
        fs::write(&dest, b"old").unwrap();
        let elsewhere = WriteOptions {
            tmp_dir: Some(dir.path().join("missing")),
            ..WriteOptions::private()
        };
        assert!(write_atomic(&dest, &[b"new"], &elsewhere).is_err());
        assert_eq!(fs::read(&dest).unwrap(), b"old");
    }
}
