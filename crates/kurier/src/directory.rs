//! Who receives mail here: local domains, users, aliases, and their mailboxes.
//!
//! Users come from two places: the config file's `[users]` table and `<data_dir>/users.toml`,
//! which `kurier user add` writes. The server notices changes to that file (size or
//! modification time) at the next lookup, so users added while it runs take effect at once.
//!
//! RFC 5321 §4.5.1: `postmaster` must exist in every local domain. Unless an alias says
//! otherwise, it is a mailbox of its own.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use kurier_smtp::{Domain, Mailbox};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::Config;

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
struct UsersFile {
    #[serde(default)]
    users: BTreeMap<String, String>,
}

/// The users file, cached and reloaded when it changes.
#[derive(Debug)]
struct UsersCache {
    stamp: Option<(SystemTime, u64)>,
    users: Arc<HashMap<String, String>>,
}

/// Lookup of local recipients and credentials.
#[derive(Debug)]
pub struct Directory {
    domains: Vec<Domain>,
    aliases: HashMap<String, Vec<Mailbox>>,
    config_users: HashMap<String, String>,
    users_path: PathBuf,
    cache: Mutex<UsersCache>,
    delimiter: Option<char>,
    mail_root: PathBuf,
    senders: HashMap<String, Vec<String>>,
}

/// What an address is to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// A local address; mail goes to these mailboxes.
    Local(Vec<Mailbox>),
    /// A local domain, but no such user or alias.
    Unknown,
    /// Not one of our domains.
    Remote,
}

/// The key under which an address is looked up: lower case, since users expect
/// `Alice@Example.org` and `alice@example.org` to be the same mailbox.
pub fn address_key(m: &Mailbox) -> String {
    format!("{}@{}", m.local().to_lowercase(), m.domain())
}

