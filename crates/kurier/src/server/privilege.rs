//! Dropping root, and handing the data directory to the unprivileged user without giving
//! away anything else.
//!
//! Ports 25, 465 and 587 need root (or CAP_NET_BIND_SERVICE) to bind; nothing after that
//! does. Everything inside the data directory is written by the unprivileged user, so root
//! must never act on paths in it: whoever owns a directory can swap any entry for a symbolic
//! link between root's check and root's use (an earlier version chowned the tree by path at
//! start, and a swapped directory made it chown root's files elsewhere). So:
//!
//! - the server creates the data directory (mode 0700) or takes an empty one, gives that one
//!   directory to the user by its descriptor (`fchown`), and lets the user create the rest
//!   after the switch;
//! - a directory that holds entries but nothing of Kurier's is refused (a `data_dir =
//!   "/var/lib"` typo must not hand `/var/lib` over);
//! - an existing Kurier directory that belongs to someone else (root, after an earlier
//!   version or a root-run server) is refused with the one `chown -R` to run, rather than
//!   walked: an admin running it with the server stopped is the safe way to upgrade;
//! - `kurier user|queue|dkim` run as root become the data directory's owner before touching
//!   anything in it ([`become_data_dir_owner`]), so a planted link only ever gains its
//!   planter's own rights.

use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, open};
use nix::sys::stat::{Mode, fchmod, fstat};
use nix::unistd::{Gid, Uid, User, fchown, setgid, setgroups, setuid};
use thiserror::Error;

use crate::data_dir::KURIER_ENTRIES;

/// Why the data directory cannot be handed to the service user.
#[derive(Debug, Error)]
pub enum HandOverError {
    /// Creating, opening or changing the directory failed.
    #[error("data directory {0}: {1}")]
    Io(PathBuf, io::Error),
    /// The directory has entries, none of them Kurier's.
    #[error(
        "data directory {0} is not empty and holds nothing of Kurier's (no spool/, mail/, users.toml, kurier.lock, …): refusing to give it to the service user; set data_dir to a new or empty directory"
    )]
    Foreign(PathBuf),
    /// A Kurier data directory that belongs to another user than the service user.
    #[error(
        "data directory {path} belongs to uid {owner}, but the server runs as {user} (uid {uid}) and does not take existing files over; with the server stopped, hand it over once: chown -R {user}: {path}"
    )]
    NotOwned {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The service user.
        user: String,
        /// The service user's uid.
        uid: u32,
    },
}

/// Switches the process to `user`, after giving it the data directory (see the module
/// documentation). A no-op when not root.
pub fn drop_to(user: &str, data_dir: &Path) -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let u = lookup(user)?;
    hand_over(data_dir, &u).map_err(|e| e.to_string())?;
    become_user(u.uid, u.gid)?;
    tracing::info!(user, uid = u.uid.as_raw(), "switched to unprivileged user");
    Ok(())
}

/// Run as root, a command that works in the data directory first becomes the directory's
/// owner (for good: the command does nothing else as root), so that it cannot be led by a
/// link planted there to a file only root may change. A directory root owns needs nothing
/// (no one else can plant anything in it); a missing one is created for `run_as` when the
/// config names it, as the server would at start. A no-op when not root.
pub fn become_data_dir_owner(data_dir: &Path, run_as: Option<&str>) -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let (uid, gid) = match std::fs::metadata(data_dir) {
        Ok(meta) if meta.uid() == 0 => return Ok(()),
        Ok(meta) => (Uid::from_raw(meta.uid()), Gid::from_raw(meta.gid())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let Some(user) = run_as else { return Ok(()) };
            let u = lookup(user)?;
            hand_over(data_dir, &u).map_err(|e| e.to_string())?;
            (u.uid, u.gid)
        }
        Err(e) => return Err(format!("data directory {}: {e}", data_dir.display())),
    };
    become_user(uid, gid)?;
    nix::unistd::access(
        data_dir,
        nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK,
    )
    .map_err(|e| {
        format!(
            "data directory {}: its owner (uid {uid}), which this command runs as, cannot use it: {e}",
            data_dir.display()
        )
    })
}

/// What the start checks of `run_as` before binding anything: the user exists and is not
/// root (for `kurier config check`).
pub fn check_run_as(user: &str) -> Result<(), String> {
    lookup(user).map(drop)
}

fn lookup(user: &str) -> Result<User, String> {
    let u = User::from_name(user)
        .map_err(|e| format!("looking up the user failed: {e}"))?
        .ok_or_else(|| {
            format!("no such user {user:?} (create it, e.g. `useradd --system {user}`)")
        })?;
    if u.uid.is_root() {
        return Err("run_as must name an unprivileged user, not root".into());
    }
    Ok(u)
}

