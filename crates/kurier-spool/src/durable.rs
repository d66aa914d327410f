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
use std::sync::{Arc, Condvar, Mutex, PoisonError};

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
    /// The destination directory's shared fsync, for a directory written by many at once
    /// (the spool's queue); `None` opens and fsyncs the directory on each write.
    pub dir_sync: Option<Arc<DirSync>>,
}

impl WriteOptions {
    /// Readable by the owner only (keys, password hashes, queue files), replacing.
    pub fn private() -> WriteOptions {
        WriteOptions {
            mode: 0o600,
            tmp_dir: None,
            owner: None,
            replace: true,
            dir_sync: None,
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
            rename_without_replacing(&tmp, dest)?;
        }
        match &options.dir_sync {
            Some(shared) => shared.sync(),
            None => sync_dir(dir),
        }
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Renames `from` to `to` unless `to` exists (`AlreadyExists` then), in one step where
/// the kernel and file system can (renameat2 with RENAME_NOREPLACE), else with link(2),
/// which refuses an existing name too, and an unlink.
fn rename_without_replacing(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::errno::Errno;
        use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
        match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => return Ok(()),
            // A file system or kernel without the flag: the portable way below.
            Err(Errno::EINVAL | Errno::ENOSYS) => {}
            Err(e) => return Err(io::Error::from(e)),
        }
    }
    fs::hard_link(from, to)?;
    fs::remove_file(from)
}

/// Fsyncs a directory, so a rename or a new name in it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// One directory's fsync, shared by the writers that need it at the same moment (group
/// commit). A writer that renamed its file into the directory waits for an fsync that
/// started after its rename: the one running then does not count, the next one covers every
/// writer that arrived meanwhile. Twenty messages committed at once cost a few directory
/// fsyncs, not twenty, and none is acknowledged before its name is on disk.
#[derive(Debug)]
pub struct DirSync {
    dir: File,
    rounds: Mutex<Rounds>,
    finished: Condvar,
}

#[derive(Debug, Default)]
struct Rounds {
    /// Fsyncs started so far; the one running, if any, is number `started`.
    started: u64,
    /// Fsyncs finished so far (they run one at a time, in order).
    finished: u64,
    running: bool,
    /// The last fsync that failed: its waiters get an error, and so do those of an
    /// earlier round that had not yet looked (an error too many is a 4xx, never a loss).
    failed: u64,
}

impl DirSync {
    /// Opens `dir` once; its descriptor is kept for every later fsync.
    pub fn open(dir: &Path) -> io::Result<DirSync> {
        Ok(DirSync {
            dir: File::open(dir)?,
            rounds: Mutex::new(Rounds::default()),
            finished: Condvar::new(),
        })
    }

    /// Returns once an fsync of the directory that started after this call has finished.
    pub fn sync(&self) -> io::Result<()> {
        let mut rounds = self.rounds.lock().unwrap_or_else(PoisonError::into_inner);
        // The first round to start from now on: one already running may predate the
        // caller's rename.
        let needed = rounds.started + 1;
        loop {
            if rounds.finished >= needed {
                return match rounds.failed >= needed {
                    true => Err(io::Error::other("fsync of the directory failed")),
                    false => Ok(()),
                };
            }
            if rounds.running {
                rounds = self
                    .finished
                    .wait(rounds)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            rounds.running = true;
            rounds.started += 1;
            let round = rounds.started;
            drop(rounds);
            let result = self.dir.sync_all();
            rounds = self.rounds.lock().unwrap_or_else(PoisonError::into_inner);
            rounds.running = false;
            rounds.finished = round;
            if result.is_err() {
                rounds.failed = round;
            }
            self.finished.notify_all();
            // `round` is `needed` (the caller's own round is never an earlier one).
            return result;
        }
    }
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
    fn the_shared_directory_fsync_runs_a_round_per_lone_caller_and_serves_a_crowd() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Arc::new(DirSync::open(dir.path()).unwrap());
        let options = WriteOptions {
            replace: false,
            dir_sync: Some(shared.clone()),
            ..WriteOptions::private()
        };
        for i in 0..3 {
            write_atomic(&dir.path().join(format!("m{i}")), &[b"x"], &options).unwrap();
        }
        let rounds = |s: &DirSync| {
            let r = s.rounds.lock().unwrap();
            (r.started, r.finished, r.running)
        };
        assert_eq!(rounds(&shared), (3, 3, false));
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let options = options.clone();
                let dest = dir.path().join(format!("c{i}"));
                std::thread::spawn(move || write_atomic(&dest, &[b"y"], &options))
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        let (started, finished, running) = rounds(&shared);
        assert!(started <= 3 + 16 && started == finished && !running);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 19);
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