/// A mailbox name must also be a safe directory name.
pub fn check_mailbox_name(address: &str) -> Result<(), String> {
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

impl Directory {
    /// Builds the directory from the config and the data directory.
    pub fn new(config: &Config, data_dir: &Path) -> Directory {
        let parse = |s: &str| Mailbox::parse(s).ok();
        let aliases = config
            .aliases
            .iter()
            .filter_map(|(k, v)| {
                let key = address_key(&parse(k)?);
                Some((key, v.addresses().into_iter().filter_map(parse).collect()))
            })
            .collect();
        let config_users = config
            .users
            .iter()
            .filter_map(|(k, v)| Some((address_key(&parse(k)?), v.clone())))
            .collect();
        Directory {
            domains: config.local_domains(),
            aliases,
            config_users,
            users_path: users_path(data_dir),
            cache: Mutex::new(UsersCache {
                stamp: None,
                users: Arc::new(HashMap::new()),
            }),
            delimiter: config.recipient_delimiter.chars().next(),
            mail_root: data_dir.join("mail"),
            senders: config
                .senders
                .iter()
                .filter_map(|(k, v)| {
                    let grants = v.iter().map(|a| a.to_lowercase()).collect();
                    Some((address_key(&parse(k)?), grants))
                })
                .collect(),
        }
    }

    /// True for our domains.
    pub fn is_local_domain(&self, d: &Domain) -> bool {
        self.domains.contains(d)
    }

    /// The primary domain (the first configured), where `<postmaster>` goes.
    pub fn primary_domain(&self) -> Option<&Domain> {
        self.domains.first()
    }

    /// The Maildir of a local mailbox: `<data_dir>/mail/<domain>/<local part>/`.
    pub fn maildir(&self, m: &Mailbox) -> PathBuf {
        self.mail_root
            .join(m.domain().as_str())
            .join(m.local().to_lowercase())
    }

    /// Users from the users file, reloaded if it changed since the last call.
    fn file_users(&self) -> Arc<HashMap<String, String>> {
        let stamp = fs::metadata(&self.users_path)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        let mut cache = match self.cache.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if cache.stamp != stamp {
            match read_users_file(&self.users_path) {
                Ok(file) => {
                    let users = file
                        .users
                        .into_iter()
                        .filter_map(|(k, v)| Some((address_key(&Mailbox::parse(&k).ok()?), v)))
                        .collect();
                    cache.users = Arc::new(users);
                    cache.stamp = stamp;
                }
                Err(e) => {
                    // Keep the previous users rather than locking everyone out.
                    tracing::warn!(error = %e, "users file unreadable, keeping the previous list");
                }
            }
        }
        cache.users.clone()
    }

    fn password_hash(&self, key: &str) -> Option<String> {
        self.config_users
            .get(key)
            .cloned()
            .or_else(|| self.file_users().get(key).cloned())
    }

    fn is_user(&self, key: &str) -> bool {
        self.config_users.contains_key(key) || self.file_users().contains_key(key)
    }

    /// Resolves a recipient address (RFC 5321 §4.5.1: postmaster always resolves).
    pub fn resolve(&self, m: &Mailbox) -> Resolution {
        if !self.is_local_domain(m.domain()) {
            return Resolution::Remote;
        }
        if let Some(r) = self.resolve_local(m, 0) {
            return Resolution::Local(r);
        }
        // Address extension: alice+tag@ → alice@.
        if let Some(delim) = self.delimiter
            && let Some((base, _)) = m.local().split_once(delim)
            && let Ok(base) = Mailbox::new(base, m.domain().clone())
            && let Some(r) = self.resolve_local(&base, 0)
        {
            return Resolution::Local(r);
        }
        Resolution::Unknown
    }

    fn resolve_local(&self, m: &Mailbox, depth: usize) -> Option<Vec<Mailbox>> {
        let key = address_key(m);
        if let Some(targets) = self.aliases.get(&key) {
            if depth > 8 {
                return None;
            }
            let mut out = Vec::new();
            for t in targets {
                // A target that is an alias is expanded; a user or postmaster is final.
                match self.resolve_local(t, depth + 1) {
                    Some(v) => out.extend(v),
                    None => out.push(t.clone()),
                }
            }
            out.sort();
            out.dedup();
            return Some(out);
        }
        if self.is_user(&key) || m.local().eq_ignore_ascii_case("postmaster") {
            return Some(vec![m.clone()]);
        }
        None
    }

    /// True when the authenticated `user` may send as `sender`: their own address (with or
    /// without an extension), an alias that delivers to them, or a grant in `[senders]`.
    /// This keeps authenticated accounts from spoofing other people.
    pub fn may_send_as(&self, user: &str, sender: &Mailbox) -> bool {
        let Ok(u) = Mailbox::parse(user) else {
            return false;
        };
        let user_key = address_key(&u);
        if address_key(sender) == user_key {
            return true;
        }
        if let Resolution::Local(targets) = self.resolve(sender)
            && targets.iter().any(|t| address_key(t) == user_key)
        {
            return true;
        }
        let sender_key = address_key(sender);
        let domain = format!("@{}", sender.domain());
        self.senders
            .get(&user_key)
            .is_some_and(|grants| grants.iter().any(|g| *g == sender_key || *g == domain))
    }

    /// Checks a password. Slow on purpose (argon2): call it off the async reactor.
    pub fn verify_password(&self, username: &str, password: &str) -> bool {
        let Ok(m) = Mailbox::parse(username) else {
            return false;
        };
        match self.password_hash(&address_key(&m)) {
            Some(hash) => Argon2::default()
                .verify_password(password.as_bytes(), hash.as_str())
                .is_ok(),
            None => {
                // Spend the same time for unknown users, so timing does not reveal them.
                let _ = Argon2::default().verify_password(password.as_bytes(), DUMMY_HASH);
                false
            }
        }
    }
}

/// A valid argon2id hash of a random string, used to equalize timing for unknown users.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Lbu4nRzaQ1YJO2n8wAozrVmDwWmc3lMaQUtUx0tdCTw";

/// `<data_dir>/users.toml`.
pub fn users_path(data_dir: &Path) -> PathBuf {
    data_dir.join("users.toml")
}

fn read_users_file(path: &Path) -> Result<UsersFile, DirectoryError> {
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
    data_dir: &Path,
    address: &str,
    change: UserChange,
    password: Option<&str>,
) -> Result<(), DirectoryError> {
    check_mailbox_name(address).map_err(DirectoryError::BadAddress)?;
    let m = Mailbox::parse(address).map_err(|e| DirectoryError::BadAddress(e.to_string()))?;
    if !config.local_domains().contains(m.domain()) {
        return Err(DirectoryError::BadAddress(format!(
            "{} is not a local domain (local domains: {}); add it to `domains` in the config",
            m.domain(),
            config.domains.join(", ")
        )));
    }
    let key = address_key(&m);
    let path = users_path(data_dir);
    let file_err = |e: io::Error| DirectoryError::File {
        path: path.clone(),
        message: e.to_string(),
    };
    fs::create_dir_all(data_dir).map_err(file_err)?;
    let lock = fs::File::create(data_dir.join("users.lock")).map_err(file_err)?;
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
    let tmp = data_dir.join("users.toml.tmp");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(file_err)?;
        f.write_all(text.as_bytes()).map_err(file_err)?;
        f.sync_all().map_err(file_err)?;
    }
    // Started as root for a server that runs as another user: hand the file to the data
    // directory's owner so the server can read it.
    if let Ok(meta) = fs::metadata(data_dir) {
        use std::os::unix::fs::MetadataExt;
        if nix::unistd::geteuid().is_root() && meta.uid() != 0 {
            let _ = std::os::unix::fs::chown(&tmp, Some(meta.uid()), Some(meta.gid()));
        }
    }
    fs::rename(&tmp, &path).map_err(file_err)?;
    fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(file_err)?;
    Ok(())
}