/// Gives up root for good: supplementary groups, group, user, then checks it stuck.
fn become_user(uid: Uid, gid: Gid) -> Result<(), String> {
    setgroups(&[gid]).map_err(|e| format!("setgroups: {e}"))?;
    setgid(gid).map_err(|e| format!("setgid: {e}"))?;
    setuid(uid).map_err(|e| format!("setuid: {e}"))?;
    if setuid(Uid::from_raw(0)).is_ok() {
        return Err("root privileges could be regained after setuid".into());
    }
    Ok(())
}

/// Makes `data_dir` the service user's: created (0700) or taken when empty, by its
/// descriptor; refused when foreign or when it is a Kurier directory of someone else's.
/// Nothing inside it is touched. The path itself is the admin's and is followed.
fn hand_over(data_dir: &Path, user: &User) -> Result<(), HandOverError> {
    let io_err = |e: io::Error| HandOverError::Io(data_dir.to_path_buf(), e);
    create_parents(data_dir).map_err(io_err)?;
    match std::fs::DirBuilder::new().mode(0o700).create(data_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(e)),
    }
    let dir = open(
        data_dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(e.into()))?;
    let owner = fstat(&dir).map_err(|e| io_err(e.into()))?.st_uid;
    let names = entries(&dir).map_err(io_err)?;
    if !names.is_empty() && !names.iter().any(|n| is_kurier_entry(n)) {
        return Err(HandOverError::Foreign(data_dir.to_path_buf()));
    }
    if owner != user.uid.as_raw() {
        if !names.is_empty() {
            return Err(HandOverError::NotOwned {
                path: data_dir.to_path_buf(),
                owner,
                user: user.name.clone(),
                uid: user.uid.as_raw(),
            });
        }
        fchown(&dir, Some(user.uid), Some(user.gid)).map_err(|e| io_err(e.into()))?;
    }
    // Owner only: the queue and the mailboxes are private, and no other local user can
    // open (and flock) kurier.lock to keep the server from starting.
    fchmod(&dir, Mode::from_bits_truncate(0o700)).map_err(|e| io_err(e.into()))
}

/// A data directory the server runs in as its owner (started without `run_as`) is made
/// owner-only when it is Kurier's and readable by others (one made by an earlier version,
/// 0755): the queue and the mailboxes are private, and no other local user may open and
/// flock `kurier.lock`. A directory that holds nothing of Kurier's (a home directory given as
/// `data_dir`) keeps its mode. True when the mode was changed.
pub fn make_private(data_dir: &Path) -> Result<bool, HandOverError> {
    let io_err = |e: io::Error| HandOverError::Io(data_dir.to_path_buf(), e);
    let dir = open(
        data_dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(e.into()))?;
    let stat = fstat(&dir).map_err(|e| io_err(e.into()))?;
    if stat.st_uid != nix::unistd::geteuid().as_raw() || stat.st_mode & 0o077 == 0 {
        return Ok(false);
    }
    let names = entries(&dir).map_err(io_err)?;
    if !names.is_empty() && !names.iter().any(|n| is_kurier_entry(n)) {
        return Ok(false);
    }
    fchmod(&dir, Mode::from_bits_truncate(0o700)).map_err(|e| io_err(e.into()))?;
    Ok(true)
}

/// The directory's entries other than `.`, `..` and a file system's `lost+found`.
fn entries(dir: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let mut d = nix::dir::Dir::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for entry in d.iter() {
        let name = entry?.file_name().to_bytes().to_vec();
        if !matches!(name.as_slice(), b"." | b".." | b"lost+found") {
            names.push(name);
        }
    }
    Ok(names)
}

fn is_kurier_entry(name: &[u8]) -> bool {
    KURIER_ENTRIES
        .iter()
        .any(|k| OsStr::new(k) == OsStr::from_bytes(name))
}

