//! The zone-file lines of `kurier dns records`.

use std::net::{Ipv4Addr, Ipv6Addr};

use kurier_smtp::Domain;

/// What the records are made of.
pub struct Zone<'a> {
    /// The mail domain.
    pub domain: &'a Domain,
    /// This server's host name (`hostname`): the MX target and the HELO name.
    pub host: &'a str,
    /// The host's public addresses, when given.
    pub ipv4: &'a [Ipv4Addr],
    /// The host's public IPv6 addresses, when given.
    pub ipv6: &'a [Ipv6Addr],
    /// The DKIM TXT records, one per key.
    pub dkim: &'a [String],
    /// The TLSA data of the certificate (`3 1 1 …`), when there is one.
    pub tlsa: Option<&'a str>,
}

impl Zone<'_> {
    /// The zone-file text: each group of records after a comment saying what it is for.
    pub fn records(&self) -> String {
        let d = self.domain.as_str();
        let host = self.host.trim_end_matches('.').to_ascii_lowercase();
        let in_zone = host == d || host.ends_with(&format!(".{d}"));
        let mut out = format!(
            "; DNS records for mail to and from {d} through {host} (kurier dns records).\n\
             ; Names end in a dot: they are absolute, whatever the zone's $ORIGIN.\n\n\
             ; Mail for {d} goes to this server (RFC 5321 §5.1).\n\
             {d}. IN MX 10 {host}.\n"
        );
        if !host.contains('.') {
            out.push_str(&format!(
                "; {host} is not a public name: set `hostname` to the server's name in DNS.\n"
            ));
        }
        let mut host_records = String::new();
        for ip in self.ipv4 {
            host_records.push_str(&format!("{host}. IN A {ip}\n"));
        }
        for ip in self.ipv6 {
            host_records.push_str(&format!("{host}. IN AAAA {ip}\n"));
        }
        if self.ipv4.is_empty() && self.ipv6.is_empty() {
            out.push_str(&format!(
                "; {host} needs an A and/or AAAA record: give --ipv4/--ipv6 to print them.\n"
            ));
        }
        // RFC 7208 §2.3: the HELO identity is checked too, against the host's own record;
        // when the host is the domain, the domain's record serves both.
        if host != d {
            host_records.push_str(&format!("{host}. IN TXT \"v=spf1 a -all\"\n"));
        }
        if in_zone {
            out.push_str(&host_records);
        }
        out.push_str(&format!(
            "\n; SPF (RFC 7208): only the domain's MX hosts send its mail.\n\
             {d}. IN TXT \"v=spf1 mx -all\"\n"
        ));
        out.push_str(&format!(
            "\n; DKIM (RFC 6376): the public half of each signing key of {d}.\n"
        ));
        if self.dkim.is_empty() {
            out.push_str(&format!(
                "; none yet: `kurier dkim generate {d}` makes one (then restart kurier).\n"
            ));
        }
        for record in self.dkim {
            out.push_str(record);
            out.push('\n');
        }
        out.push_str(&format!(
            "\n; DMARC (RFC 7489): receivers quarantine mail that fails both SPF and DKIM in\n\
             ; {d}'s name, and send aggregate reports to its postmaster.\n\
             _dmarc.{d}. IN TXT \"v=DMARC1; p=quarantine; rua=mailto:postmaster@{d}\"\n\
             \n; SMTP TLS reporting (RFC 8460): where other servers report failed TLS to {d}.\n\
             _smtp._tls.{d}. IN TXT \"v=TLSRPTv1; rua=mailto:postmaster@{d}\"\n"
        ));
        match self.tlsa {
            Some(data) => out.push_str(&format!(
                "\n; DANE (RFC 7672): publish only in a zone signed with DNSSEC; it names the\n\
                 ; certificate's key, so publish the new one before changing the key.\n\
                 _25._tcp.{host}. IN TLSA {data}\n"
            )),
            None => out.push_str("\n; DANE: no certificate found, so no TLSA record.\n"),
        }
        if !in_zone {
            out.push_str(&format!("\n; In the zone of {host} (not {d}):\n"));
            for line in host_records.lines() {
                out.push_str(&format!("; {line}\n"));
            }
        }
        out.push_str(&format!(
            "\n; Reverse DNS: ask the provider of each address for a PTR record naming {host}.\n"
        ));
        for ip in self
            .ipv4
            .iter()
            .map(ToString::to_string)
            .chain(self.ipv6.iter().map(ToString::to_string))
        {
            out.push_str(&format!(";   {ip} -> {host}.\n"));
        }
        out.push_str(
            "; MTA-STS (RFC 8461) needs its policy served over HTTPS, which Kurier does not do yet.\n",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn zone(host: &str, ipv4: &[Ipv4Addr]) -> String {
        let domain = Domain::parse("example.org").unwrap();
        let ipv6: &[Ipv6Addr] = match ipv4.is_empty() {
            true => &[],
            false => &["2001:db8::25".parse().unwrap()],
        };
        Zone {
            domain: &domain,
            host,
            ipv4,
            ipv6,
            dkim: &["k._domainkey.example.org. IN TXT \"v=DKIM1; k=ed25519; p=AAAA\"".into()],
            tlsa: Some("3 1 1 00ff"),
        }
        .records()
    }

    #[test]
    fn records_for_a_host_in_the_domain() {
        let z = zone("mx.example.org", &["192.0.2.25".parse().unwrap()]);
        for line in [
            "example.org. IN MX 10 mx.example.org.\n",
            "mx.example.org. IN A 192.0.2.25\n",
            "mx.example.org. IN AAAA 2001:db8::25\n",
            "mx.example.org. IN TXT \"v=spf1 a -all\"\n",
            "example.org. IN TXT \"v=spf1 mx -all\"\n",
            "k._domainkey.example.org. IN TXT \"v=DKIM1; k=ed25519; p=AAAA\"\n",
            "_dmarc.example.org. IN TXT \"v=DMARC1; p=quarantine; rua=mailto:postmaster@example.org\"\n",
            "_smtp._tls.example.org. IN TXT \"v=TLSRPTv1; rua=mailto:postmaster@example.org\"\n",
            "_25._tcp.mx.example.org. IN TLSA 3 1 1 00ff\n",
            ";   192.0.2.25 -> mx.example.org.\n",
        ] {
            assert!(z.contains(line), "{line} missing from\n{z}");
        }
    }

    #[test]
    fn the_domain_as_host_has_one_spf_record_and_a_foreign_host_is_left_to_its_zone() {
        let z = zone("example.org", &[]);
        assert_eq!(z.matches("v=spf1").count(), 1, "{z}");
        assert!(z.contains("give --ipv4/--ipv6"), "{z}");
        let z = zone("mail.hoster.test", &["192.0.2.25".parse().unwrap()]);
        assert!(z.contains("; mail.hoster.test. IN A 192.0.2.25\n"), "{z}");
        assert!(!z.contains("\nmail.hoster.test."), "{z}");
        assert!(
            z.contains("example.org. IN MX 10 mail.hoster.test.\n"),
            "{z}"
        );
        assert!(zone("localhost", &[]).contains("not a public name"));
    }
}
