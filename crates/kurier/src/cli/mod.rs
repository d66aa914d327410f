//! The command line's subcommands other than `serve`: each file holds one command's clap
//! types and what it does. This wing is the binary's edge: it reports with `anyhow`, in words
//! for the person at the terminal, and reaches the server only through the control socket
//! and the files of the data directory.

pub mod config;
pub mod dkim;
pub mod queue;
pub mod user;
