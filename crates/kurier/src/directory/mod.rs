//! Who receives mail here: local domains, users, aliases, and their mailboxes.
//!
//! Users come from two places: the config file's `[users]` table and `<data_dir>/users.toml`,
//! which `kurier user add` writes. The server notices changes to that file (size or
//! modification time) at the next lookup, so users added while it runs take effect at once.
//!
//! The lookups on the hot path live here; [`users`] edits the users file for `kurier user`.
//!
//! RFC 5321 §4.5.1: `postmaster` must exist in every local domain. Unless an alias says
//! otherwise, it is a mailbox of its own.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use kurier_smtp::{Domain, Mailbox};

use crate::config::Config;
use crate::data_dir::{DataDir, UnsafeMailboxName};

pub mod aliases;
pub mod dovecot;
pub mod password;
pub mod users;

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
    data_dir: DataDir,
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

impl Directory {
    /// Builds the directory from the config and the data directory.
    pub fn new(config: &Config, data_dir: &DataDir) -> Directory {
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
            users_path: data_dir.users_file(),
            cache: Mutex::new(UsersCache {
                stamp: None,
                users: Arc::new(HashMap::new()),
            }),
            delimiter: config.recipient_delimiter.chars().next(),
            data_dir: data_dir.clone(),
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

    /// The Maildir of a local mailbox: `<data_dir>/mail/<domain>/<local part>/`, refused
    /// for a name that is no safe path component (see [`DataDir::maildir`]).
    pub fn maildir(&self, m: &Mailbox) -> Result<PathBuf, UnsafeMailboxName> {
        self.data_dir.maildir(m)
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
            match users::read_users_file(&self.users_path) {
                Ok(file) => {
                    cache.users = Arc::new(users::checked_users(file, &self.users_path));
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
        if let Some(base) = self.base(m)
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
                // A target that is an alias is expanded; a user or postmaster is final. One
                // that is neither (a user removed from the users file by hand since the
                // start-up check) is left out rather than given a Maildir nobody reads.
                let found = self
                    .resolve_local(t, depth + 1)
                    .or_else(|| self.resolve_local(&self.base(t)?, depth + 1));
                if let Some(v) = found {
                    out.extend(v);
                } else {
                    tracing::warn!(alias = %key, target = %t, "alias target is no user: left out");
                }
            }
            out.sort();
            out.dedup();
            return (!out.is_empty()).then_some(out);
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
            Some(hash) => password::verify(password.as_bytes(), &hash),
            None => {
                // Spend the same time for unknown users, so timing does not reveal them.
                let _ = password::verify(password.as_bytes(), DUMMY_HASH);
                false
            }
        }
    }
}

/// A valid argon2id hash of a random string, used to equalize timing for unknown users.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Lbu4nRzaQ1YJO2n8wAozrVmDwWmc3lMaQUtUx0tdCTw";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::users::*;
    use super::*;
    use std::fs;

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
            &DataDir::new(dir.path()),
            "Alice@Example.test",
            UserChange::Add,
            Some("pw"),
        )
        .unwrap();
        change_user(
            &config,
            &DataDir::new(dir.path()),
            "bob@example.test",
            UserChange::Add,
            Some("pw2"),
        )
        .unwrap();
        let d = Directory::new(&config, &DataDir::new(dir.path()));
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
            d.maildir(&mb("Alice@example.test")).unwrap(),
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
            &DataDir::new(dir.path()),
            "alice@example.test",
            UserChange::Add,
            Some("pw"),
        )
        .unwrap();
        change_user(
            &config,
            &DataDir::new(dir.path()),
            "bob@example.test",
            UserChange::Add,
            Some("pw"),
        )
        .unwrap();
        let d = Directory::new(&config, &DataDir::new(dir.path()));
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
        let d = Directory::new(&config, &DataDir::new(dir.path()));
        assert!(!d.verify_password("alice@example.test", "pw"));
        change_user(
            &config,
            &DataDir::new(dir.path()),
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
            &DataDir::new(dir.path()),
            "alice@example.test",
            UserChange::Passwd,
            Some("new"),
        )
        .unwrap();
        assert!(d.verify_password("alice@example.test", "new"));
        change_user(
            &config,
            &DataDir::new(dir.path()),
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
            &DataDir::new(dir.path()),
            "alice@example.test",
            UserChange::Add,
            Some("pw"),
        )
        .unwrap();
        let e = change_user(
            &config,
            &DataDir::new(dir.path()),
            "alice@example.test",
            UserChange::Add,
            Some("pw"),
        );
        assert!(matches!(e, Err(DirectoryError::Exists(_))));
        let e = change_user(
            &config,
            &DataDir::new(dir.path()),
            "bob@example.test",
            UserChange::Passwd,
            Some("pw"),
        );
        assert!(matches!(e, Err(DirectoryError::Unknown(..))));
        let e = change_user(
            &config,
            &DataDir::new(dir.path()),
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
                change_user(
                    &config,
                    &DataDir::new(dir.path()),
                    bad,
                    UserChange::Add,
                    Some("pw")
                )
                .is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            list_users(&config, &DataDir::new(dir.path())).unwrap(),
            vec!["alice@example.test".to_string()]
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(DataDir::new(dir.path()).users_file())
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
        let d = Directory::new(&config, &DataDir::new(dir.path()));
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
