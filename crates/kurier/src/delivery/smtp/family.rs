//! IP families for outbound connections: the order (or the one family) the admin chose, and
//! the refusal that is about the sending address, which the other family may not meet.
//!
//! Blocklists refuse by the connecting address, and IPv6 listings of a whole /64 are common:
//! a server that says `5.7.x` at the greeting, EHLO or MAIL (before any recipient) over one
//! family is tried over the other before the message is bounced.

use std::net::IpAddr;

use kurier_smtp::Reply;
use kurier_smtp::client::{RcptOutcome, SessionError, Stage, TransactionResult};

use crate::config::AddressPreference;

/// The addresses to try, in order: the resolver's (IPv6 first) rearranged by preference;
/// a disabled family left out.
pub fn order(ips: Vec<IpAddr>, preference: AddressPreference) -> Vec<IpAddr> {
    let (v6, v4): (Vec<IpAddr>, Vec<IpAddr>) = ips.into_iter().partition(IpAddr::is_ipv6);
    match preference {
        AddressPreference::Any | AddressPreference::Ipv6 => [v6, v4].concat(),
        AddressPreference::Ipv4 => [v4, v6].concat(),
        AddressPreference::Ipv4Only => v4,
        AddressPreference::Ipv6Only => v6,
    }
}

/// True when the preference allows both families (so the other one may be tried).
pub fn both(preference: AddressPreference) -> bool {
    !matches!(
        preference,
        AddressPreference::Ipv4Only | AddressPreference::Ipv6Only
    )
}

/// The reply when a session failed with a permanent policy refusal (`5.7.x`) before any
/// recipient: at the greeting, EHLO or MAIL. Such a refusal is about the client, not the
/// message's recipients (RFC 3463 §3.8).
pub fn address_refusal(e: &SessionError) -> Option<&Reply> {
    let reply = e.reply.as_ref()?;
    let early = matches!(e.stage, Stage::Greeting | Stage::Ehlo | Stage::Mail);
    let policy = reply.enhanced.is_some_and(|c| c.0 == 5 && c.1 == 7);
    (early && policy && reply.is_permanent()).then_some(reply)
}

/// The reply when a server refused MAIL FROM with `5.7.x` (reported for each recipient
/// of the transaction).
pub fn mail_refusal(result: &TransactionResult) -> Option<&Reply> {
    let first = match result.rcpts.first()? {
        RcptOutcome::Rejected(reply, Stage::Mail) => reply,
        _ => return None,
    };
    let policy = first.enhanced.is_some_and(|c| c.0 == 5 && c.1 == 7);
    (policy && first.is_permanent()).then_some(first)
}

/// `IPv6` or `IPv4`.
pub fn name(ip: &IpAddr) -> &'static str {
    if ip.is_ipv6() { "IPv6" } else { "IPv4" }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kurier_smtp::EnhancedCode;

    fn ips() -> Vec<IpAddr> {
        ["2001:db8::1", "192.0.2.1", "2001:db8::2", "192.0.2.2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect()
    }

    #[test]
    fn preference_orders_or_filters_the_families() {
        let show = |p| {
            order(ips(), p)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            show(AddressPreference::Any),
            "2001:db8::1 2001:db8::2 192.0.2.1 192.0.2.2"
        );
        assert_eq!(
            show(AddressPreference::Ipv4),
            "192.0.2.1 192.0.2.2 2001:db8::1 2001:db8::2"
        );
        assert_eq!(show(AddressPreference::Ipv4Only), "192.0.2.1 192.0.2.2");
        assert_eq!(show(AddressPreference::Ipv6Only), "2001:db8::1 2001:db8::2");
        assert!(both(AddressPreference::Ipv4) && !both(AddressPreference::Ipv6Only));
    }

    #[test]
    fn only_early_permanent_policy_refusals_count() {
        let err = |stage, code: u16, enhanced: EnhancedCode| SessionError {
            stage,
            reply: Some(Reply::new(code, enhanced, "listed")),
            message: String::new(),
        };
        let listed = EnhancedCode(5, 7, 1);
        assert!(address_refusal(&err(Stage::Mail, 550, listed)).is_some());
        assert!(address_refusal(&err(Stage::Greeting, 554, listed)).is_some());
        assert!(address_refusal(&err(Stage::Ehlo, 550, listed)).is_some());
        assert!(address_refusal(&err(Stage::Data, 550, listed)).is_none());
        assert!(address_refusal(&err(Stage::Mail, 550, EnhancedCode(5, 1, 8))).is_none());
        assert!(address_refusal(&err(Stage::Mail, 450, EnhancedCode(4, 7, 1))).is_none());
    }
}
