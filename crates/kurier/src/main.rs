//! The `kurier` command: run the server, manage users, check the configuration.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use kurier::config::Config;
use kurier::directory::{self, UserChange};

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
    User(UserCommand),
    /// Check or print the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Inspect and manage the mail queue (works while the server runs).
    #[command(subcommand)]
    Queue(QueueCmd),
    /// DKIM signing keys.
    #[command(subcommand)]
    Dkim(DkimCmd),
}

#[derive(Subcommand)]
enum DkimCmd {
    /// Generate a signing key for a local domain and print the DNS record to publish.
    /// The server loads keys when it starts.
    Generate {
        /// The domain (one of `domains`).
        domain: String,
        /// The selector (the DNS name is SELECTOR._domainkey.DOMAIN).
        #[arg(long, default_value = "kurier")]
        selector: String,
        /// Key algorithm. RFC 8463 recommends both: generate one of each with two selectors.
        #[arg(long, value_enum, default_value = "rsa")]
        algorithm: kurier::dkim::Algorithm,
    },
}

#[derive(Subcommand)]
enum QueueCmd {
    /// List queued messages with their recipients' state.
    List,
    /// Show one message: envelope, recipients, every recorded attempt.
    Show {
        /// The queue id.
        id: String,
    },
    /// Retry now (one message, or all with --all).
    Flush {
        /// The queue id.
        id: Option<String>,
        /// Retry every queued message.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Keep a message from being delivered until released.
    Hold {
        /// The queue id.
        id: String,
    },
    /// Release a held message and retry it now.
    Release {
        /// The queue id.
        id: String,
    },
    /// Remove a message without notifying anyone.
    Delete {
        /// The queue id.
        id: String,
    },
    /// Give up on a message's pending recipients and send the sender a DSN.
    Bounce {
        /// The queue id.
        id: String,
    },
}

#[derive(Subcommand)]
enum UserCommand {
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

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file (default: the --config file) and report the offending key.
    Check {
        /// The file to check.
        file: Option<PathBuf>,
    },
    /// Print the embedded default configuration.
    Default,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kurier: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(cli: &Cli) -> anyhow::Result<(Config, PathBuf)> {
    let config = match &cli.config {
        Some(path) => Config::load(path).with_context(|| format!("config {}", path.display()))?,
        None => Config::default(),
    };
    let data_dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(|| config.data_dir.clone());
    Ok((config, data_dir))
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
            user(cmd, &config, &data_dir)
        }
        Command::Config(ConfigCommand::Check { file }) => {
            let Some(path) = file.as_ref().or(cli.config.as_ref()) else {
                bail!("name the file to check: kurier config check FILE");
            };
            let config = Config::load(path).with_context(|| format!("{}", path.display()))?;
            println!(
                "{}: ok ({} listener(s), domains: {})",
                path.display(),
                config.listeners.len(),
                config.domains.join(", ")
            );
            Ok(())
        }
        Command::Queue(cmd) => {
            let (_, data_dir) = load_config(&cli)?;
            queue(cmd, &data_dir)
        }
        Command::Dkim(DkimCmd::Generate {
            domain,
            selector,
            algorithm,
        }) => {
            let (config, data_dir) = load_config(&cli)?;
            let local = kurier_smtp::Domain::parse(domain)
                .is_ok_and(|d| config.local_domains().contains(&d));
            if !local {
                bail!(
                    "{domain} is not a local domain (local domains: {})",
                    config.domains.join(", ")
                );
            }
            let (path, record) = kurier::dkim::generate(&data_dir, domain, selector, *algorithm)?;
            println!("key written to {}", path.display());
            println!("publish this DNS record, then restart kurier:");
            println!("{record}");
            Ok(())
        }
        Command::Config(ConfigCommand::Default) => {
            print!("{}", Config::default_toml());
            Ok(())
        }
    }
}

fn user(cmd: &UserCommand, config: &Config, data_dir: &Path) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add {
            address,
            password_file,
        } => {
            let password = read_password(password_file.as_deref())?;
            directory::change_user(config, data_dir, address, UserChange::Add, Some(&password))?;
            println!(
                "added {address}; its mail goes to {}",
                maildir_hint(data_dir, address)
            );
        }
        UserCommand::Passwd {
            address,
            password_file,
        } => {
            let password = read_password(password_file.as_deref())?;
            directory::change_user(
                config,
                data_dir,
                address,
                UserChange::Passwd,
                Some(&password),
            )?;
            println!("password changed for {address}");
        }
        UserCommand::Del { address } => {
            directory::change_user(config, data_dir, address, UserChange::Delete, None)?;
            println!("removed {address} (its mailbox is kept)");
        }
        UserCommand::List => {
            for u in directory::list_users(config, data_dir)? {
                println!("{u}");
            }
        }
        UserCommand::Hash { password_file } => {
            let password = read_password(password_file.as_deref())?;
            println!("{}", directory::hash_password(&password)?);
        }
    }
    Ok(())
}

fn queue(cmd: &QueueCmd, data_dir: &Path) -> anyhow::Result<()> {
    use kurier::delivery::QueueCommand as Q;
    use kurier::queue::{self, parse_id};
    let out = match cmd {
        QueueCmd::List => queue::list(data_dir)?,
        QueueCmd::Show { id } => queue::show(data_dir, &parse_id(id)?)?,
        QueueCmd::Flush { id: Some(id), .. } => {
            queue::run(data_dir, Q::Flush(Some(parse_id(id)?)))?
        }
        QueueCmd::Flush {
            id: None,
            all: true,
        } => queue::run(data_dir, Q::Flush(None))?,
        QueueCmd::Flush {
            id: None,
            all: false,
        } => bail!("name a queue id, or use --all"),
        QueueCmd::Hold { id } => queue::run(data_dir, Q::Hold(parse_id(id)?))?,
        QueueCmd::Release { id } => queue::run(data_dir, Q::Release(parse_id(id)?))?,
        QueueCmd::Delete { id } => queue::run(data_dir, Q::Delete(parse_id(id)?))?,
        QueueCmd::Bounce { id } => queue::run(data_dir, Q::Bounce(parse_id(id)?))?,
    };
    println!("{}", out.trim_end());
    Ok(())
}

fn maildir_hint(data_dir: &Path, address: &str) -> String {
    match kurier_smtp::Mailbox::parse(address) {
        Ok(m) => data_dir
            .join("mail")
            .join(m.domain().as_str())
            .join(m.local().to_lowercase())
            .display()
            .to_string(),
        Err(_) => data_dir.join("mail").display().to_string(),
    }
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
