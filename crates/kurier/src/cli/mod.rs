//! The command line's subcommands other than `serve`: each file holds one command's clap
//! types and what it does. This wing is the binary's edge: it reports with `anyhow`, in words
//! for the person at the terminal, and reaches the server only through the control socket
//! and the files of the data directory.

pub mod config;
pub mod dkim;
pub mod dns;
pub mod dovecot;
pub mod history;
pub mod queue;
pub mod suppress;
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

/// An error and its causes on one line, `outer: cause: root cause`, leaving out a cause
/// whose words the line already holds (an error that names its cause in its own message
/// would otherwise print it twice: `cannot listen on …: Address in use: Address in use`).
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let words = cause.to_string();
        if text.contains(&words) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&words);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot listen on 127.0.0.1:25: {source}")]
    struct Bind {
        source: std::io::Error,
    }

    #[test]
    fn each_cause_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address in use");
        let e = anyhow::Error::new(Bind { source: io }).context("starting");
        assert_eq!(
            error_text(&e),
            "starting: cannot listen on 127.0.0.1:25: Address in use"
        );
        let plain = anyhow::anyhow!("root").context("middle").context("top");
        assert_eq!(error_text(&plain), "top: middle: root");
    }
}
