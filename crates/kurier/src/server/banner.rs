//! The text printed once the server listens: what runs where, and how to try it.

use std::net::SocketAddr;
use std::path::Path;

use kurier_smtp::Role;

use crate::config::Config;

/// Prints what each listener is for (at the address it is bound to, so a port 0 shows as
/// the port chosen), where the mail goes, and a first command to try.
pub(super) fn print_banner(config: &Config, addresses: &[(Role, SocketAddr)], data_dir: &Path) {
    let domain = config
        .domains
        .first()
        .map(String::as_str)
        .unwrap_or("localhost");
    let mut text = format!(
        "Kurier {} is running; data in {}\n",
        env!("CARGO_PKG_VERSION"),
        data_dir.display()
    );
    for (role, address) in addresses {
        let what = match role {
            Role::Smtp => format!(
                "incoming mail for {} (STARTTLS offered)",
                config.domains.join(", ")
            ),
            Role::Submission => "submission: STARTTLS, then AUTH PLAIN/LOGIN".to_string(),
            Role::Submissions => "submission over implicit TLS, AUTH PLAIN/LOGIN".to_string(),
        };
        text.push_str(&format!("  {:<12} {:<22} {}\n", role.name(), address, what));
    }
    let smtp = addresses
        .iter()
        .find(|(role, _)| *role == Role::Smtp)
        .map(|(_, address)| address.to_string())
        .unwrap_or_else(|| "HOST:PORT".into());
    text.push_str(&format!(
        "Mail is delivered to Maildirs under {}/mail/<domain>/<user>/ (postmaster@{domain} exists from the start)\n\
         Add a user:  kurier user add alice@{domain} --data-dir {}\n\
         Try it:      swaks --server {smtp} --to postmaster@{domain}\n\
         Stop with Ctrl-C.\n",
        data_dir.display(),
        data_dir.display()
    ));
    print!("{text}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
}
