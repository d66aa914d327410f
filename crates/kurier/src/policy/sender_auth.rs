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
    SpfOutput, SpfResult,
};

use crate::config::SenderPolicy;
use crate::dns::MxResolver;
use crate::header::{body_start, header_section, parse_field, raw_fields};
use kurier_spool::MessageData;

use super::body_hash;

/// What the evaluation found. [`Evaluation::decide`] turns it into a verdict under the
/// policies of the recipients' domains.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The Authentication-Results header field, CRLF-terminated.
    pub header: String,
    /// A DNS failure (or the deadline) kept a check from finishing: which lookup.
    pub temporary: Option<String>,
    /// SPF said "fail" for this domain.
    pub spf_fail: Option<String>,
    /// DMARC failed for this From: domain, which publishes this policy.
    pub dmarc_fail: Option<(String, Policy)>,
    /// The client's address, for the SPF refusal text.
    pub ip: IpAddr,
}

/// What happens to the message.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The refusal, when the message must not be accepted.
    pub refusal: Option<Reply>,
    /// The message failed DMARC and was not refused: the Junk folder, for recipients whose
    /// domain's policy quarantines.
    pub junk: bool,
}

impl Evaluation {
    /// Applies the sender policies of the recipients' domains. One reply after DATA covers
    /// every recipient, so the message is refused when any of the policies refuses it.
    pub fn decide(&self, policies: &[SenderPolicy]) -> Verdict {
        let any = |f: fn(&SenderPolicy) -> bool| policies.iter().any(f);
        let refusal = match (&self.dmarc_fail, &self.spf_fail) {
            // RFC 7489 §6.6.3: p=reject asks receivers to refuse during the SMTP transaction.
            (Some((domain, Policy::Reject)), _) if any(|p| p.dmarc_reject) => Some(Reply::new(
                550,
                codes::NOT_AUTHORIZED,
                format!("Message rejected: it fails the DMARC policy (p=reject) of {domain}"),
            )),
            _ if self.temporary.is_some() => Some(temporary_failure(
                self.temporary.as_deref().unwrap_or("a record"),
            )),
            (_, Some(domain)) if any(|p| p.reject_spf_fail) => Some(spf_refusal(domain, self.ip)),
            _ => None,
        };
        let junk = refusal.is_none()
            && matches!(
                self.dmarc_fail,
                Some((_, Policy::Quarantine | Policy::Reject))
            );
        Verdict { refusal, junk }
    }
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
}

/// Evaluates SPF, DKIM, ARC and DMARC for a message, within [`DEADLINE`]. `spf` is the
/// transaction's SPF result when it was evaluated already (at RCPT, for greylisting). An
/// error is a failure to read the message's data from its file.
pub async fn evaluate(
    resolver: &MxResolver,
    check: &Check<'_>,
    spf: Option<SpfOutput>,
    data: &MessageData,
) -> std::io::Result<Evaluation> {
    match tokio::time::timeout(DEADLINE, evaluate_now(resolver, check, spf, data)).await {
        Ok(e) => e,
        Err(_) => Ok(Evaluation {
            header: String::new(),
            temporary: Some(format!(
                "the sender's records (no answer within {} s)",
                DEADLINE.as_secs()
            )),
            spf_fail: None,
            dmarc_fail: None,
            ip: check.ip,
        }),
    }
}

fn temporary_failure(what: &str) -> Reply {
    Reply::new(
        451,
        codes::SECURITY_TEMP,
        format!("Temporary DNS failure looking up {what} to check the sender, try again later"),
    )
}

fn spf_refusal(domain: &str, ip: IpAddr) -> Reply {
    Reply::new(
        550,
        codes::NOT_AUTHORIZED,
        format!("SPF check failed: {domain} does not designate {ip} as permitted sender"),
    )
}

