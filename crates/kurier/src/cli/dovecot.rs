//! `kurier dovecot config`: a Dovecot configuration that serves this data directory's
//! Maildirs over IMAP and POP3 with Kurier's users and passwords, so reading mail needs
//! no hand-made setup (Dovecot 2.3, as Debian ships it).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use clap::Subcommand;

use crate::config::Config;
use crate::data_dir::DataDir;

#[derive(Subcommand)]
pub enum DovecotCmd {
    /// Print a Dovecot configuration for this data directory (install it as
    /// /etc/dovecot/dovecot.conf, or run `dovecot -c FILE`).
    Config {
        /// Addresses Dovecot listens on.
        #[arg(long, default_value = "*, ::")]
        listen: String,
        /// IMAP port (STARTTLS offered).
        #[arg(long, default_value_t = 143)]
        imap_port: u16,
        /// IMAP port with implicit TLS.
        #[arg(long, default_value_t = 993)]
        imaps_port: u16,
        /// POP3 port (STLS offered).
        #[arg(long, default_value_t = 110)]
        pop3_port: u16,
        /// POP3 port with implicit TLS.
        #[arg(long, default_value_t = 995)]
        pop3s_port: u16,
    },
}

/// What the configuration is made of.
pub struct Setup<'a> {
    /// The data directory, absolute.
    pub data_dir: &'a Path,
    /// The user Kurier runs as, who owns the Maildirs, and its ids.
    pub user: &'a str,
    /// Its uid.
    pub uid: u32,
    /// Its gid.
    pub gid: u32,
    /// Certificate and key, absolute.
    pub cert: &'a Path,
    /// The key.
    pub key: &'a Path,
    /// `listen`.
    pub listen: &'a str,
    /// IMAP, IMAPS, POP3, POP3S ports.
    pub ports: [u16; 4],
}

/// Carries out a `kurier dovecot` command.
pub fn run(cmd: &DovecotCmd, config: &Config, data_dir: &DataDir) -> anyhow::Result<()> {
    let DovecotCmd::Config {
        listen,
        imap_port,
        imaps_port,
        pop3_port,
        pop3s_port,
    } = cmd;
    let root = absolute(data_dir.root())?;
    // The Maildirs' owner: `run_as`, else whoever owns the data directory.
    let user = match &config.run_as {
        Some(name) => nix::unistd::User::from_name(name)?
            .ok_or_else(|| anyhow::anyhow!("run_as user {name:?} does not exist"))?,
        None => {
            let uid = std::fs::metadata(&root).map(|m| m.uid())?;
            nix::unistd::User::from_uid(uid.into())?
                .ok_or_else(|| anyhow::anyhow!("uid {uid} of {} has no name", root.display()))?
        }
    };
    if user.uid.is_root() {
        anyhow::bail!(
            "the Maildirs belong to root, and Dovecot refuses to work as root: run Kurier with run_as (a user of its own), then print this again"
        );
    }
    let (cert, key) = match (&config.tls.certificate, &config.tls.private_key) {
        (Some(c), Some(k)) => (absolute(c)?, absolute(k)?),
        _ => (
            root.join(data_dir.tls_cert().strip_prefix(data_dir.root())?),
            root.join(data_dir.tls_key().strip_prefix(data_dir.root())?),
        ),
    };
    let setup = Setup {
        data_dir: &root,
        user: &user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        cert: &cert,
        key: &key,
        listen,
        ports: [*imap_port, *imaps_port, *pop3_port, *pop3s_port],
    };
    print!("{}", configuration(&setup));
    Ok(())
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    Ok(std::path::absolute(p)?)
}

/// The configuration text.
pub fn configuration(s: &Setup<'_>) -> String {
    let data = s.data_dir.display();
    let [imap, imaps, pop3, pop3s] = s.ports;
    format!(
        "# Dovecot for Kurier's data directory {data} (printed by `kurier dovecot config`).\n\
         # It replaces Debian's dovecot.conf: only Kurier's users log in, not system users.\n\
         protocols = imap pop3\n\
         listen = {listen}\n\
         ssl = yes\n\
         ssl_cert = <{cert}\n\
         ssl_key = <{key}\n\
         # Passwords only over TLS (or from this machine).\n\
         disable_plaintext_auth = yes\n\
         # User names are addresses, UTF-8 ones included, looked up in lower case as Kurier does.\n\
         auth_username_chars =\n\
         auth_username_format = %Lu\n\
         # Kurier's users and their argon2 hashes, rewritten by `kurier user` and at start.\n\
         passdb {{\n  driver = passwd-file\n  args = scheme=ARGON2ID {data}/dovecot-passwd\n}}\n\
         # Every mailbox belongs to Kurier's user ({user}), in mail/<domain>/<local part>/.\n\
         userdb {{\n  driver = static\n  args = uid={uid} gid={gid} home={data}/mail/%Ld/%Ln\n}}\n\
         first_valid_uid = {uid}\n\
         first_valid_gid = {gid}\n\
         mail_location = maildir:~\n\
         # The passwd-file is in Kurier's private data directory: read it as its owner.\n\
         service auth {{\n  user = {user}\n}}\n\
         service imap-login {{\n  inet_listener imap {{\n    port = {imap}\n  }}\n  \
         inet_listener imaps {{\n    port = {imaps}\n    ssl = yes\n  }}\n}}\n\
         service pop3-login {{\n  inet_listener pop3 {{\n    port = {pop3}\n  }}\n  \
         inet_listener pop3s {{\n    port = {pop3s}\n    ssl = yes\n  }}\n}}\n\
         # Kurier files mail that fails DMARC under a quarantine policy in Junk.\n\
         namespace inbox {{\n  inbox = yes\n  mailbox Junk {{\n    special_use = \\Junk\n    auto = subscribe\n  }}\n}}\n",
        listen = s.listen,
        cert = s.cert.display(),
        key = s.key.display(),
        user = s.user,
        uid = s.uid,
        gid = s.gid,
    )
}
