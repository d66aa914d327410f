//! The users file, `<data_dir>/users.toml`, as `kurier user` edits it: under a lock, written
//! through the one durable write, so a running server never sees a half-written file and
//! picks the change up at its next lookup.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use argon2::{Argon2, PasswordHasher};
use kurier_smtp::Mailbox;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::address_key;
use crate::config::Config;
use crate::data_dir::{DataDir, safe_mailbox_name};
use crate::fsutil::{WriteOptions, write_atomic};

/// Failures managing users.
#[derive(Debug, Error)]
pub enum DirectoryError {
    /// The address is malformed or not in a local domain.
    #[error("{0}")]
    BadAddress(String),
    /// `user add` for an existing user.
    #[error("user {0} already exists (use `kurier user passwd` to change the password)")]
    Exists(String),
    /// `user passwd`/`user del` for an unknown user.
    #[error("no user {0} in {1}")]
    Unknown(String, PathBuf),
    /// The users file is unreadable or malformed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Hashing failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// The users file as stored.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UsersFile {
    #[serde(default)]
    pub(super) users: BTreeMap<String, String>,
}

/// Reads the users file (a missing file is an empty one).
pub(super) fn read_users_file(path: &Path) -> Result<UsersFile, DirectoryError> {
    match fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| DirectoryError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(UsersFile::default()),
        Err(e) => Err(DirectoryError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
    }
}

/// The users of a users file as the server looks them up (keys as [`address_key`]). A key
/// that is no address, or no safe mailbox name (the file can be edited by hand: a key such
/// as `"../../../escape"@localhost` would lead delivery outside the data directory), is
/// left out with a warning naming it.
pub(super) fn checked_users(file: UsersFile, path: &Path) -> HashMap<String, String> {
    file.users
        .into_iter()
        .filter_map(|(k, v)| {
            let checked = safe_mailbox_name(&k)
                .and_then(|()| Mailbox::parse(&k).map_err(|e| format!("{k:?}: {e}")));
            match checked {
                Ok(m) => Some((address_key(&m), v)),
                Err(reason) => {
                    tracing::warn!(
                        file = %path.display(),
                        key = ?k,
                        %reason,
                        "users file: user refused"
                    );
                    None
                }
            }
        })
        .collect()
}

/// Hashes a password with argon2id (PHC string).
pub fn hash_password(password: &str) -> Result<String, DirectoryError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| DirectoryError::Hash(e.to_string()))
}

/// What `kurier user` does to the users file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserChange {
    /// Add a new user.
    Add,
    /// Change an existing user's password.
    Passwd,
    /// Remove a user.
    Delete,
}

/// Edits `<data_dir>/users.toml` under a lock, writing atomically (tmp, fsync, rename), so a
/// running server never sees a half-written file.
pub fn change_user(
    config: &Config,
    data_dir: &DataDir,
    address: &str,
    change: UserChange,
    password: Option<&str>,
) -> Result<(), DirectoryError> {
    safe_mailbox_name(address).map_err(DirectoryError::BadAddress)?;
    let m = Mailbox::parse(address).map_err(|e| DirectoryError::BadAddress(e.to_string()))?;
    if !config.local_domains().contains(m.domain()) {
        return Err(DirectoryError::BadAddress(format!(
            "{} is not a local domain (local domains: {}); add it to `domains` in the config",
            m.domain(),
            config.domains.join(", ")
        )));
    }
    let key = address_key(&m);
    let path = data_dir.users_file();
    let file_err = |e: io::Error| DirectoryError::File {
        path: path.clone(),
        message: e.to_string(),
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir.root())
        .map_err(file_err)?;
    let lock = open_lock(&data_dir.users_lock()).map_err(file_err)?;
    lock.lock().map_err(file_err)?;
    let mut file = read_users_file(&path)?;
    match change {
        UserChange::Add if file.users.contains_key(&key) || config.users.contains_key(&key) => {
            return Err(DirectoryError::Exists(key));
        }
        UserChange::Passwd | UserChange::Delete if !file.users.contains_key(&key) => {
            return Err(DirectoryError::Unknown(key, path));
        }
        UserChange::Add | UserChange::Passwd => {
            let hash = hash_password(password.unwrap_or_default())?;
            file.users.insert(key, hash);
        }
        UserChange::Delete => {
            file.users.remove(&key);
        }
    }
    let text = format!(
        "# Kurier users: address = argon2 password hash. Managed by `kurier user`.\n{}",
        toml::to_string_pretty(&file).map_err(|e| DirectoryError::Hash(e.to_string()))?
    );
    // Started as root for a server that runs as another user, the command has become the
    // data directory's owner before it got here (see `server::privilege`); the file is
    // written as that user, under a fresh random name, so a planted link is never followed.
    write_atomic(&path, &[text.as_bytes()], &WriteOptions::private()).map_err(file_err)?;
    // Dovecot's copy changes with it, under the same lock: a user added can log in to IMAP
    // at once, a user removed cannot.
    super::dovecot::write_passwd(config, data_dir)
}

/// Opens (creating, mode 0600) a lock file without following a symbolic link and without
/// truncating: whoever can write the data directory could otherwise point it at a file that
/// the opener (root, in the worst case) would clobber.
fn open_lock(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_CLOEXEC.bits())
        .open(path)
}

/// Lists users from the users file and the config.
pub fn list_users(config: &Config, data_dir: &DataDir) -> Result<Vec<String>, DirectoryError> {
    let mut users: Vec<String> = read_users_file(&data_dir.users_file())?
        .users
        .into_keys()
        .collect();
    users.extend(config.users.keys().cloned());
    users.sort();
    users.dedup();
    Ok(users)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config() -> Config {
        Config::parse("domains = [\"example.test\"]\n").unwrap()
    }

    /// Whoever owns the data directory may plant `users.lock` as a link to a file of
    /// root's; `kurier user add` run as root must not truncate (or create) it.
    #[test]
    fn a_planted_lock_link_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"root's precious file\n").unwrap();
        let data = dir.path().join("data");
        fs::create_dir(&data).unwrap();
        std::os::unix::fs::symlink(&victim, data.join("users.lock")).unwrap();
        let r = change_user(
            &config(),
            &DataDir::new(&data),
            "alice@example.test",
            UserChange::Add,
            Some("pw"),
        );
        assert!(r.is_err(), "the lock was opened through the link");
        assert_eq!(fs::read(&victim).unwrap(), b"root's precious file\n");
        assert!(!data.join("users.toml").exists());
    }

    /// A users file edited by hand with a key that would lead outside `mail/` loses that
    /// user (with a warning); the others stay.
    #[test]
    fn users_file_keys_that_are_no_safe_mailbox_are_refused() {
        let file: UsersFile = toml::from_str(
            "[users]\n\"\\\"../../../escape\\\"@example.test\" = \"h1\"\n\"Bob@example.test\" = \"h2\"\n",
        )
        .unwrap();
        assert_eq!(file.users.len(), 2);
        let users = checked_users(file, Path::new("users.toml"));
        assert_eq!(users.len(), 1);
        assert_eq!(
            users.get("bob@example.test").map(String::as_str),
            Some("h2")
        );
    }
}
