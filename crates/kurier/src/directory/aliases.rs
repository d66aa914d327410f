//! Aliases that cannot lose mail: every target ends at a user or a postmaster, and no alias
//! leads back to itself. An alias to an address that is neither would deliver into a Maildir
//! nobody can log in to, and a loop would bounce every message sent to it; both are
//! configuration errors, found before the server starts (and by `kurier config check`), and
//! `kurier user del` refuses to take away the last user an alias ends at.

use std::collections::HashMap;

use kurier_smtp::Mailbox;
use thiserror::Error;

use super::{Directory, address_key};

/// Why the aliases could lose mail.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AliasError {
    /// A target that is neither a user nor an alias.
    #[error(
        "aliases.\"{alias}\": {target} is neither a user nor an alias, so its mail would go to a mailbox nobody can read; add the user (kurier user add {target}) or change the alias"
    )]
    Nowhere {
        /// The alias.
        alias: String,
        /// The target.
        target: String,
    },
    /// An alias that leads back to itself.
    #[error("aliases.\"{alias}\" loops back to itself: {path}")]
    Loop {
        /// The alias.
        alias: String,
        /// The chain, `a → b → a`.
        path: String,
    },
}

impl Directory {
    /// Checks every alias against the users there are now.
    pub fn check_aliases(&self) -> Result<(), AliasError> {
        check(&self.aliases, &|m| self.is_final(m, None))
    }

    /// Checks every alias as if the user `removed` (an address key) were gone.
    pub fn check_aliases_without(&self, removed: &str) -> Result<(), AliasError> {
        check(&self.aliases, &|m| self.is_final(m, Some(removed)))
    }

    /// A target that is itself a mailbox: a user (with or without an address extension;
    /// not `except`) or a postmaster.
    fn is_final(&self, m: &Mailbox, except: Option<&str>) -> bool {
        let is_box = |m: &Mailbox| {
            let key = address_key(m);
            (self.is_user(&key) && except != Some(key.as_str()))
                || m.local().eq_ignore_ascii_case("postmaster")
        };
        is_box(m) || self.base(m).is_some_and(|b| is_box(&b))
    }

    /// `alice+tag@` → `alice@` (the recipient delimiter), for an address with an extension.
    pub(super) fn base(&self, m: &Mailbox) -> Option<Mailbox> {
        let delim = self.delimiter?;
        let (base, _) = m.local().split_once(delim)?;
        Mailbox::new(base, m.domain().clone()).ok()
    }
}

/// Walks every alias, in a fixed order so the same config always names the same error.
fn check(
    aliases: &HashMap<String, Vec<Mailbox>>,
    is_final: &dyn Fn(&Mailbox) -> bool,
) -> Result<(), AliasError> {
    let mut names: Vec<&String> = aliases.keys().collect();
    names.sort();
    for name in names {
        walk(aliases, is_final, &mut vec![name.clone()])?;
    }
    Ok(())
}

