//! Delivery into Maildir (the format Dovecot, Courier, mutt and others read).
//!
//! A message must appear in `new/` complete or not at all. On Linux Kurier writes it as an
//! unnamed file (`O_TMPFILE`) on the Maildir's file system, fsyncs it, and then gives it its
//! name in `new/` with `linkat`; elsewhere (or where the file system lacks `O_TMPFILE`) it is
//! written to `tmp/` and renamed into `new/`, the classic protocol. Either way the `new/`
//! directory is fsynced before the message counts as delivered. Readers never see a partial
//! file, and a crash loses nothing that was reported delivered. The unnamed-file way needs
//! one directory operation instead of two, which is what a busy server pays for. Files use Unix line
//! ends (LF), as Maildir readers expect; the CRLF → LF conversion is lossless because the
//! server refuses bare CR and LF.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag};

use crate::fsutil::{WriteOptions, sync_dir, write_atomic};

static COUNTER: AtomicU64 = AtomicU64::new(0);
/// Maildirs known to exist, so a delivery does not re-create them every time.
static CREATED: LazyLock<Mutex<HashSet<PathBuf>>> = LazyLock::new(Default::default);
/// Cleared once O_TMPFILE turns out to be unsupported, to stop trying it.
static TMPFILE_WORKS: AtomicBool = AtomicBool::new(true);

/// Where local copies go: the Maildirs on disk ([`Maildirs`]), or a stand-in that tests use
/// to see what was written or to make a write fail.
pub trait LocalDelivery: Send + Sync {
    /// Writes one copy with `headers` in front into the Maildir `folder` (created if
    /// missing), durably; returns the file's path.
    fn write(&self, folder: &Path, headers: &str, message: &[u8]) -> io::Result<PathBuf>;
}

/// The Maildirs on disk, with file names unique to this host.
pub struct Maildirs {
    /// Our host name, part of every file name.
    pub hostname: String,
}

impl LocalDelivery for Maildirs {
    fn write(&self, folder: &Path, headers: &str, message: &[u8]) -> io::Result<PathBuf> {
        deliver(folder, &self.hostname, headers, message)
    }
}

/// The Maildir++ Junk folder of a mailbox (`<maildir>/.Junk`), created with its
/// `maildirfolder` marker, as IMAP servers such as Dovecot expect.
pub fn junk_folder(maildir: &Path) -> PathBuf {
    let folder = maildir.join(".Junk");
    if create(&folder).is_ok() {
        let _ = File::create(folder.join("maildirfolder"));
    }
    folder
}

