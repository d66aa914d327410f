//! Sender authentication of incoming mail: SPF (RFC 7208), DKIM (RFC 6376, RFC 8463), ARC
//! (RFC 8617) and DMARC (RFC 7489), evaluated with the `mail-auth` crate, recorded in one
//! `Authentication-Results` header (RFC 8601), and enforced for DMARC `p=reject`.
//!
//! Headers that claim our authserv-id are removed first (RFC 8601 §5): only this server may
//! speak in its own name. A temporary DNS failure defers the message (451); it never passes
//! as if nothing had been checked.

use std::net::IpAddr;

use kurier_smtp::{Reply, ReversePath, codes};
use mail_auth::arc::ArcError;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dmarc::Policy;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, MessageAuthenticator,
    SpfResult,
};

use crate::dns::MxResolver;

/// What the evaluation decided.
pub struct Evaluation {
    /// The Authentication-Results header field, CRLF-terminated.
    pub header: String,
    /// The refusal, when the message must not be accepted.
    pub refusal: Option<Reply>,
    /// DMARC says quarantine: deliver to the Junk folder.
    pub quarantine: bool,
}

/// How long the whole evaluation may take; past it, the message is deferred (451).
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(8);

/// What is checked and how.
pub struct Check<'a> {
    /// Our host name (the authserv-id).
    pub hostname: &'a str,
    /// The client's address.
    pub ip: IpAddr,
    /// Its HELO name.
    pub helo: &'a str,
    /// MAIL FROM.
    pub from: &'a ReversePath,
    /// Refuse SPF "fail" results (550 5.7.1).
    pub reject_spf_fail: bool,
}

/// Evaluates SPF, DKIM, ARC and DMARC for a message, within [`DEADLINE`].
pub async fn evaluate(resolver: &MxResolver, check: &Check<'_>, body: &[u8]) -> Evaluation {
    match tokio::time::timeout(DEADLINE, evaluate_now(resolver, check, body)).await {
        Ok(e) => e,
        Err(_) => Evaluation {
            header: String::new(),
            refusal: Some(temporary_failure()),
            quarantine: false,
        },
    }
}

fn temporary_failure() -> Reply {
    Reply::new(
        451,
        codes::SECURITY_TEMP,
        "Temporary DNS failure while checking the sender (SPF/DKIM/DMARC), try again later",
    )
}

fn spf_refusal(domain: &str, ip: IpAddr) -> Reply {
    Reply::new(
        550,
        codes::NOT_AUTHORIZED,
        format!("SPF check failed: {domain} does not designate {ip} as permitted sender"),
    )
}

