//! The command line's subcommands other than `serve`: each file holds one command's clap
//! types and what it does. This wing is the binary's edge: it reports with `anyhow`, in words
//! for the person at the terminal, and reaches the server only through the control socket
//! and the files of the data directory.

pub mod config;
pub mod dkim;
pub mod queue;
pub mod user;

use crate::config::Config;
use crate::data_dir::DataDir;

/// Run as root, a command becomes the data directory's owner before it touches anything in
/// it (see [`crate::server::privilege::become_data_dir_owner`]): root must not open, write or
/// rename paths in a directory another user controls. Input the command needs from root's
/// files (the config, a password file) is read before.
pub fn as_data_dir_owner(config: &Config, data_dir: &DataDir) -> anyhow::Result<()> {
    crate::server::privilege::become_data_dir_owner(data_dir.root(), config.run_as.as_deref())
        .map_err(anyhow::Error::msg)
}