/// Creates `tmp/`, `new/` and `cur/` under `dir` if missing.
pub fn create(dir: &Path) -> io::Result<()> {
    if CREATED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(dir)
        && dir.join("new").is_dir()
    {
        return Ok(());
    }
    for sub in ["tmp", "new", "cur"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    CREATED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(dir.to_path_buf());
    Ok(())
}

/// A unique file name: `<secs>.M<usecs>P<pid>Q<counter>.<host>` (the maildir.html scheme,
/// with `/` and `:` in the host name escaped).
fn unique_name(host: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let host: String = host.replace('/', "\\057").replace(':', "\\072");
    format!(
        "{}.M{}P{}Q{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        host
    )
}

/// Delivers `headers` followed by `message` (CRLF line ends) into the Maildir at `dir`.
/// Returns the path of the new file.
pub fn deliver(dir: &Path, host: &str, headers: &str, message: &[u8]) -> io::Result<PathBuf> {
    create(dir)?;
    let mut content = Vec::with_capacity(headers.len() + message.len());
    content.extend_from_slice(headers.as_bytes());
    crlf_to_lf(message, &mut content);
    let name = format!("{},S={}", unique_name(host), content.len());
    let new = dir.join("new").join(&name);
    if TMPFILE_WORKS.load(Ordering::Relaxed) {
        match write_unnamed(&dir.join("new"), &new, &content) {
            Ok(true) => {
                return sync_dir(&dir.join("new")).map(|()| new);
            }
            Ok(false) => TMPFILE_WORKS.store(false, Ordering::Relaxed),
            Err(e) => return Err(e),
        }
    }
    // Maildir's own protocol (tmp/, then new/) is the one durable write.
    let options = WriteOptions {
        tmp_dir: Some(dir.join("tmp")),
        ..WriteOptions::private()
    };
    write_atomic(&new, &[&content], &options).map(|()| new)
}

/// Writes `content` as an unnamed file in `new_dir`, fsyncs it, and links it as `path`.
/// Returns false when the file system does not support `O_TMPFILE`.
fn write_unnamed(new_dir: &Path, path: &Path, content: &[u8]) -> io::Result<bool> {
    let opened = OpenOptions::new()
        .write(true)
        .mode(0o600)
        .custom_flags(OFlag::O_TMPFILE.bits())
        .open(new_dir);
    let mut f = match opened {
        Ok(f) => f,
        // EOPNOTSUPP / EISDIR / EINVAL: no O_TMPFILE here.
        Err(e)
            if e.raw_os_error().map(Errno::from_raw).is_some_and(|n| {
                matches!(n, Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL)
            }) =>
        {
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    f.write_all(content)?;
    f.sync_all()?;
    // linkat through /proc/self/fd works without privileges (AT_EMPTY_PATH would need them).
    let proc_path = format!("/proc/self/fd/{}", f.as_raw_fd());
    nix::unistd::linkat(
        AT_FDCWD,
        proc_path.as_str(),
        AT_FDCWD,
        path,
        AtFlags::AT_SYMLINK_FOLLOW,
    )
    .map_err(io::Error::from)?;
    Ok(true)
}

fn crlf_to_lf(input: &[u8], out: &mut Vec<u8>) {
    let mut start = 0;
    let mut i = 0;
    while i + 1 < input.len() {
        if input[i] == b'\r' && input[i + 1] == b'\n' {
            out.extend_from_slice(&input[start..i]);
            start = i + 1;
            i += 2;
        } else {
            i += 1;
        }
    }
    out.extend_from_slice(&input[start..]);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn without_o_tmpfile_the_message_goes_through_tmp_and_tmp_is_left_empty() {
        let dir = tempfile::tempdir().unwrap();
        let md = dir.path().join("bob");
        // Other tests may run meanwhile; they only take the same fallback path.
        TMPFILE_WORKS.store(false, Ordering::Relaxed);
        let p = deliver(&md, "mx.test", "", b"Subject: x\r\n\r\nbody\r\n");
        TMPFILE_WORKS.store(true, Ordering::Relaxed);
        let p = p.unwrap();
        assert!(p.starts_with(md.join("new")));
        assert_eq!(fs::read(&p).unwrap(), b"Subject: x\n\nbody\n");
        assert_eq!(fs::read_dir(md.join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn delivers_into_new_with_lf_line_ends() {
        let dir = tempfile::tempdir().unwrap();
        let md = dir.path().join("alice");
        let p = deliver(
            &md,
            "mx.test",
            "Return-Path: <a@x.test>\n",
            b"Subject: hi\r\n\r\nbody\r\n",
        )
        .unwrap();
        assert!(p.starts_with(md.join("new")));
        assert_eq!(
            fs::read(&p).unwrap(),
            b"Return-Path: <a@x.test>\nSubject: hi\n\nbody\n"
        );
        assert!(md.join("cur").is_dir());
        assert_eq!(fs::read_dir(md.join("tmp")).unwrap().count(), 0);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        assert!(name.ends_with(",S=42"), "{name}");
        let p2 = deliver(&md, "mx.test", "", b"x\r\n").unwrap();
        assert_ne!(p, p2);
    }

    #[test]
    fn host_name_is_escaped() {
        assert!(unique_name("a/b:c").ends_with(".a\\057b\\072c"));
    }

    #[test]
    fn crlf_conversion() {
        let mut out = Vec::new();
        crlf_to_lf(b"a\r\nb\r\n\r\n", &mut out);
        assert_eq!(out, b"a\nb\n\n");
    }
}
