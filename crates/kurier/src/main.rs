//! The `kurier` command: run the server, manage users, check the configuration.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kurier::cli;
use kurier::config::Config;
use kurier::data_dir::DataDir;

/// Kurier: an SMTP mail server.
#[derive(Parser)]
#[command(name = "kurier", version, about)]
struct Cli {
    /// Config file (TOML). Without it, the embedded default is used: loopback ports 2525,
    /// 2587 and 2465, domain `localhost`, data in ./kurier-data.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (queue, mailboxes, users, TLS keys); overrides `data_dir`.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mail server until SIGTERM or Ctrl-C.
    Serve,
    /// Manage users (stored in <data_dir>/users.toml; a running server picks changes up).
    #[command(subcommand)]
    User(cli::user::UserCommand),
    /// Check or print the configuration.
    #[command(subcommand)]
    Config(cli::config::ConfigCommand),
    /// Inspect and manage the mail queue (works while the server runs).
    #[command(subcommand)]
    Queue(cli::queue::QueueCmd),
    /// DKIM signing keys.
    #[command(subcommand)]
    Dkim(cli::dkim::DkimCmd),
}

fn main() -> ExitCode {
    // Everything Kurier creates is private to its user (queue files carry whole messages,
    // DSNs carry originals, mailboxes are private), whatever umask it was started with;
    // files meant for others (the certificate) get their mode explicitly.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kurier: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(cli: &Cli) -> anyhow::Result<(Config, DataDir)> {
    let config = match &cli.config {
        Some(path) => Config::load(path).with_context(|| format!("config {}", path.display()))?,
        None => Config::default(),
    };
    let data_dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(|| config.data_dir.clone());
    Ok((config, DataDir::new(data_dir)))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Serve => {
            let (config, data_dir) = load_config(&cli)?;
            init_logging(&config.log.level);
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(kurier::server::run(config, data_dir))?;
            Ok(())
        }
        Command::User(cmd) => {
            let (config, data_dir) = load_config(&cli)?;
            cli::user::run(cmd, &config, &data_dir)
        }
        Command::Config(cmd) => {
            cli::config::run(cmd, cli.config.as_deref(), cli.data_dir.as_deref())
        }
        Command::Queue(cmd) => {
            let (config, data_dir) = load_config(&cli)?;
            cli::as_data_dir_owner(&config, &data_dir)?;
            cli::queue::run(cmd, &data_dir)
        }
        Command::Dkim(cmd) => {
            let (config, data_dir) = load_config(&cli)?;
            cli::as_data_dir_owner(&config, &data_dir)?;
            cli::dkim::run(cmd, &config, &data_dir)
        }
    }
}

fn init_logging(level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("KURIER_LOG")
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
