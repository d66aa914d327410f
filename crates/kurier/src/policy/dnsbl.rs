//! DNS blocklists (RFC 5782): is the connecting client listed?
//!
//! The client's address, reversed (IPv4 octets, or IPv6 nibbles), is looked up under each
//! configured zone; an A record in 127.0.0.0/8 means "listed". A lookup that fails is not a
//! listing: a blocklist outage must not stop mail.

use std::net::IpAddr;

use crate::dns::MxResolver;

/// The query name for `ip` under `zone` (RFC 5782 §2.1 and §2.4).
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.{zone}", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut nibbles = String::with_capacity(64 + zone.len());
            for byte in v6.octets().iter().rev() {
                nibbles.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            nibbles.push_str(zone);
            nibbles
        }
    }
}

/// The first zone that lists `ip`, if any.
pub async fn listed(resolver: &MxResolver, ip: IpAddr, zones: &[String]) -> Option<String> {
    for zone in zones {
        match resolver.a_records(&query_name(ip, zone)).await {
            Ok(answers) if answers.iter().any(|a| a.octets()[0] == 127) => {
                return Some(zone.clone());
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(zone = %zone, error = %e, "DNSBL lookup failed; not treating the client as listed")
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names() {
        let v4: IpAddr = [192, 0, 2, 99].into();
        assert_eq!(query_name(v4, "bl.example"), "99.2.0.192.bl.example");
        let v6: IpAddr = "2001:db8:1:2:3:4:567:89ab".parse().unwrap_or(v4);
        // RFC 5782 §2.4 example.
        assert_eq!(
            query_name(v6, "bl.example"),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.example"
        );
    }
}
