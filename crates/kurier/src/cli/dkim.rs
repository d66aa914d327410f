//! `kurier dkim generate`: a signing key for a local domain and the DNS record to publish.

use clap::Subcommand;

use crate::config::Config;
use crate::data_dir::DataDir;

#[derive(Subcommand)]
pub enum DkimCmd {
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
        algorithm: crate::dkim::Algorithm,
    },
}

/// Carries out a `kurier dkim` command.
pub fn run(cmd: &DkimCmd, config: &Config, data_dir: &DataDir) -> anyhow::Result<()> {
    let DkimCmd::Generate {
        domain,
        selector,
        algorithm,
    } = cmd;
    let local = kurier_smtp::Domain::parse(domain)
        .ok()
        .filter(|d| config.local_domains().contains(d));
    let Some(domain) = local else {
        anyhow::bail!(
            "{domain} is not a local domain (local domains: {})",
            config.domains.join(", ")
        );
    };
    let (path, record) = crate::dkim::generate(data_dir, &domain, selector, *algorithm)?;
    println!("key written to {}", path.display());
    println!("publish this DNS record, then restart kurier:");
    println!("{record}");
    Ok(())
}
