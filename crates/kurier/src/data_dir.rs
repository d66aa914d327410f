//! Every path under the data directory, built here and nowhere else.
//!
//! ```text
//! <data_dir>/
//!   kurier.lock        held by the running server (one instance per data directory)
//!   control.sock       `kurier queue …` talks to the running server here
//!   spool/             the queue (kurier-spool)
//!   mail/<domain>/<local part>/   Maildirs
//!   users.toml, users.lock        users added with `kurier user`
//!   tls/cert.pem, tls/key.pem     the self-signed certificate, when none is configured
//!   dkim/<domain>/<selector>.<algorithm>.key
//!   greylist.json      greylisting state
//! ```

use std::path::{Path, PathBuf};

use kurier_smtp::{Domain, Mailbox};

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

    /// The Maildir of a local mailbox: `mail/<domain>/<local part, lower case>/`.
    pub fn maildir(&self, m: &Mailbox) -> PathBuf {
        self.mail()
            .join(m.domain().as_str())
            .join(m.local().to_lowercase())
    }

    /// The users file `kurier user` edits.
    pub fn users_file(&self) -> PathBuf {
        self.0.join("users.toml")
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
}

/// A user's local part becomes a directory name under `mail/<domain>/`: it may not climb
/// out of it or hide (no leading dot, no slashes, no white space).
pub fn safe_mailbox_name(address: &str) -> Result<(), String> {
    let m = Mailbox::parse(address).map_err(|e| format!("{address:?}: {e}"))?;
    let local = m.local();
    if local.starts_with('.')
        || local.contains(['/', '\\'])
        || local.chars().any(char::is_whitespace)
    {
        return Err(format!(
            "{address:?}: a user's local part may not start with a dot or contain slashes or spaces"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn maildirs_are_lower_case_under_their_domain() {
        let d = DataDir::new("/srv/k");
        let m = Mailbox::parse("Alice@Example.ORG").unwrap();
        assert_eq!(d.maildir(&m), Path::new("/srv/k/mail/example.org/alice"));
        assert_eq!(d.tls_key(), Path::new("/srv/k/tls/key.pem"));
    }

    #[test]
    fn mailbox_names_cannot_escape() {
        assert!(safe_mailbox_name("alice@example.org").is_ok());
        for bad in [
            ".hidden@example.org",
            "\"a/b\"@example.org",
            "\"a b\"@example.org",
        ] {
            assert!(safe_mailbox_name(bad).is_err(), "{bad}");
        }
    }
}
