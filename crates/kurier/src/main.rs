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
    /// Config file (TOML); else $KURIER_CONFIG, else /etc/kurier/kurier.toml when it exists.
    /// Without one, the embedded default is used: loopback ports 2525, 2587 and 2465, domain
    /// `localhost`, data in ./kurier-data.
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
    /// The DNS records a local domain needs (MX, SPF, DKIM, DMARC, TLS-RPT, TLSA).
    #[command(subcommand)]
    Dns(cli::dns::DnsCmd),
    /// IMAP and POP3 through Dovecot on Kurier's Maildirs.
    #[command(subcommand)]
    Dovecot(cli::dovecot::DovecotCmd),
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
            eprintln!("kurier: error: {}", cli::error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// Where the config is looked for when `--config` is not given and `KURIER_CONFIG` is unset.
const SYSTEM_CONFIG: &str = "/etc/kurier/kurier.toml";

/// The config file: `--config`, else `KURIER_CONFIG`, else [`SYSTEM_CONFIG`] when it exists;
/// none means the embedded default.
fn config_path(cli: &Cli) -> Option<PathBuf> {
    cli.config
        .clone()
        .or_else(|| {
            std::env::var_os("KURIER_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .or_else(|| Some(PathBuf::from(SYSTEM_CONFIG)).filter(|p| p.exists()))
}

/// The config, the data directory, and whether either was chosen (a file, `--data-dir`)
/// rather than the embedded default's `./kurier-data`.
fn load_config(cli: &Cli) -> anyhow::Result<(Config, DataDir, bool)> {
    let path = config_path(cli);
    let config = match &path {
        Some(path) => Config::load(path).with_context(|| format!("config {}", path.display()))?,
        None => Config::default(),
    };
    let chosen = path.is_some() || cli.data_dir.is_some();
    let data_dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(|| config.data_dir.clone());
    Ok((config, DataDir::new(data_dir), chosen))
}

/// Commands that read the server's state answer from its data directory or not at all: an
/// empty answer from a directory that is not there (the wrong working directory, a missing
/// `--config`) would look like an empty queue.
fn existing(data_dir: &DataDir) -> anyhow::Result<()> {
    if data_dir.root().is_dir() {
        return Ok(());
    }
    anyhow::bail!(
        "no data directory at {} (use --config or --data-dir, or set KURIER_CONFIG)",
        data_dir.root().display()
    )
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Serve => {
            let (config, data_dir, _) = load_config(&cli)?;
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
            let (config, data_dir, chosen) = load_config(&cli)?;
            // `user add` may make the data directory of a configured server (users come
            // before the aliases that name them); passwd, del and list read what is there.
            if cli::user::reads_users(cmd) || (cli::user::adds_user(cmd) && !chosen) {
                existing(&data_dir)?;
            }
            cli::user::run(cmd, &config, &data_dir)
        }
        Command::Config(cmd) => {
            cli::config::run(cmd, config_path(&cli).as_deref(), cli.data_dir.as_deref())
        }
        Command::Queue(cmd) => {
            let (config, data_dir, _) = load_config(&cli)?;
            existing(&data_dir)?;
            cli::as_data_dir_owner(&config, &data_dir)?;
            cli::queue::run(cmd, &config, &data_dir)
        }
        Command::Dkim(cmd) => {
            let (config, data_dir, _) = load_config(&cli)?;
            cli::as_data_dir_owner(&config, &data_dir)?;
            cli::dkim::run(cmd, &config, &data_dir)
        }
        Command::Dns(cmd) => {
            let (config, data_dir, _) = load_config(&cli)?;
            cli::dns::run(cmd, &config, &data_dir)
        }
        Command::Dovecot(cmd) => {
            let (config, data_dir, _) = load_config(&cli)?;
            cli::dovecot::run(cmd, &config, &data_dir)
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
