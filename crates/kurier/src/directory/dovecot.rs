//! Kurier's users as a Dovecot passwd-file (`<data_dir>/dovecot-passwd`), so that Dovecot
//! serves IMAP and POP3 on the Maildirs with the same passwords: Dovecot verifies argon2
//! hashes itself (its `{ARGON2ID}` and `{ARGON2I}` schemes take the PHC string Kurier
//! stores), so the file holds each user's hash under that scheme and nothing else.
//!
//! `kurier user add|passwd|del` rewrite it with the users file, under the same lock; the
//! server rewrites it at start (the config's `[users]` table may have changed).

use std::io;

use super::users::{DirectoryError, read_users_file};
use crate::config::Config;
use crate::data_dir::DataDir;
use crate::fsutil::{WriteOptions, owner_for, write_atomic};

/// The passwd-file lines for these (address, PHC hash) pairs, in the order given. A user
/// Dovecot could not look up or verify is left out, and said in the second list: a hash
/// of another scheme, or an address with a `:` (the field separator) or a control
/// character (RFC 5321 allows both in a quoted local part).
pub fn passwd_lines<'a>(
    users: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> (String, Vec<String>) {
    let mut text = String::new();
    let mut left_out = Vec::new();
    for (address, hash) in users {
        let scheme = if hash.starts_with("$argon2id$") {
            "ARGON2ID"
        } else if hash.starts_with("$argon2i$") {
            "ARGON2I"
        } else {
            left_out.push(format!("{address}: not an argon2id or argon2i hash"));
            continue;
        };
        let unsafe_char = |c: char| c == ':' || c.is_control();
        if address.chars().any(unsafe_char) || hash.chars().any(unsafe_char) {
            left_out.push(format!("{address:?}: a ':' or control character"));
            continue;
        }
        text.push_str(&format!("{address}:{{{scheme}}}{hash}\n"));
    }
    (text, left_out)
}

/// Rewrites `<data_dir>/dovecot-passwd` from the users file and the config's users
/// (private, written through the one durable write; the users file's entry wins over the
/// config's for the same address, as at login).
pub fn write_passwd(config: &Config, data_dir: &DataDir) -> Result<(), DirectoryError> {
    let file = read_users_file(&data_dir.users_file())?;
    let mut users = config.users.clone();
    users.extend(file.users);
    let (text, left_out) = passwd_lines(users.iter().map(|(a, h)| (a.as_str(), h.as_str())));
    for reason in left_out {
        tracing::warn!(%reason, "user left out of dovecot-passwd");
    }
    let path = data_dir.dovecot_passwd();
    let options = WriteOptions {
        owner: owner_for(data_dir.root()),
        ..WriteOptions::private()
    };
    let header = "# Kurier's users for Dovecot's passwd-file passdb; rewritten by `kurier user` and at start.\n";
    write_atomic(&path, &[header.as_bytes(), text.as_bytes()], &options).map_err(|e: io::Error| {
        DirectoryError::File {
            path: path.clone(),
            message: e.to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn argon2_users_become_passwd_lines_and_others_are_named() {
        let (text, left_out) = passwd_lines([
            (
                "alice@example.org",
                "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
            ),
            (
                "old@example.org",
                "$argon2i$v=19$m=4096,t=3,p=1$c2FsdA$aGFzaA",
            ),
            ("bcrypt@example.org", "$2b$12$abc"),
            (
                "\"a:b\"@example.org",
                "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
            ),
        ]);
        assert_eq!(
            text,
            "alice@example.org:{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA\n\
             old@example.org:{ARGON2I}$argon2i$v=19$m=4096,t=3,p=1$c2FsdA$aGFzaA\n"
        );
        assert_eq!(left_out.len(), 2, "{left_out:?}");
        assert!(left_out[0].starts_with("bcrypt@example.org"));
    }
}