/// Creates the missing ancestors of `path` as root's, mode 0755 (like `/var/lib`), so the
/// service user can reach its directory whatever the umask.
fn create_parents(path: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = path
        .ancestors()
        .skip(1)
        .take_while(|p| !p.as_os_str().is_empty() && !p.exists())
        .collect();
    for dir in missing.into_iter().rev() {
        match std::fs::create_dir(dir) {
            Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::fs;

    /// A stand-in service user: `nobody` exists on every system the tests run on.
    fn service_user() -> Option<User> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("not root: handing over cannot be exercised here");
            return None;
        }
        User::from_name("nobody").unwrap()
    }

    fn uid_of(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().uid()
    }

    #[test]
    fn a_new_or_empty_directory_is_given_over_and_made_private() {
        let Some(u) = service_user() else { return };
        let top = tempfile::tempdir().unwrap();
        let new = top.path().join("a/b/data");
        hand_over(&new, &u).unwrap();
        assert_eq!(uid_of(&new), u.uid.as_raw());
        assert_eq!(fs::metadata(&new).unwrap().mode() & 0o777, 0o700);
        assert_eq!(uid_of(&top.path().join("a")), 0);
        assert_eq!(
            fs::metadata(top.path().join("a/b")).unwrap().mode() & 0o777,
            0o755
        );
        let empty = top.path().join("empty");
        fs::create_dir(&empty).unwrap();
        fs::create_dir(empty.join("lost+found")).unwrap();
        hand_over(&empty, &u).unwrap();
        assert_eq!(uid_of(&empty), u.uid.as_raw());
        assert_eq!(uid_of(&empty.join("lost+found")), 0);
    }

    /// `data_dir = "/var/lib"`: nothing of it is given away.
    #[test]
    fn a_foreign_directory_is_refused_and_left_alone() {
        let Some(u) = service_user() else { return };
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("lib");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("dpkg-status"), b"x").unwrap();
        let e = hand_over(&dir, &u).unwrap_err();
        assert!(matches!(e, HandOverError::Foreign(_)), "{e}");
        assert!(e.to_string().contains(&dir.display().to_string()), "{e}");
        assert_eq!(uid_of(&dir), 0);
        assert_eq!(uid_of(&dir.join("dpkg-status")), 0);
    }

    /// An earlier version's (or a root-run server's) data directory: refused with the one
    /// command to run, nothing changed.
    #[test]
    fn a_kurier_directory_of_someone_else_is_refused_with_the_chown_to_run() {
        let Some(u) = service_user() else { return };
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("data");
        fs::create_dir_all(dir.join("spool/queue")).unwrap();
        let e = hand_over(&dir, &u).unwrap_err().to_string();
        assert!(
            e.contains(&format!("chown -R {}: {}", u.name, dir.display())),
            "{e}"
        );
        assert_eq!(uid_of(&dir), 0);
        assert_eq!(uid_of(&dir.join("spool")), 0);
    }

    /// The service user's own directory: nothing inside is touched, even files of root's
    /// (the walk that chowned them by path is gone), and links are not followed.
    #[test]
    fn nothing_inside_the_directory_is_touched() {
        let Some(u) = service_user() else { return };
        let top = tempfile::tempdir().unwrap();
        let outside = top.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("root-file"), b"x").unwrap();
        let dir = top.path().join("data");
        fs::create_dir_all(dir.join("spool")).unwrap();
        fs::write(dir.join("foreign"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("mail")).unwrap();
        std::os::unix::fs::chown(&dir, Some(u.uid.as_raw()), Some(u.gid.as_raw())).unwrap();
        hand_over(&dir, &u).unwrap();
        assert_eq!(uid_of(&dir.join("foreign")), 0);
        assert_eq!(uid_of(&dir.join("spool")), 0);
        assert_eq!(uid_of(&dir.join("mail")), 0);
        assert_eq!(uid_of(&outside.join("root-file")), 0);
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    }

    /// Started without `run_as`: an earlier version's 0755 data directory becomes 0700, a
    /// directory with nothing of Kurier's in it (a home directory) keeps its mode.
    #[test]
    fn an_own_kurier_directory_readable_by_others_is_made_private() {
        let top = tempfile::tempdir().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
        let old = top.path().join("old");
        fs::create_dir_all(old.join("spool")).unwrap();
        fs::set_permissions(&old, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(make_private(&old).unwrap());
        assert_eq!(mode(&old), 0o700);
        assert!(!make_private(&old).unwrap(), "already private");
        let home = top.path().join("home");
        fs::create_dir(&home).unwrap();
        fs::write(home.join(".profile"), b"x").unwrap();
        fs::set_permissions(&home, fs::Permissions::from_mode(0o751)).unwrap();
        assert!(!make_private(&home).unwrap());
        assert_eq!(mode(&home), 0o751);
        let empty = top.path().join("empty");
        fs::create_dir(&empty).unwrap();
        fs::set_permissions(&empty, fs::Permissions::from_mode(0o775)).unwrap();
        assert!(make_private(&empty).unwrap());
        assert_eq!(mode(&empty), 0o700);
    }
}
