//! `kurier dns records|check DOMAIN`: the DNS records a local domain needs for mail to and
//! from this server, derived from the configuration, the DKIM keys and the certificate, so
//! that the first setup does not depend on copying values by hand.
//!
//! - [`records`] prints them as zone-file lines to paste;
//! - [`check`] looks each one up with the configured resolver and says what is right,
//!   missing or wrong.

pub mod check;
pub mod records;

use std::net::{Ipv4Addr, Ipv6Addr};

use clap::{Args, Subcommand};
use kurier_smtp::Domain;

use crate::config::Config;
use crate::data_dir::DataDir;

#[derive(Subcommand)]
pub enum DnsCmd {
    /// Print the records to publish for a local domain (MX, A/AAAA, SPF, DKIM, DMARC,
    /// TLS-RPT, TLSA), in zone-file syntax with absolute names.
    Records(DnsArgs),
    /// Look the records up (with the `[dns]` servers) and say, per record, whether it is
    /// right, missing or wrong; the exit status is non-zero when one needs attention.
    Check(DnsArgs),
}

/// What both commands take.
#[derive(Args)]
pub struct DnsArgs {
    /// The domain (one of `domains`).
    domain: String,
    /// The server's public IPv4 address: its A record, and the PTR it needs.
    #[arg(long, value_name = "ADDRESS")]
    ipv4: Vec<Ipv4Addr>,
    /// The server's public IPv6 address: its AAAA record, and the PTR it needs.
    #[arg(long, value_name = "ADDRESS")]
    ipv6: Vec<Ipv6Addr>,
}

/// Carries out a `kurier dns` command. The configured certificate is read as the caller
/// (it may sit in a directory only root reads); the data directory's keys and generated
/// certificate only after becoming its owner.
pub fn run(cmd: &DnsCmd, config: &Config, data_dir: &DataDir) -> anyhow::Result<()> {
    let args = match cmd {
        DnsCmd::Records(a) | DnsCmd::Check(a) => a,
    };
    let local = Domain::parse(&args.domain)
        .ok()
        .filter(|d| config.local_domains().contains(d));
    let Some(domain) = local else {
        anyhow::bail!(
            "{} is not a local domain (local domains: {})",
            args.domain,
            config.domains.join(", ")
        );
    };
    let mut tlsa = config
        .tls
        .certificate
        .as_deref()
        .map(crate::tls::tlsa_3_1_1)
        .transpose()?;
    let mut dkim = Vec::new();
    if data_dir.root().is_dir() {
        super::as_data_dir_owner(config, data_dir)?;
        dkim = crate::dkim::published_records(data_dir, &domain)?;
        if tlsa.is_none() && data_dir.tls_cert().exists() {
            tlsa = Some(crate::tls::tlsa_3_1_1(&data_dir.tls_cert())?);
        }
    }
    let zone = records::Zone {
        domain: &domain,
        host: &config.hostname,
        ipv4: &args.ipv4,
        ipv6: &args.ipv6,
        dkim: &dkim,
        tlsa: tlsa.as_deref(),
    };
    match cmd {
        DnsCmd::Records(_) => {
            print!("{}", zone.records());
            Ok(())
        }
        DnsCmd::Check(_) => {
            let resolver =
                crate::dns::MxResolver::new(&config.dns.servers).map_err(anyhow::Error::msg)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let lines = runtime.block_on(check::check(&zone, &resolver));
            for line in &lines {
                println!("{line}");
            }
            let bad = lines.iter().filter(|l| l.needs_attention()).count();
            if bad > 0 {
                anyhow::bail!("{bad} of {} records need attention", lines.len());
            }
            Ok(())
        }
    }
}
