//! Files the server and its commands write: always through the one durable write of
//! [`kurier_spool::durable`] (temporary file, fsync, rename, fsync of the directory), so a
//! crash never leaves half a key, half a certificate or half a users file.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

pub use kurier_spool::durable::{WriteOptions, sync_dir, write_atomic};

/// The owner to give a file that a command run as root writes into a data directory owned
/// by someone else (the unprivileged server must be able to read it).
pub fn owner_for(data_dir: &Path) -> Option<(u32, u32)> {
    let meta = std::fs::metadata(data_dir).ok()?;
    (nix::unistd::geteuid().is_root() && meta.uid() != 0).then(|| (meta.uid(), meta.gid()))
}

/// Writes a private file (mode 0600) durably, replacing an existing one.
pub fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    write_atomic(path, &[data], &WriteOptions::private())
}
