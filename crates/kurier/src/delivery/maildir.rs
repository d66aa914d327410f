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
//!
//! A Maildir is also reached by others (an IMAP server, the mailbox's own user), so nothing
//! in it is reached by path: the Maildir, a Maildir++ folder in it, and their `tmp/`, `new/`
//! and `cur/` are opened one at a time relative to their parent's descriptor, without
//! following a symbolic link (`O_NOFOLLOW | O_DIRECTORY`), created (0700) when missing, and
//! files are created relative to those descriptors, exclusively. A link planted in any of
//! those places makes the delivery fail (and retry later) instead of writing where it points.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use kurier_spool::MessageData;
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, open, openat, renameat};
use nix::sys::stat::{Mode, mkdirat};
use nix::unistd::{UnlinkatFlags, fsync, linkat, unlinkat};

static COUNTER: AtomicU64 = AtomicU64::new(0);
/// Cleared once O_TMPFILE turns out to be unsupported, to stop trying it.
static TMPFILE_WORKS: AtomicBool = AtomicBool::new(true);

/// Where local copies go: the Maildirs on disk ([`Maildirs`]), or a stand-in that tests use
/// to see what was written or to make a write fail.
pub trait LocalDelivery: Send + Sync {
    /// Writes one copy with `headers` in front into the Maildir `folder` (created if
    /// missing), durably; returns the file's path.
    fn write(&self, folder: &Path, headers: &str, message: &MessageData) -> io::Result<PathBuf>;
}

/// The Maildirs on disk, with file names unique to this host.
pub struct Maildirs {
    /// Our host name, part of every file name.
    pub hostname: String,
}

impl LocalDelivery for Maildirs {
    fn write(&self, folder: &Path, headers: &str, message: &MessageData) -> io::Result<PathBuf> {
        deliver(folder, &self.hostname, headers, message)
    }
}

/// The Maildir++ Junk folder of a mailbox (`<maildir>/.Junk`), created with its
/// `maildirfolder` marker, as IMAP servers such as Dovecot expect. The marker is created
/// exclusively (`O_CREAT | O_EXCL`, which never follows a link): an existing one, or a link
/// put in its place, is left as it is.
pub fn junk_folder(maildir: &Path) -> PathBuf {
    let folder = maildir.join(".Junk");
    if let Ok(opened) = open_folder(&folder) {
        let _ = openat(
            &opened.dir,
            "maildirfolder",
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        );
    }
    folder
}

/// An open Maildir (or Maildir++ folder): the descriptors files are created through.
struct Folder {
    dir: OwnedFd,
    new: OwnedFd,
}

impl Folder {
    /// `tmp/`, opened only when it is needed (where O_TMPFILE is not supported).
    fn tmp(&self) -> io::Result<OwnedFd> {
        subdir(&self.dir, OsStr::new("tmp"))
    }
}

/// Opens the Maildir at `path`, creating what is missing. The mailbox's own directories (the
/// Maildir, a Maildir++ folder — a `.Name` right under its Maildir — and their `tmp/`,
/// `new/`, `cur/`) are never followed if they are links; the directories above
/// (`<data_dir>/mail/<domain>`) are the server's own and are reached by path. Each delivery
/// costs few system calls: `tmp/` is opened only when needed, and `cur/` (never written by
/// delivery) is made only with a new Maildir.
fn open_folder(path: &Path) -> io::Result<Folder> {
    let name = |p: &Path| {
        p.file_name()
            .map(OsStr::to_os_string)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no Maildir name"))
    };
    let folder = name(path)?;
    let parent = path.parent().unwrap_or(Path::new("."));
    let (base, chain) = match parent.parent() {
        Some(grandparent) if folder.as_encoded_bytes().starts_with(b".") => {
            (grandparent, vec![name(parent)?, folder])
        }
        _ => (parent, vec![folder]),
    };
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut dir = match open(base, flags, Mode::empty()) {
        Err(Errno::ENOENT) => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(base)?;
            open(base, flags, Mode::empty())?
        }
        other => other?,
    };
    for component in &chain {
        dir = subdir(&dir, component)?;
    }
    let new = match openat(&dir, "new", flags | OFlag::O_NOFOLLOW, Mode::empty()) {
        Ok(fd) => fd,
        // A new (or damaged) Maildir: all three, each refusing a link.
        Err(Errno::ENOENT) => {
            subdir(&dir, OsStr::new("tmp"))?;
            subdir(&dir, OsStr::new("cur"))?;
            subdir(&dir, OsStr::new("new"))?
        }
        Err(_) => subdir(&dir, OsStr::new("new"))?,
    };
    Ok(Folder { dir, new })
}

