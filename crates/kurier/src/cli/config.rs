//! `kurier config check` and `kurier config default`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use clap::Subcommand;

use crate::config::Config;
use crate::data_dir::DataDir;
use crate::directory::Directory;

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file (default: the --config file) and report the offending key.
    Check {
        /// The file to check.
        file: Option<PathBuf>,
    },
    /// Print the embedded default configuration.
    Default,
}

/// Carries out a `kurier config` command; `--config` is the file to check when none is named,
/// `--data-dir` (else the file's `data_dir`) where the users are that aliases must end at.
pub fn run(
    cmd: &ConfigCommand,
    global: Option<&Path>,
    data_dir: Option<&Path>,
) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Check { file } => {
            let Some(path) = file.as_deref().or(global) else {
                bail!("name the file to check: kurier config check FILE");
            };
            let config = Config::load(path).with_context(|| format!("{}", path.display()))?;
            // What the server checks at start against the users there are: aliases.
            let data_dir = DataDir::new(data_dir.unwrap_or(&config.data_dir));
            let directory = Directory::new(&config, &data_dir);
            directory
                .check_aliases()
                .with_context(|| format!("{}", path.display()))?;
            println!(
                "{}: ok ({} listener(s), domains: {})",
                path.display(),
                config.listeners.len(),
                config.domains.join(", ")
            );
            Ok(())
        }
        ConfigCommand::Default => {
            print!("{}", Config::default_toml());
            Ok(())
        }
    }
}