/// Follows the targets of the last alias on `path`; each step is a new alias (a repeated
/// one is the loop), so the walk ends.
fn walk(
    aliases: &HashMap<String, Vec<Mailbox>>,
    is_final: &dyn Fn(&Mailbox) -> bool,
    path: &mut Vec<String>,
) -> Result<(), AliasError> {
    let Some(targets) = path.last().and_then(|a| aliases.get(a)) else {
        return Ok(());
    };
    for t in targets {
        let key = address_key(t);
        if path.contains(&key) {
            path.push(key);
            return Err(AliasError::Loop {
                alias: path[0].clone(),
                path: path.join(" → "),
            });
        }
        if aliases.contains_key(&key) {
            path.push(key);
            walk(aliases, is_final, path)?;
            path.pop();
        } else if !is_final(t) {
            return Err(AliasError::Nowhere {
                alias: path[0].clone(),
                target: t.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Config;
    use crate::data_dir::DataDir;
    use crate::directory::users::{UserChange, change_user};
    use crate::directory::{Resolution, address_key};

    /// A directory with the user alice (in the users file, as `kurier user add` makes her)
    /// and these aliases.
    fn directory(aliases: &str) -> (tempfile::TempDir, Directory) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse(&format!(
            "domains = [\"example.test\"]\n[aliases]\n{aliases}"
        ))
        .unwrap();
        let data = DataDir::new(dir.path());
        change_user(
            &config,
            &data,
            "alice@example.test",
            UserChange::Add,
            Some("pw"),
        )
        .unwrap();
        let d = Directory::new(&config, &data);
        (dir, d)
    }

    #[test]
    fn aliases_that_end_at_users_pass() {
        for ok in [
            r#""info@example.test" = "alice@example.test""#,
            r#""info@example.test" = ["team@example.test", "alice@example.test"]
               "team@example.test" = ["Alice@example.test", "postmaster@example.test"]"#,
            r#""info@example.test" = "alice+info@example.test""#,
            // Two aliases that share a target are no loop.
            r#""a@example.test" = ["b@example.test", "c@example.test"]
               "b@example.test" = "c@example.test"
               "c@example.test" = "alice@example.test""#,
        ] {
            let (_dir, d) = directory(ok);
            assert_eq!(d.check_aliases(), Ok(()), "{ok}");
        }
    }

    #[test]
    fn an_alias_to_nowhere_is_refused_naming_alias_and_target() {
        let (_dir, d) = directory(
            r#""info@example.test" = ["alice@example.test", "team@example.test"]
               "team@example.test" = "bob@example.test""#,
        );
        let e = d.check_aliases().unwrap_err();
        assert_eq!(
            e,
            AliasError::Nowhere {
                alias: "info@example.test".into(),
                target: "bob@example.test".into()
            }
        );
        assert!(
            e.to_string().contains("kurier user add bob@example.test"),
            "{e}"
        );
    }

    #[test]
    fn loops_are_refused_with_their_chain() {
        let (_dir, d) = directory(
            r#""a@example.test" = "b@example.test"
               "b@example.test" = ["alice@example.test", "A@example.test"]"#,
        );
        let e = d.check_aliases().unwrap_err();
        assert_eq!(
            e,
            AliasError::Loop {
                alias: "a@example.test".into(),
                path: "a@example.test → b@example.test → a@example.test".into()
            }
        );
        let (_dir, d) = directory(r#""self@example.test" = "self@example.test""#);
        assert!(matches!(d.check_aliases(), Err(AliasError::Loop { .. })));
    }

    /// `kurier user del` may not take away the user an alias ends at; another user may go.
    #[test]
    fn removing_the_user_an_alias_ends_at_is_refused() {
        let (_dir, d) = directory(r#""info@example.test" = "alice+info@example.test""#);
        let alice = address_key(&Mailbox::parse("Alice@example.test").unwrap());
        assert!(matches!(
            d.check_aliases_without(&alice),
            Err(AliasError::Nowhere { .. })
        ));
        assert_eq!(d.check_aliases_without("carol@example.test"), Ok(()));
    }

    /// A target whose user was removed by hand from the users file after the start-up
    /// check is left out; with no target left, the alias is no address any more (RCPT is
    /// refused, the sender learns it) instead of filling a mailbox nobody reads.
    #[test]
    fn a_target_that_is_no_user_is_left_out_at_delivery() {
        let (dir, d) = directory(
            r#""info@example.test" = ["alice@example.test", "gone@example.test"]
               "solo@example.test" = "gone@example.test""#,
        );
        let mb = |s: &str| Mailbox::parse(s).unwrap();
        assert_eq!(
            d.resolve(&mb("info@example.test")),
            Resolution::Local(vec![mb("alice@example.test")])
        );
        assert_eq!(d.resolve(&mb("solo@example.test")), Resolution::Unknown);
        drop(dir);
    }
}