/// Opens (creating, 0700) the directory `name` in `parent`, refusing a symbolic link.
fn subdir(parent: &OwnedFd, name: &OsStr) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let opened = match openat(parent, name, flags, Mode::empty()) {
        Err(Errno::ENOENT) => {
            match mkdirat(parent, name, Mode::from_bits_truncate(0o700)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
            openat(parent, name, flags, Mode::empty())
        }
        other => other,
    };
    opened.map_err(|e| match e {
        // What O_NOFOLLOW | O_DIRECTORY answer for a link (or a file) in a directory's place.
        Errno::ELOOP | Errno::ENOTDIR => io::Error::new(
            io::ErrorKind::NotADirectory,
            format!(
                "{}: not a directory of its own (a symbolic link?), not followed",
                name.to_string_lossy()
            ),
        ),
        e => e.into(),
    })
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
pub fn deliver(
    dir: &Path,
    host: &str,
    headers: &str,
    message: &MessageData,
) -> io::Result<PathBuf> {
    let folder = open_folder(dir)?;
    let content = Content { headers, message };
    let name = format!("{},S={}", unique_name(host), content.len()?);
    let path = dir.join("new").join(&name);
    if TMPFILE_WORKS.load(Ordering::Relaxed) {
        match write_unnamed(&folder.new, &name, &content) {
            Ok(true) => return fsync(&folder.new).map(|()| path).map_err(Into::into),
            Ok(false) => TMPFILE_WORKS.store(false, Ordering::Relaxed),
            Err(e) => return Err(e),
        }
    }
    write_through_tmp(&folder, &name, &content).map(|()| path)
}

/// Writes `content` as an unnamed file in `new_dir`, fsyncs it, and links it as `name`.
/// Returns false when the file system does not support `O_TMPFILE`.
fn write_unnamed(new_dir: &OwnedFd, name: &str, content: &Content<'_>) -> io::Result<bool> {
    let opened = openat(
        new_dir,
        ".",
        OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    );
    let mut f = match opened {
        Ok(fd) => File::from(fd),
        // EOPNOTSUPP / EISDIR / EINVAL: no O_TMPFILE here.
        Err(Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    content.write_to(&mut f)?;
    f.sync_all()?;
    // linkat through /proc/self/fd works without privileges (AT_EMPTY_PATH would need them).
    let proc_path = format!("/proc/self/fd/{}", f.as_raw_fd());
    linkat(
        AT_FDCWD,
        proc_path.as_str(),
        new_dir,
        name,
        AtFlags::AT_SYMLINK_FOLLOW,
    )?;
    Ok(true)
}

/// Maildir's own protocol, relative to the folder's descriptors: a new file in `tmp/`
/// (created exclusively, so a name planted there is never followed), fsync, rename into
/// `new/`, fsync of `new/`. A failed write leaves nothing in `tmp/`.
fn write_through_tmp(folder: &Folder, name: &str, content: &Content<'_>) -> io::Result<()> {
    let tmp = folder.tmp()?;
    let fd = openat(
        &tmp,
        name,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )?;
    let mut f = File::from(fd);
    let written = (|| {
        content.write_to(&mut f)?;
        f.sync_all()?;
        renameat(&tmp, name, &folder.new, name)?;
        fsync(&folder.new).map_err(io::Error::from)
    })();
    if written.is_err() {
        let _ = unlinkat(&tmp, name, UnlinkatFlags::NoRemoveDir);
    }
    written
}

/// What goes into a Maildir file: our header fields, then the message with LF line ends,
/// converted while it is read in chunks and written, so a large message is never whole in
/// memory.
struct Content<'a> {
    headers: &'a str,
    message: &'a MessageData,
}

impl Content<'_> {
    /// The file's size (a first pass over the message, for the `S=` of its name).
    fn len(&self) -> io::Result<u64> {
        let mut lf = CrlfToLf::default();
        let mut size = 0u64;
        self.message
            .for_each_chunk(0, |c| size += lf.converted_len(c))?;
        Ok(self.headers.len() as u64 + size + lf.finish_len())
    }

    fn write_to(&self, f: &mut File) -> io::Result<()> {
        let mut w = io::BufWriter::with_capacity(64 * 1024, f);
        w.write_all(self.headers.as_bytes())?;
        let mut lf = CrlfToLf::default();
        let mut failed = None;
        self.message.for_each_chunk(0, |c| {
            if failed.is_none()
                && let Err(e) = lf.convert(c, &mut w)
            {
                failed = Some(e);
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        lf.finish(&mut w)?;
        w.flush()
    }
}

/// CRLF to LF across chunk borders: a CR at the end of a chunk waits for the next one.
#[derive(Debug, Default)]
struct CrlfToLf {
    pending_cr: bool,
}

impl CrlfToLf {
    fn convert(&mut self, input: &[u8], out: &mut impl Write) -> io::Result<()> {
        if input.is_empty() {
            return Ok(());
        }
        let mut input = input;
        if std::mem::take(&mut self.pending_cr) && input.first() != Some(&b'\n') {
            out.write_all(b"\r")?;
        }
        if input.last() == Some(&b'\r') {
            self.pending_cr = true;
            input = &input[..input.len() - 1];
        }
        let mut start = 0;
        let mut i = 0;
        while i + 1 < input.len() {
            if input[i] == b'\r' && input[i + 1] == b'\n' {
                out.write_all(&input[start..i])?;
                start = i + 1;
                i += 2;
            } else {
                i += 1;
            }
        }
        out.write_all(&input[start..])
    }

    /// What [`CrlfToLf::convert`] would write for `input`.
    fn converted_len(&mut self, input: &[u8]) -> u64 {
        let mut counter = Counter(0);
        let _ = self.convert(input, &mut counter);
        counter.0
    }

    fn finish(self, out: &mut impl Write) -> io::Result<()> {
        if self.pending_cr {
            out.write_all(b"\r")?;
        }
        Ok(())
    }

    fn finish_len(self) -> u64 {
        u64::from(self.pending_cr)
    }
}

/// Counts what is written to it.
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn msg(bytes: &[u8]) -> MessageData {
        MessageData::in_memory(bytes.to_vec())
    }

    #[test]
    fn without_o_tmpfile_the_message_goes_through_tmp_and_tmp_is_left_empty() {
        let dir = tempfile::tempdir().unwrap();
        let md = dir.path().join("bob");
        // Other tests may run meanwhile; they only take the same fallback path.
        TMPFILE_WORKS.store(false, Ordering::Relaxed);
        let p = deliver(&md, "mx.test", "", &msg(b"Subject: x\r\n\r\nbody\r\n"));
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
            &msg(b"Subject: hi\r\n\r\nbody\r\n"),
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
        let p2 = deliver(&md, "mx.test", "", &msg(b"x\r\n")).unwrap();
        assert_ne!(p, p2);
    }

    #[test]
    fn maildir_directories_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let md = dir.path().join("mail/example.test/carol");
        deliver(&md, "mx.test", "", &msg(b"x\r\n")).unwrap();
        for d in [md.clone(), md.join("tmp"), md.join("new"), md.join("cur")] {
            let mode = fs::metadata(&d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
    }

    /// `new/` (or `tmp/`, or the Maildir itself) replaced by a link: the delivery fails and
    /// nothing is written where the link points, on either way of writing.
    #[test]
    fn links_in_a_maildir_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        for planted in ["new", "tmp", "cur"] {
            let md = dir.path().join(format!("box-{planted}"));
            fs::create_dir(&md).unwrap();
            std::os::unix::fs::symlink(&elsewhere, md.join(planted)).unwrap();
            assert!(
                deliver(&md, "mx.test", "", &msg(b"x\r\n")).is_err(),
                "{planted}"
            );
        }
        let linked = dir.path().join("linked-box");
        std::os::unix::fs::symlink(&elsewhere, &linked).unwrap();
        assert!(deliver(&linked, "mx.test", "", &msg(b"x\r\n")).is_err());
        assert!(deliver(&linked.join(".Junk"), "mx.test", "", &msg(b"x\r\n")).is_err());
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    /// A `maildirfolder` marker planted as a link to someone's file: that file is neither
    /// truncated nor replaced; a Junk folder that is a link is not written into.
    #[test]
    fn junk_marker_links_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let md = dir.path().join("dave");
        fs::create_dir_all(md.join(".Junk")).unwrap();
        std::os::unix::fs::symlink(&victim, md.join(".Junk/maildirfolder")).unwrap();
        let junk = junk_folder(&md);
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        deliver(&junk, "mx.test", "", &msg(b"x\r\n")).unwrap();
        let fresh = dir.path().join("erin");
        let junk = junk_folder(&fresh);
        assert!(junk.join("maildirfolder").is_file());
        assert!(junk.join("new").is_dir());
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        let frank = dir.path().join("frank");
        fs::create_dir(&frank).unwrap();
        std::os::unix::fs::symlink(&elsewhere, frank.join(".Junk")).unwrap();
        assert!(deliver(&junk_folder(&frank), "mx.test", "", &msg(b"x\r\n")).is_err());
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[test]
    fn host_name_is_escaped() {
        assert!(unique_name("a/b:c").ends_with(".a\\057b\\072c"));
    }

    #[test]
    fn crlf_conversion_across_chunk_borders() {
        let input = b"a\r\nb\r\n\r\nc\rd\r";
        for cut in 0..=input.len() {
            let mut out = Vec::new();
            let mut lf = CrlfToLf::default();
            let mut len = CrlfToLf::default();
            lf.convert(&input[..cut], &mut out).unwrap();
            lf.convert(&input[cut..], &mut out).unwrap();
            let size = len.converted_len(&input[..cut]) + len.converted_len(&input[cut..]);
            assert_eq!(size + len.finish_len(), 9, "cut at {cut}");
            lf.finish(&mut out).unwrap();
            assert_eq!(out, b"a\nb\n\nc\rd\r", "cut at {cut}");
        }
    }

    #[test]
    fn a_message_from_a_file_is_written_with_its_size_in_the_name() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        let body = "line\r\n".repeat(100_000);
        file.write_all(format!("queue file head\n{body}").as_bytes())
            .unwrap();
        let data = MessageData::in_file(file, 16, body.len() as u64);
        let p = deliver(
            &dir.path().join("m"),
            "mx.test",
            "Return-Path: <a@b>\n",
            &data,
        )
        .unwrap();
        let written = fs::read(&p).unwrap();
        assert_eq!(written.len(), 19 + 500_000);
        assert!(p.to_string_lossy().ends_with(",S=500019"));
        assert_eq!(
            written,
            format!("Return-Path: <a@b>\n{}", "line\n".repeat(100_000)).into_bytes()
        );
    }
}
