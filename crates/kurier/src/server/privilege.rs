//! Dropping root after the ports are bound.
//!
//! Ports 25, 465 and 587 need root (or CAP_NET_BIND_SERVICE) to bind; nothing after that
//! does. The data directory is handed to the unprivileged user first, so everything the
//! server writes from then on (spool, mailboxes, certificate) belongs to that user.

use std::path::Path;

use nix::unistd::{Gid, Uid, User, setgid, setgroups, setuid};

/// Switches the process to `user`, after giving it the data directory. A no-op when not root.
pub fn drop_to(user: &str, data_dir: &Path) -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let u = User::from_name(user)
        .map_err(|e| format!("looking up the user failed: {e}"))?
        .ok_or_else(|| {
            format!("no such user {user:?} (create it, e.g. `useradd --system {user}`)")
        })?;
    if u.uid.is_root() {
        return Err("run_as must name an unprivileged user, not root".into());
    }
    std::fs::create_dir_all(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    chown_tree(data_dir, u.uid, u.gid)
        .map_err(|e| format!("giving {} to {user}: {e}", data_dir.display()))?;
    setgroups(&[u.gid]).map_err(|e| format!("setgroups: {e}"))?;
    setgid(u.gid).map_err(|e| format!("setgid: {e}"))?;
    setuid(u.uid).map_err(|e| format!("setuid: {e}"))?;
    if setuid(Uid::from_raw(0)).is_ok() {
        return Err("root privileges could be regained after setuid".into());
    }
    tracing::info!(user, uid = u.uid.as_raw(), "switched to unprivileged user");
    Ok(())
}

fn chown_tree(path: &Path, uid: Uid, gid: Gid) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid.as_raw()), Some(gid.as_raw()))?;
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}