async fn evaluate_now(resolver: &MxResolver, c: &Check<'_>, body: &[u8]) -> Evaluation {
    let auth = MessageAuthenticator(resolver.resolver().clone());
    let sender = c.from.mailbox().map(|m| m.to_string()).unwrap_or_default();
    // RFC 7208 §2.4: for the null sender, the HELO identity is checked.
    let spf = crate::spf::verify(resolver, c.ip, c.helo, c.hostname, &sender).await;
    let spf_domain = sender
        .rsplit_once('@')
        .map_or(c.helo, |(_, d)| d)
        .to_string();
    let spf_failed = c.reject_spf_fail && spf.result() == SpfResult::Fail;
    let Some(message) = AuthenticatedMessage::parse(body) else {
        let header = AuthenticationResults::new(c.hostname)
            .with_spf_mailfrom_result(&spf, c.ip, &sender, c.helo)
            .to_header();
        let refusal = spf_failed.then(|| spf_refusal(&spf_domain, c.ip));
        return Evaluation {
            header,
            refusal,
            quarantine: false,
        };
    };
    let dkim = auth.verify_dkim(&message).await;
    // RFC 8617: the chain of custody of forwarders that sealed the message (recorded, so
    // filters and users can trust a known forwarder; it does not override DMARC here).
    let arc = arc_verdict(auth.verify_arc(&message).await);
    let dmarc = auth
        .verify_dmarc(mail_auth::dmarc::verify::DmarcParameters::new(
            &message,
            &dkim,
            &spf_domain,
            &spf,
        ))
        .await;
    let header = AuthenticationResults::new(c.hostname)
        .with_dkim_results(&dkim, message.from())
        .with_spf_mailfrom_result(&spf, c.ip, &sender, c.helo)
        .with_arc_result(&arc, c.ip)
        .with_dmarc_result(&dmarc)
        .to_header();
    // DMARC's overall result: a pass of either aligned identifier passes (RFC 7489 §4.2).
    let dmarc_result = dmarc.result();
    let dmarc_failed = matches!(dmarc_result, DmarcResult::Fail(_));
    let temporary = matches!(spf.result(), SpfResult::TempError)
        || matches!(dmarc_result, DmarcResult::TempError(_));
    let refusal = if dmarc_failed && dmarc.policy() == Policy::Reject {
        Some(Reply::new(
            550,
            codes::NOT_AUTHORIZED,
            format!(
                "Message rejected: it fails the DMARC policy (p=reject) of {}",
                dmarc.domain()
            ),
        ))
    } else if temporary {
        Some(temporary_failure())
    } else if spf_failed {
        Some(spf_refusal(&spf_domain, c.ip))
    } else {
        None
    };
    let quarantine = dmarc_failed && dmarc.policy() == Policy::Quarantine;
    Evaluation {
        header,
        refusal,
        quarantine,
    }
}

/// RFC 8617 §5.2: when the newest ARC-Message-Signature does not validate, the chain fails.
/// mail-auth calls a body hash mismatch there "neutral"; it is recorded as `arc=fail`.
fn arc_verdict(arc: mail_auth::ArcOutput<'_>) -> mail_auth::ArcOutput<'_> {
    match arc.result() {
        DkimResult::Neutral(e @ mail_auth::Error::Arc(ArcError::FailedBodyHashMatch)) => {
            let e = e.clone();
            arc.with_result(DkimResult::Fail(e))
        }
        _ => arc,
    }
}

/// Removes `Authentication-Results` fields that claim `authserv_id` (RFC 8601 §5) from the
/// header section of `message` (CRLF line ends). Other fields and the body are untouched.
pub fn strip_forged(message: &[u8], authserv_id: &str) -> Vec<u8> {
    let header_end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(message.len(), |i| i + 2);
    let (headers, rest) = message.split_at(header_end);
    let mut out = Vec::with_capacity(message.len());
    let mut dropping = false;
    for line in headers.split_inclusive(|&b| b == b'\n') {
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continuation {
            dropping = claims(line, authserv_id);
        }
        if !dropping {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(rest);
    out
}

fn claims(line: &[u8], authserv_id: &str) -> bool {
    let text = String::from_utf8_lossy(line);
    let Some((name, value)) = text.split_once(':') else {
        return false;
    };
    if !name.trim().eq_ignore_ascii_case("authentication-results") {
        return false;
    }
    let id = value
        .trim_start()
        .split([';', ' ', '\t', '\r'])
        .next()
        .unwrap_or_default();
    id.eq_ignore_ascii_case(authserv_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_results_with_our_id_are_removed() {
        let m = b"Authentication-Results: mx.test;\r\n\tdkim=pass\r\nAuthentication-Results: other.test; spf=pass\r\nAUTHENTICATION-RESULTS:  MX.TEST; dmarc=pass\r\nSubject: hi\r\n\r\nAuthentication-Results: mx.test; in the body stays\r\n";
        let out = String::from_utf8(strip_forged(m, "mx.test")).unwrap_or_default();
        assert_eq!(
            out,
            "Authentication-Results: other.test; spf=pass\r\nSubject: hi\r\n\r\nAuthentication-Results: mx.test; in the body stays\r\n"
        );
    }
}
