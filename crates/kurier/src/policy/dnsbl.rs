//! DNS blocklists (RFC 5782): is the connecting client listed?
//!
//! The client's address, reversed (IPv4 octets, or IPv6 nibbles), is looked up under each
//! configured zone; an A record in 127.0.0.0/8 means "listed". A lookup that fails is not a
//! listing: a blocklist outage must not stop mail.

use std::net::IpAddr;

use crate::dns::Lookup;
use crate::maillog;

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
pub async fn listed(resolver: &dyn Lookup, ip: IpAddr, zones: &[String]) -> Option<String> {
    for zone in zones {
        match resolver.a_records(&query_name(ip, zone)).await {
            Ok(answers) if answers.iter().any(|a| a.octets()[0] == 127) => {
                return Some(zone.clone());
            }
            Ok(_) => {}
            Err(e) => maillog::dnsbl_lookup_failed(zone, &e),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::fake::StaticDns;

    #[tokio::test]
    async fn listed_only_with_a_loopback_answer_and_never_on_failure() {
        let dns = StaticDns::new();
        let ip: IpAddr = [192, 0, 2, 99].into();
        dns.host("99.2.0.192.bl.test", &[[127, 0, 0, 2].into()]);
        dns.host("99.2.0.192.odd.test", &[[192, 0, 2, 1].into()]);
        dns.fail("99.2.0.192.down.test");
        let zones = |z: &[&str]| z.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            listed(&dns, ip, &zones(&["clean.test", "bl.test"])).await,
            Some("bl.test".into())
        );
        assert_eq!(
            listed(&dns, ip, &zones(&["odd.test", "down.test", "clean.test"])).await,
            None,
            "not 127/8, a failed lookup and no record are all 'not listed'"
        );
        let other: IpAddr = [192, 0, 2, 100].into();
        assert_eq!(listed(&dns, other, &zones(&["bl.test"])).await, None);
    }

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
