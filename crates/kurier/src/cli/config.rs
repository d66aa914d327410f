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
            // What the server checks at start beyond the file itself: the certificate and
            // key load, the service user exists, the aliases end at users there are.
            if let (Some(cert), Some(key)) = (&config.tls.certificate, &config.tls.private_key) {
                let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
                crate::tls::load(cert, key)
                    .and_then(crate::tls::server_config)
                    .with_context(|| format!("{}", path.display()))?;
            }
            if let Some(user) = &config.run_as {
                crate::server::privilege::check_run_as(user)
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("{}: run_as", path.display()))?;
            }
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