/// Lists users from the users file and the config.
pub fn list_users(config: &Config, data_dir: &Path) -> Result<Vec<String>, DirectoryError> {
    let mut users: Vec<String> = read_users_file(&users_path(data_dir))?
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

    fn mb(s: &str) -> Mailbox {
        Mailbox::parse(s).unwrap()
    }

    fn setup() -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse(
            r#"
            domains = ["example.test", "other.test"]
            [aliases]
            "info@example.test" = ["alice@example.test", "team@example.test"]
            "team@example.test" = ["bob@example.test", "alice@example.test"]
            "postmaster@other.test" = "alice@example.test"
            "#,
        )
        .unwrap();
        (dir, config)
    }

    #[test]
    fn resolution() {
        let (dir, config) = setup();
        change_user(
            &config,
            dir.path(),
            "Alice@Example.test",
            UserChange::Add,
            Some("pw"),
        )
        .unwrap();
        change_user(
            &config,
            dir.path(),
            "bob@example.test",
            UserChange::Add,
            Some("pw2"),
        )
        .unwrap();
        let d = Directory::new(&config, dir.path());
        assert_eq!(
            d.resolve(&mb("alice@example.test")),
            Resolution::Local(vec![mb("alice@example.test")])
        );
        assert_eq!(
            d.resolve(&mb("ALICE@EXAMPLE.TEST")),
            Resolution::Local(vec![mb("ALICE@example.test")])
        );
        assert_eq!(
            d.resolve(&mb("alice+news@example.test")),
            Resolution::Local(vec![mb("alice@example.test")])
        );
        assert_eq!(
            d.resolve(&mb("info@example.test")),
            Resolution::Local(vec![mb("alice@example.test"), mb("bob@example.test")])
        );
        assert_eq!(d.resolve(&mb("nobody@example.test")), Resolution::Unknown);
        assert_eq!(d.resolve(&mb("alice@elsewhere.test")), Resolution::Remote);
        // Postmaster exists in every local domain; an alias can redirect it.
        assert_eq!(
            d.resolve(&mb("PostMaster@example.test")),
            Resolution::Local(vec![mb("PostMaster@example.test")])
        );
        assert_eq!(
            d.resolve(&mb("postmaster@other.test")),
            Resolution::Local(vec![mb("alice@example.test")])
        );
        assert_eq!(
            d.maildir(&mb("Alice@example.test")),
            dir.path().join("mail/example.test/alice")
        );
    }

    #[test]
    fn who_may_send_as_whom() {
        let (dir, _) = setup();
        let config = Config::parse(
            r#"
            domains = ["example.test", "other.test"]
            [aliases]
            "info@example.test" = ["alice@example.test", "bob@example.test"]
            [senders]
            "bob@example.test" = ["@other.test", "boss@example.test"]
            "#,
        )
        .unwrap();
        change_user(
            &config,
            dir.path(),
            "alice@example.test",
            UserChange::Add,
            Some("pw"),
        )
        .unwrap();
        change_user(
            &config,
            dir.path(),
            "bob@example.test",
            UserChange::Add,
            Some("pw"),
        )
        .unwrap();
        let d = Directory::new(&config, dir.path());
        assert!(d.may_send_as("alice@example.test", &mb("Alice@Example.test")));
        assert!(d.may_send_as("alice@example.test", &mb("alice+lists@example.test")));
        assert!(
            d.may_send_as("alice@example.test", &mb("info@example.test")),
            "alias delivering to her"
        );
        assert!(!d.may_send_as("alice@example.test", &mb("bob@example.test")));
        assert!(!d.may_send_as("alice@example.test", &mb("someone@remote.test")));
        assert!(
            d.may_send_as("bob@example.test", &mb("anyone@other.test")),
            "domain grant"
        );
        assert!(
            d.may_send_as("bob@example.test", &mb("boss@example.test")),
            "address grant"
        );
        assert!(!d.may_send_as("bob@example.test", &mb("alice@example.test")));
    }

    #[test]
    fn passwords_and_live_reload() {
        let (dir, config) = setup();
        let d = Directory::new(&config, dir.path());
        assert!(!d.verify_password("alice@example.test", "pw"));
        change_user(
            &config,
            dir.path(),
            "alice@example.test",
            UserChange::Add,
            Some("pw"),
        )
        .unwrap();
        assert!(
            d.verify_password("alice@example.test", "pw"),
            "new user visible without restart"
        );
        assert!(d.verify_password("ALICE@example.test", "pw"));
        assert!(!d.verify_password("alice@example.test", "wrong"));
        change_user(
            &config,
            dir.path(),
            "alice@example.test",
            UserChange::Passwd,
            Some("new"),
        )
        .unwrap();
        assert!(d.verify_password("alice@example.test", "new"));
        change_user(
            &config,
            dir.path(),
            "alice@example.test",
            UserChange::Delete,
            None,
        )
        .unwrap();
        assert!(!d.verify_password("alice@example.test", "new"));
        assert_eq!(d.resolve(&mb("alice@example.test")), Resolution::Unknown);
    }

    #[test]
    fn user_changes_are_checked() {
        let (dir, config) = setup();
        change_user(
            &config,
            dir.path(),
            "alice@example.test",
            UserChange::Add,
            Some("pw"),
        )
        .unwrap();
        let e = change_user(
            &config,
            dir.path(),
            "alice@example.test",
            UserChange::Add,
            Some("pw"),
        );
        assert!(matches!(e, Err(DirectoryError::Exists(_))));
        let e = change_user(
            &config,
            dir.path(),
            "bob@example.test",
            UserChange::Passwd,
            Some("pw"),
        );
        assert!(matches!(e, Err(DirectoryError::Unknown(..))));
        let e = change_user(
            &config,
            dir.path(),
            "x@remote.test",
            UserChange::Add,
            Some("pw"),
        );
        assert!(e.unwrap_err().to_string().contains("not a local domain"));
        for bad in [
            "../x@example.test",
            "\"a/b\"@example.test",
            "\"a b\"@example.test",
            "nodomain",
        ] {
            assert!(
                change_user(&config, dir.path(), bad, UserChange::Add, Some("pw")).is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            list_users(&config, dir.path()).unwrap(),
            vec!["alice@example.test".to_string()]
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(users_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn config_users() {
        let hash = hash_password("cfgpw").unwrap();
        let config =
            Config::parse(&format!("[users]\n\"carol@localhost\" = \"{hash}\"\n")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = Directory::new(&config, dir.path());
        assert!(d.verify_password("carol@localhost", "cfgpw"));
        assert_eq!(
            d.resolve(&mb("carol@localhost")),
            Resolution::Local(vec![mb("carol@localhost")])
        );
    }

    #[test]
    fn dummy_hash_is_valid() {
        assert!(argon2::PasswordHash::new(DUMMY_HASH).is_ok());
    }
}
