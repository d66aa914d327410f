//! `kurier dns check`: each record of [`Zone`] looked up, and a verdict on it. SPF is not
//! compared as text but evaluated (RFC 7208) for each of the host's addresses, as a
//! receiver would; DKIM keys are compared with the keys Kurier signs with.

use std::fmt;
use std::net::IpAddr;

use mail_auth::SpfResult;

use super::records::Zone;
use crate::dns::MxResolver;

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Published and right.
    Ok,
    /// Not published.
    Missing,
    /// Published, but not what it should be.
    Wrong,
    /// Optional or not checkable here: said, never a failure.
    Note,
}

/// One record's verdict and what was seen.
#[derive(Debug, Clone)]
pub struct Line {
    /// The verdict.
    pub verdict: Verdict,
    /// The record (`MX example.org`).
    pub what: String,
    /// What was found, or what to do.
    pub detail: String,
}

impl Line {
    fn new(verdict: Verdict, what: impl Into<String>, detail: impl Into<String>) -> Line {
        Line {
            verdict,
            what: what.into(),
            detail: detail.into(),
        }
    }

    /// Missing and wrong records are what make the check fail.
    pub fn needs_attention(&self) -> bool {
        matches!(self.verdict, Verdict::Missing | Verdict::Wrong)
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.verdict {
            Verdict::Ok => "ok",
            Verdict::Missing => "MISSING",
            Verdict::Wrong => "WRONG",
            Verdict::Note => "note",
        };
        // What DNS returned is a stranger's text: no control characters reach the terminal.
        let detail: String = self
            .detail
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        write!(f, "{tag:<8} {}: {detail}", self.what)
    }
}

/// Looks every record up; lines in the order of `kurier dns records`.
pub async fn check(zone: &Zone<'_>, resolver: &MxResolver) -> Vec<Line> {
    let d = zone.domain.as_str();
    let host = zone.host.trim_end_matches('.').to_ascii_lowercase();
    let mut out = vec![mx(resolver, d, &host).await];
    let (line, addresses) = host_addresses(resolver, zone, &host).await;
    out.push(line);
    out.push(spf(resolver, d, &host, &addresses, &format!("postmaster@{d}")).await);
    if host != d {
        out.push(spf(resolver, &host, &host, &addresses, "").await);
    }
    out.extend(dkim(resolver, zone).await);
    out.push(tagged(resolver, &format!("_dmarc.{d}"), "v=DMARC1", "DMARC", true).await);
    out.push(
        tagged(
            resolver,
            &format!("_smtp._tls.{d}"),
            "v=TLSRPTv1",
            "TLS-RPT",
            false,
        )
        .await,
    );
    for ip in &addresses {
        out.push(ptr(resolver, *ip, &host).await);
    }
    if zone.tlsa.is_some() {
        out.push(Line::new(
            Verdict::Note,
            format!("TLSA _25._tcp.{host}"),
            "not checked: it counts only in a DNSSEC-signed zone, which this lookup does not validate",
        ));
    }
    out
}

async fn mx(resolver: &MxResolver, d: &str, host: &str) -> Line {
    let what = format!("MX {d}");
    match resolver.mx_records(d).await {
        Err(e) => Line::new(Verdict::Wrong, what, e.to_string()),
        Ok(hosts) if hosts.is_empty() => Line::new(
            Verdict::Missing,
            what,
            format!("publish: {d}. IN MX 10 {host}."),
        ),
        Ok(hosts) => {
            let listed: Vec<String> = hosts
                .iter()
                .map(|h| format!("{} {}", h.preference, h.name))
                .collect();
            let verdict = match hosts.iter().any(|h| h.name == host) {
                true => Verdict::Ok,
                false => Verdict::Wrong,
            };
            let mut detail = listed.join(", ");
            if verdict == Verdict::Wrong {
                detail.push_str(&format!(" (not {host}: mail for {d} does not come here)"));
            }
            Line::new(verdict, what, detail)
        }
    }
}

/// The host's addresses in DNS; with `--ipv4`/`--ipv6`, each must be among them.
async fn host_addresses(resolver: &MxResolver, zone: &Zone<'_>, host: &str) -> (Line, Vec<IpAddr>) {
    let what = format!("A/AAAA {host}");
    let found = match resolver.addresses(host).await {
        Ok(found) => found,
        Err(e) => return (Line::new(Verdict::Missing, what, e.to_string()), Vec::new()),
    };
    let expected: Vec<IpAddr> = zone
        .ipv4
        .iter()
        .map(|ip| IpAddr::V4(*ip))
        .chain(zone.ipv6.iter().map(|ip| IpAddr::V6(*ip)))
        .collect();
    let listed: Vec<String> = found.iter().map(ToString::to_string).collect();
    let absent: Vec<String> = expected
        .iter()
        .filter(|ip| !found.contains(ip))
        .map(ToString::to_string)
        .collect();
    let line = match (found.is_empty(), absent.is_empty()) {
        (true, _) => Line::new(Verdict::Missing, what, "no address"),
        (false, true) => Line::new(Verdict::Ok, what, listed.join(", ")),
        (false, false) => Line::new(
            Verdict::Wrong,
            what,
            format!("{} (without {})", listed.join(", "), absent.join(", ")),
        ),
    };
    (line, found)
}