async fn evaluate_now(
    resolver: &MxResolver,
    c: &Check<'_>,
    spf: Option<SpfOutput>,
    data: &MessageData,
) -> std::io::Result<Evaluation> {
    let auth = MessageAuthenticator(resolver.resolver().clone());
    let sender = c.from.mailbox().map(|m| m.to_string()).unwrap_or_default();
    // RFC 7208 §2.4: for the null sender, the HELO identity is checked.
    let spf = match spf {
        Some(known) => known,
        None => super::spf::verify(resolver, c.ip, c.helo, c.hostname, &sender).await,
    };
    let spf_domain = sender
        .rsplit_once('@')
        .map_or(c.helo, |(_, d)| d)
        .to_string();
    let spf_fail = (spf.result() == SpfResult::Fail).then(|| spf_domain.clone());
    // The header section alone is parsed; the body hashes its signatures ask for are
    // computed over the body in chunks (it may be on disk).
    let body_start = body_start(data.head());
    let header = &data.head()[..body_start];
    let limited = super::dkim_budget::limited(header);
    let header = limited.as_deref().unwrap_or(header);
    let Some(mut message) = AuthenticatedMessage::parse(header) else {
        let header = AuthenticationResults::new(c.hostname)
            .with_spf_mailfrom_result(&spf, c.ip, &sender, c.helo)
            .to_header();
        return Ok(Evaluation {
            header,
            temporary: (spf.result() == SpfResult::TempError)
                .then(|| format!("the SPF record of {spf_domain}")),
            spf_fail,
            dmarc_fail: None,
            ip: c.ip,
        });
    };
    if data.rest().is_some() {
        // File reads and hashing of a large message, off the reactor.
        let (mut hashes, data) = (std::mem::take(&mut message.body_hashes), data.clone());
        message.body_hashes = tokio::task::spawn_blocking(move || {
            body_hash::fill(&mut hashes, &data, body_start).map(|()| hashes)
        })
        .await
        .map_err(std::io::Error::other)??;
    } else {
        body_hash::fill(&mut message.body_hashes, data, body_start)?;
    }
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
    let temporary = if matches!(spf.result(), SpfResult::TempError) {
        Some(format!("the SPF record of {spf_domain}"))
    } else if matches!(dmarc_result, DmarcResult::TempError(_)) {
        Some(format!("the DMARC record of {}", dmarc.domain()))
    } else {
        None
    };
    let dmarc_fail = matches!(dmarc_result, DmarcResult::Fail(_))
        .then(|| (dmarc.domain().to_string(), dmarc.policy()));
    Ok(Evaluation {
        header,
        temporary,
        spf_fail,
        dmarc_fail,
        ip: c.ip,
    })
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
/// The claim is read as a reader would: the field unfolded, comments and white space before
/// the authserv-id skipped (RFC 8601 §2.2 allows CFWS there).
///
/// In place: nothing is copied unless a field goes, and then only the bytes after it move.
pub fn strip_forged(message: &mut Vec<u8>, authserv_id: &str) {
    let mut forged = Vec::new();
    let mut at = 0;
    for field in raw_fields(header_section(message)) {
        if claims(field, authserv_id) {
            forged.push(at..at + field.len());
        }
        at += field.len();
    }
    for range in forged.into_iter().rev() {
        message.drain(range);
    }
}

/// True when the field is an Authentication-Results field whose authserv-id is ours.
fn claims(field: &[u8], authserv_id: &str) -> bool {
    parse_field(field).is_some_and(|f| {
        f.is("authentication-results")
            && authserv_id_of(f.value).eq_ignore_ascii_case(authserv_id.as_bytes())
    })
}

/// What counts as white space around an authserv-id.
const SPACE: &[u8] = b" \t\r\n\x0b\x0c";

/// The authserv-id at the start of a field value: after folding white space and comments
/// (nested, with quoted-pairs, RFC 5322 §3.2.2), up to `;`, white space or a comment.
fn authserv_id_of(value: &[u8]) -> &[u8] {
    let mut i = 0;
    loop {
        // Vertical tab and form feed too: no CFWS in RFC 5322, but readers that trim them
        // as white space would see our id behind them.
        while value.get(i).is_some_and(|b| SPACE.contains(b)) {
            i += 1;
        }
        if value.get(i) != Some(&b'(') {
            break;
        }
        let mut depth = 0usize;
        while let Some(&b) = value.get(i) {
            i += 1;
            match b {
                b'\\' => i += 1,
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    let start = i.min(value.len());
    let end = value[start..]
        .iter()
        .position(|b| *b == b';' || *b == b'(' || SPACE.contains(b))
        .map_or(value.len(), |p| start + p);
    &value[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SenderPolicy;

    fn policy(reject_spf_fail: bool, dmarc_reject: bool) -> SenderPolicy {
        SenderPolicy {
            reject_spf_fail,
            dmarc_reject,
            dmarc_quarantine: true,
        }
    }

    fn evaluation(dmarc: Option<Policy>, spf_fail: bool, temporary: bool) -> Evaluation {
        let temporary = temporary.then(|| "the SPF record of example.test".to_string());
        Evaluation {
            header: String::new(),
            temporary,
            spf_fail: spf_fail.then(|| "spf.test".to_string()),
            dmarc_fail: dmarc.map(|p| ("from.test".to_string(), p)),
            ip: IpAddr::from([192, 0, 2, 1]),
        }
    }

    #[test]
    fn decisions_follow_the_strictest_recipient_policy() {
        let lenient = policy(false, false);
        let default = policy(false, true);
        let strict = policy(true, true);
        // DMARC p=reject: refused if any recipient's domain refuses; else the Junk folder.
        let e = evaluation(Some(Policy::Reject), false, false);
        assert_eq!(e.decide(&[default]).refusal.map(|r| r.code), Some(550));
        assert_eq!(
            e.decide(&[lenient, default]).refusal.map(|r| r.code),
            Some(550)
        );
        let v = e.decide(&[lenient]);
        assert!(v.refusal.is_none() && v.junk);
        // p=quarantine: never refused, always junk; p=none: neither.
        let v = evaluation(Some(Policy::Quarantine), false, false).decide(&[strict]);
        assert!(v.refusal.is_none() && v.junk);
        let v = evaluation(Some(Policy::None), false, false).decide(&[strict]);
        assert!(v.refusal.is_none() && !v.junk);
        // SPF fail: refused only where the policy says so.
        let e = evaluation(None, true, false);
        assert!(e.decide(&[default]).refusal.is_none());
        assert_eq!(
            e.decide(&[default, strict]).refusal.map(|r| r.code),
            Some(550)
        );
        // A DNS failure defers, unless DMARC already refuses.
        let e = evaluation(None, false, true);
        assert_eq!(e.decide(&[default]).refusal.map(|r| r.code), Some(451));
        let e = evaluation(Some(Policy::Reject), false, true);
        assert_eq!(e.decide(&[default]).refusal.map(|r| r.code), Some(550));
    }

    #[test]
    fn forged_results_with_our_id_are_removed() {
        let m = b"Authentication-Results: mx.test;\r\n\tdkim=pass\r\nAuthentication-Results: other.test; spf=pass\r\nAUTHENTICATION-RESULTS:  MX.TEST; dmarc=pass\r\nSubject: hi\r\n\r\nAuthentication-Results: mx.test; in the body stays\r\n";
        let mut out = m.to_vec();
        strip_forged(&mut out, "mx.test");
        let out = String::from_utf8(out).unwrap_or_default();
        assert_eq!(
            out,
            "Authentication-Results: other.test; spf=pass\r\nSubject: hi\r\n\r\nAuthentication-Results: mx.test; in the body stays\r\n"
        );
    }

    #[test]
    fn folded_and_commented_claims_are_removed_too() {
        let forged: [&[u8]; 6] = [
            b"Authentication-Results:\r\n mx.test; dkim=pass\r\n",
            // Found by fuzzing: a vertical tab before the id.
            b"Authentication-Results: \x0bmx.test; spf=pass\r\n",
            b"Authentication-Results: (x) mx.test; dmarc=pass\r\n",
            b"Authentication-Results: (a (nested \\) one))\r\n\t(two) mx.test;spf=pass\r\n",
            b"Authentication-Results : mx.test(comment); arc=pass\r\n",
            b"Authentication-Results: mx.test\r\n",
        ];
        for f in forged {
            let m = [f, b"Subject: s\r\n\r\nbody\r\n"].concat();
            let mut out = m.clone();
            strip_forged(&mut out, "mx.test");
            assert_eq!(
                out,
                b"Subject: s\r\n\r\nbody\r\n",
                "{:?}",
                String::from_utf8_lossy(f)
            );
        }
        let theirs: [&[u8]; 3] = [
            b"Authentication-Results: (mx.test) other.test; spf=pass\r\n",
            b"Authentication-Results: mx.test.evil; spf=pass\r\n",
            b"Authentication-Results: (unclosed mx.test; spf=pass\r\n",
        ];
        for f in theirs {
            let m = [f, b"\r\nbody\r\n"].concat();
            let mut out = m.clone();
            strip_forged(&mut out, "mx.test");
            assert_eq!(out, m);
        }
    }
}
