//! Every path under the data directory, built here and nowhere else.
//!
//! ```text
//! <data_dir>/
//!   kurier.lock        held by the running server (one instance per data directory)
//!   control.sock       `kurier queue …` talks to the running server here
//!   spool/             the queue (kurier-spool)
//!   mail/<domain>/<local part>/   Maildirs
//!   users.toml, users.lock        users added with `kurier user`
//!   dovecot-passwd     the users again, for Dovecot's passwd-file passdb
//!   tls/cert.pem, tls/key.pem     the self-signed certificate, when none is configured
//!   dkim/<domain>/<selector>.<algorithm>.key
//!   greylist.json      greylisting state
//! ```

use std::path::{Path, PathBuf};

use kurier_smtp::{Domain, Mailbox};
use thiserror::Error;

/// The names Kurier creates at the top of a data directory. A directory that has entries
/// but none of these is someone else's: the server refuses it rather than taking it over
/// (a `data_dir = "/var/lib"` typo must not give `/var/lib` to the service user).
pub const KURIER_ENTRIES: &[&str] = &[
    "kurier.lock",
    "listening",
    "control.sock",
    "spool",
    "mail",
    "users.toml",
    "users.lock",
    "dovecot-passwd",
    "tls",
    "dkim",
    "greylist.json",
];

/// An address whose local part or domain cannot be a directory name under `mail/`.
#[derive(Debug, Error)]
#[error(
    "{0:?}: an address that names a mailbox may not be empty, start with a dot, or contain slashes, white space or control characters"
)]
pub struct UnsafeMailboxName(pub String);

/// The data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir(PathBuf);

impl DataDir {
    /// The data directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir(root.into())
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.0
    }

    /// The lock the running server holds.
    pub fn server_lock(&self) -> PathBuf {
        self.0.join("kurier.lock")
    }

    /// Where the running server says which process it is and which addresses it listens
    /// on (one `role address` per line after `pid N`): for scripts and tests that start it
    /// with port 0 or need to know it is ready, without reading its banner.
    pub fn listening(&self) -> PathBuf {
        self.0.join("listening")
    }

    /// The control socket of the running server.
    pub fn control_socket(&self) -> PathBuf {
        self.0.join("control.sock")
    }

    /// The queue.
    pub fn spool(&self) -> PathBuf {
        self.0.join("spool")
    }

    /// The root of all Maildirs.
    pub fn mail(&self) -> PathBuf {
        self.0.join("mail")
    }

    /// The Maildir of a local mailbox: `mail/<domain>/<local part, lower case>/`. This is
    /// the one place an address becomes a path, so it is the one place that checks: a local
    /// part such as `"../../../escape"` (legal in RFC 5321 as a quoted string) is refused
    /// here whichever way it came (an alias target, a users file edited by hand, RCPT).
    pub fn maildir(&self, m: &Mailbox) -> Result<PathBuf, UnsafeMailboxName> {
        let local = m.local().to_lowercase();
        let domain = m.domain().as_str();
        if !is_safe_name(&local) || !is_safe_name(domain) {
            return Err(UnsafeMailboxName(m.to_string()));
        }
        Ok(self.mail().join(domain).join(local))
    }

    /// The users file `kurier user` edits.
    pub fn users_file(&self) -> PathBuf {
        self.0.join("users.toml")
    }

    /// The users as a Dovecot passwd-file, for IMAP and POP3 logins.
    pub fn dovecot_passwd(&self) -> PathBuf {
        self.0.join("dovecot-passwd")
    }

    /// The lock that serializes edits of the users file.
    pub fn users_lock(&self) -> PathBuf {
        self.0.join("users.lock")
    }

    /// The generated certificate.
    pub fn tls_cert(&self) -> PathBuf {
        self.0.join("tls").join("cert.pem")
    }

    /// The generated certificate's private key.
    pub fn tls_key(&self) -> PathBuf {
        self.0.join("tls").join("key.pem")
    }

    /// Where DKIM keys live, one folder per domain.
    pub fn dkim(&self) -> PathBuf {
        self.0.join("dkim")
    }

    /// The DKIM keys of one domain.
    pub fn dkim_domain(&self, domain: &Domain) -> PathBuf {
        self.dkim().join(domain.as_str())
    }

    /// Greylisting state.
    pub fn greylist(&self) -> PathBuf {
        self.0.join("greylist.json")
    }

    /// What happened to messages that left the queue (`kurier queue history`).
    pub fn history(&self) -> PathBuf {
        self.0.join("history")
    }

    /// The destinations the running server found dead, for `kurier queue list`.
    pub fn dead_destinations(&self) -> PathBuf {
        self.0.join("dead-destinations.json")
    }
}

/// One path component made from an address: it may not climb out of its directory or hide
/// (no leading dot, so neither `..` nor a Maildir++ folder name), and holds no slashes,
/// white space or control characters.
fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\'])
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The check of [`DataDir::maildir`] for an address given as text (config tables, `kurier
/// user`, the users file), with the reason in words.
pub fn safe_mailbox_name(address: &str) -> Result<(), String> {
    let m = Mailbox::parse(address).map_err(|e| format!("{address:?}: {e}"))?;
    DataDir::new("")
        .maildir(&m)
        .map(drop)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn maildirs_are_lower_case_under_their_domain() {
        let d = DataDir::new("/srv/k");
        let m = Mailbox::parse("Alice@Example.ORG").unwrap();
        assert_eq!(
            d.maildir(&m).unwrap(),
            Path::new("/srv/k/mail/example.org/alice")
        );
        assert_eq!(d.tls_key(), Path::new("/srv/k/tls/key.pem"));
    }

    #[test]
    fn mailbox_names_cannot_escape() {
        assert!(safe_mailbox_name("alice@example.org").is_ok());
        for bad in [
            ".hidden@example.org",
            "\"a/b\"@example.org",
            "\"a b\"@example.org",
            "\"../../../escape\"@example.org",
            "\"a\\\\b\"@example.org",
        ] {
            assert!(safe_mailbox_name(bad).is_err(), "{bad}");
            // (A dot-atom cannot start with a dot: that one is no address at all.)
            if let Ok(m) = Mailbox::parse(bad) {
                assert!(DataDir::new("/srv/k").maildir(&m).is_err(), "{bad}");
            }
        }
    }
}