/// SPF of `name`, evaluated for each address as a receiver would: for the domain with a
/// sender in it, for the host as the HELO identity (RFC 7208 §2.3, §2.4).
async fn spf(
    resolver: &MxResolver,
    name: &str,
    host: &str,
    addresses: &[IpAddr],
    sender: &str,
) -> Line {
    let what = format!("SPF {name}");
    let records: Vec<String> = match resolver.txt_records(name).await {
        Ok(txts) => txts
            .iter()
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .filter(|t| t.to_ascii_lowercase().starts_with("v=spf1"))
            .collect(),
        Err(e) => return Line::new(Verdict::Wrong, what, e.to_string()),
    };
    match records.len() {
        0 => return Line::new(Verdict::Missing, what, "no v=spf1 record"),
        1 => {}
        n => {
            return Line::new(
                Verdict::Wrong,
                what,
                format!("{n} v=spf1 records: receivers treat that as an error (RFC 7208 §4.5)"),
            );
        }
    }
    if addresses.is_empty() {
        return Line::new(
            Verdict::Note,
            what,
            format!("{} (not evaluated: {host} has no address)", records[0]),
        );
    }
    for ip in addresses {
        let result = crate::policy::spf::verify(resolver, *ip, host, host, sender)
            .await
            .result();
        if result != SpfResult::Pass {
            return Line::new(
                Verdict::Wrong,
                what,
                format!("{}: gives {result:?} for {ip}, not Pass", records[0]),
            );
        }
    }
    Line::new(
        Verdict::Ok,
        what,
        format!("{} (passes for {host})", records[0]),
    )
}

/// Each DKIM key's record, compared with the key Kurier signs with.
async fn dkim(resolver: &MxResolver, zone: &Zone<'_>) -> Vec<Line> {
    if zone.dkim.is_empty() {
        return vec![Line::new(
            Verdict::Missing,
            format!("DKIM {}", zone.domain),
            format!(
                "no signing key here: `kurier dkim generate {}`",
                zone.domain
            ),
        )];
    }
    let mut out = Vec::new();
    for record in zone.dkim {
        let Some((name, data)) = record.split_once(" IN TXT ") else {
            continue;
        };
        let name = name.trim_end_matches('.');
        let want: String = data.split('"').skip(1).step_by(2).collect();
        let what = format!("DKIM {name}");
        let compact = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
        let line = match resolver.txt_records(name).await {
            Err(e) => Line::new(Verdict::Wrong, what, e.to_string()),
            Ok(txts) if txts.is_empty() => Line::new(
                Verdict::Missing,
                what,
                "publish the record of `kurier dns records`",
            ),
            Ok(txts) => {
                let found: Vec<String> = txts
                    .iter()
                    .map(|t| String::from_utf8_lossy(t).into_owned())
                    .collect();
                match found.iter().any(|f| compact(f) == compact(&want)) {
                    true => Line::new(Verdict::Ok, what, "the key Kurier signs with"),
                    false => Line::new(
                        Verdict::Wrong,
                        what,
                        "publishes another key than the one Kurier signs with",
                    ),
                }
            }
        };
        out.push(line);
    }
    out
}

/// A TXT record that starts with its version tag (`v=DMARC1`, `v=TLSRPTv1`).
async fn tagged(resolver: &MxResolver, name: &str, tag: &str, kind: &str, required: bool) -> Line {
    let what = format!("{kind} {name}");
    let found: Vec<String> = match resolver.txt_records(name).await {
        Ok(txts) => txts
            .iter()
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .filter(|t| t.starts_with(tag))
            .collect(),
        Err(e) => return Line::new(Verdict::Wrong, what, e.to_string()),
    };
    match (found.len(), required) {
        (0, true) => Line::new(Verdict::Missing, what, format!("no {tag} record")),
        (0, false) => Line::new(Verdict::Note, what, "not published (optional)"),
        (1, _) => Line::new(Verdict::Ok, what, found[0].clone()),
        (n, _) => Line::new(
            Verdict::Wrong,
            what,
            format!("{n} {tag} records: receivers ignore them all"),
        ),
    }
}

/// Reverse DNS that names the host and whose name leads back to the address (what large
/// receivers require of a sending server).
async fn ptr(resolver: &MxResolver, ip: IpAddr, host: &str) -> Line {
    let what = format!("PTR {ip}");
    match resolver.confirmed_name(ip).await {
        Some(name) if name == host => Line::new(Verdict::Ok, what, host),
        Some(name) => Line::new(
            Verdict::Wrong,
            what,
            format!("names {name}, not {host} (HELO and reverse DNS should agree)"),
        ),
        None => Line::new(
            Verdict::Missing,
            what,
            format!("no PTR naming {host} that leads back to {ip}: ask the address's provider"),
        ),
    }
}
