//! `kurier user`: the users file, edited under its lock (see [`crate::directory::users`]).
//!
//! The command line is the binary's edge: these functions report with `anyhow`, in words
//! for the person at the terminal.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Subcommand;

use crate::config::Config;
use crate::data_dir::DataDir;
use crate::directory::users::{self, UserChange};
use crate::directory::{Directory, address_key};

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a user with a password.
    Add {
        /// The address, e.g. alice@localhost (its domain must be local).
        address: String,
        /// Read the password from the first line of this file instead of asking.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Change a user's password.
    Passwd {
        /// The address.
        address: String,
        /// Read the password from the first line of this file instead of asking.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Remove a user (the mailbox is kept).
    Del {
        /// The address.
        address: String,
    },
    /// List users.
    List,
    /// Print the argon2 hash of a password, for the config file's [users] table.
    Hash {
        /// Read the password from the first line of this file instead of asking.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
}

/// Carries out a `kurier user` command.
pub fn run(cmd: &UserCommand, config: &Config, data_dir: &DataDir) -> anyhow::Result<()> {
    // The password (perhaps from a file only root may read) before giving up root.
    let password = match cmd {
        UserCommand::Add { password_file, .. }
        | UserCommand::Passwd { password_file, .. }
        | UserCommand::Hash { password_file } => read_password(password_file.as_deref())?,
        UserCommand::Del { .. } | UserCommand::List => String::new(),
    };
    if !matches!(cmd, UserCommand::Hash { .. }) {
        super::as_data_dir_owner(config, data_dir)?;
    }
    match cmd {
        UserCommand::Add { address, .. } => {
            users::change_user(config, data_dir, address, UserChange::Add, Some(&password))?;
            println!(
                "added {address}; its mail goes to {}",
                maildir_hint(data_dir, address)
            );
        }
        UserCommand::Passwd { address, .. } => {
            users::change_user(
                config,
                data_dir,
                address,
                UserChange::Passwd,
                Some(&password),
            )?;
            println!("password changed for {address}");
        }
        UserCommand::Del { address } => {
            // An alias that ends only at this user would lose its mail (and the server would
            // refuse to start with it): the alias goes first.
            if let Ok(m) = kurier_smtp::Mailbox::parse(address) {
                Directory::new(config, data_dir)
                    .check_aliases_without(&address_key(&m))
                    .with_context(|| format!("not removing {address}"))?;
            }
            users::change_user(config, data_dir, address, UserChange::Delete, None)?;
            println!("removed {address} (its mailbox is kept)");
        }
        UserCommand::List => {
            for u in users::list_users(config, data_dir)? {
                println!("{u}");
            }
        }
        UserCommand::Hash { .. } => {
            println!("{}", users::hash_password(&password)?);
        }
    }
    Ok(())
}

/// `passwd`, `del` and `list`: they work on users that must already be there.
pub fn reads_users(cmd: &UserCommand) -> bool {
    matches!(
        cmd,
        UserCommand::Passwd { .. } | UserCommand::Del { .. } | UserCommand::List
    )
}

/// `add`: it may create the data directory (of a configured server).
pub fn adds_user(cmd: &UserCommand) -> bool {
    matches!(cmd, UserCommand::Add { .. })
}

fn maildir_hint(data_dir: &DataDir, address: &str) -> String {
    kurier_smtp::Mailbox::parse(address)
        .ok()
        .and_then(|m| data_dir.maildir(&m).ok())
        .unwrap_or_else(|| data_dir.mail())
        .display()
        .to_string()
}

/// The password from a file's first line, an interactive prompt (asked twice), or one line
/// of standard input when it is not a terminal.
fn read_password(file: Option<&Path>) -> anyhow::Result<String> {
    let password = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            text.lines().next().unwrap_or_default().to_string()
        }
        None if std::io::stdin().is_terminal() => {
            let first = rpassword::prompt_password("Password: ").context("reading the password")?;
            let again = rpassword::prompt_password("Again: ").context("reading the password")?;
            if first != again {
                bail!("the passwords do not match");
            }
            first
        }
        None => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the password from stdin")?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    Ok(password)
}
