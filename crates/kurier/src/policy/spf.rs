//! SPF evaluation (RFC 7208) of a client for a sender.
//!
//! mail-auth evaluates the policy; this module adds the checks that RFC 7208 makes
//! `permerror` and mail-auth lets pass:
//! - more than one SPF record at a name (§4.5),
//! - a syntax error anywhere in a record that was evaluated (§4.6, grammar in §12),
//! - more than two "void lookups" (§4.6.4).
//!
//! mail-auth asks its caches before every DNS query and fills them after each answer, so
//! recording caches (that never answer) show which names it looked up and which lookups
//! came back empty. Those names are then checked again with Kurier's own queries, which
//! hickory's cache answers. The first point where a strict evaluation departs from
//! mail-auth's is one of these errors, so finding one anywhere in mail-auth's lookups means
//! the strict result is `permerror`.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Instant;

use mail_auth::SpfResult;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{MX, MessageAuthenticator, Parameters, RecordSet, ResolverCache, SpfOutput, Txt};

use super::spf_record;
use crate::dns::MxResolver;
use crate::maillog;

/// RFC 7208 §4.6.4: "SPF implementations SHOULD limit 'void lookups' to two."
pub const MAX_VOID_LOOKUPS: usize = 2;

/// Evaluates SPF for `sender` (MAIL FROM), or for the HELO identity when the sender is
/// empty (the null reverse path, RFC 7208 §2.4), connecting from `ip`.
pub async fn verify(
    resolver: &MxResolver,
    ip: IpAddr,
    helo: &str,
    hostname: &str,
    sender: &str,
) -> SpfOutput {
    // An IPv4 client on an IPv6 socket is an IPv4 client (RFC 7208 §5: "::ffff:" addresses).
    let ip = ip.to_canonical();
    // RFC 7208 §4.3: a malformed domain (an address literal, an empty or over-long label) or
    // a single-label name has no SPF policy: "none", without a lookup.
    let identity = match sender.rsplit_once('@') {
        Some((_, domain)) => domain,
        None if sender.is_empty() => helo,
        None => sender,
    };
    if !is_checkable_domain(identity) {
        return SpfOutput::new(identity.to_string()).with_result(SpfResult::None);
    }
    let log = LookupLog::default();
    let txt = RecordingCache::<Txt>::new(Kind::Txt, &log);
    let mx = RecordingCache::<RecordSet<MX>>::new(Kind::Mx, &log);
    let ipv4 = RecordingCache::<RecordSet<Ipv4Addr>>::new(Kind::A, &log);
    let ipv6 = RecordingCache::<RecordSet<Ipv6Addr>>::new(Kind::Aaaa, &log);
    let params = if sender.is_empty() {
        SpfParameters::verify_ehlo(ip, helo, hostname)
    } else {
        SpfParameters::verify_mail_from(ip, helo, hostname, sender)
    };
    let auth = MessageAuthenticator(resolver.resolver().clone());
    let output = auth
        .verify_spf(
            Parameters::new(params)
                .with_txt_cache(&txt)
                .with_mx_cache(&mx)
                .with_ipv4_cache(&ipv4)
                .with_ipv6_cache(&ipv6),
        )
        .await;
    let events = log.take();
    match strict_error(resolver, output.result(), &events).await {
        Some(reason) => {
            maillog::spf_permerror(output.domain(), &reason);
            SpfOutput::new(output.domain().to_string()).with_result(SpfResult::PermError)
        }
        None => output,
    }
}

/// Why a result mail-auth computed becomes `permerror`, if it does.
async fn strict_error(
    resolver: &MxResolver,
    result: SpfResult,
    events: &[Event],
) -> Option<String> {
    if matches!(result, SpfResult::PermError | SpfResult::None) {
        return None;
    }
    for name in spf_names(events) {
        // A name that cannot be fetched again keeps mail-auth's result.
        let Ok(txts) = txt_records(resolver, name).await else {
            continue;
        };
        if let Err(e) = spf_record::select_and_check(&txts) {
            return Some(format!("{name}: {e}"));
        }
    }
    if result == SpfResult::TempError {
        // A target name that DNS cannot carry (an empty or over-long label, say from a
        // macro) made mail-auth give up with an error; RFC 7208 makes that the record's
        // fault, not the network's: permerror, never a deferral that cannot heal.
        return events.iter().find_map(|e| match e {
            Event::Get(_, name) if !is_dns_name(name) => {
                Some(format!("{name:?} is not a valid domain name"))
            }
            _ => None,
        });
    }
    // The explanation (exp=) is fetched after a fail is decided; it is not a term.
    let events = match events.split_last() {
        Some((Event::Get(Kind::Txt, _), before)) if result == SpfResult::Fail => before,
        _ => events,
    };
    let voids = void_lookups(resolver, events).await;
    (voids > MAX_VOID_LOOKUPS)
        .then(|| format!("{voids} void DNS lookups (limit {MAX_VOID_LOOKUPS})"))
}

/// The names whose SPF record mail-auth evaluated: the domain itself, include and redirect
/// targets.
fn spf_names(events: &[Event]) -> impl Iterator<Item = &str> {
    events.iter().filter_map(|e| match e {
        Event::Insert(Kind::Txt, name, Answer::Spf) => Some(&**name),
        _ => None,
    })
}

/// Counts the lookups that answered nothing (NXDOMAIN or no records, RFC 7208 §4.6.4) among
/// those made for the terms: include and redirect targets, `a`, `mx` and `exists`. The first
/// TXT lookup (the domain itself, where "none" is the answer) and the address lookups of MX
/// hosts are not terms of their own.
async fn void_lookups(resolver: &MxResolver, events: &[Event]) -> usize {
    let mx_hosts: HashSet<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Insert(Kind::Mx, _, Answer::Hosts(hosts)) => Some(hosts.iter().map(|h| &**h)),
            _ => None,
        })
        .flatten()
        .collect();
    let answered = |i: usize, kind: Kind, name: &str| {
        events[i + 1..]
            .iter()
            .take_while(|e| !matches!(e, Event::Get(k, n) if *k == kind && &**n == name))
            .any(|e| matches!(e, Event::Insert(k, n, _) if *k == kind && &**n == name))
    };
    let mut voids = 0;
    let mut first_txt = true;
    let mut i = 0;
    while i < events.len() {
        if let Event::Get(kind, name) = &events[i] {
            let name = &**name;
            match kind {
                Kind::Txt if first_txt => first_txt = false,
                Kind::Txt | Kind::Mx => voids += usize::from(!answered(i, *kind, name)),
                // `exists` asks both caches for the name and then queries without filling
                // them; its lookup is of A records (RFC 7208 §5.7), so ask again.
                Kind::A
                    if matches!(events.get(i + 1),
                        Some(Event::Get(Kind::Aaaa, next)) if &**next == name) =>
                {
                    if resolver.a_records(name).await.is_ok_and(|a| a.is_empty()) {
                        voids += 1;
                    }
                    i += 1;
                }
                Kind::A | Kind::Aaaa if !mx_hosts.contains(name) => {
                    voids += usize::from(!answered(i, *kind, name));
                }
                _ => {}
            }
        }
        i += 1;
    }
    voids
}

/// A name a DNS query can carry: labels of 1 to 63 octets, 253 in all (RFC 1035 §2.3.4),
/// as hickory parses it.
fn is_dns_name(name: &str) -> bool {
    let bare = name.strip_suffix('.').unwrap_or(name);
    !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|l| !l.is_empty() && l.len() <= 63)
        && hickory_resolver::proto::rr::Name::from_str_relaxed(name).is_ok()
}

/// An identity SPF can be checked for (RFC 7208 §4.3): a valid name of two labels or more,
/// not an address literal. Internationalized names (RFC 6531) pass on to the resolver.
fn is_checkable_domain(domain: &str) -> bool {
    let bare = domain.strip_suffix('.').unwrap_or(domain);
    is_dns_name(bare)
        && bare.contains('.')
        && bare
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') || b >= 0x80)
}

/// The TXT records of a name, each as its strings joined (RFC 7208 §3.3).
async fn txt_records(resolver: &MxResolver, name: &str) -> Result<Vec<Vec<u8>>, ()> {
    resolver.txt_records(name).await.map_err(|_| ())
}

/// Which record type a lookup was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Txt,
    Mx,
    A,
    Aaaa,
}

/// What an answered lookup held, as far as the checks need to know.
#[derive(Debug)]
enum Answer {
    /// A parsed SPF record.
    Spf,
    /// The exchanges of an MX answer.
    Hosts(Vec<Box<str>>),
    Other,
}

/// One step of mail-auth's lookups, in order.
#[derive(Debug)]
enum Event {
    /// About to query this name (a cache miss).
    Get(Kind, Box<str>),
    /// The query answered with records.
    Insert(Kind, Box<str>, Answer),
}

#[derive(Default)]
struct LookupLog(Mutex<Vec<Event>>);

impl LookupLog {
    fn push(&self, event: Event) {
        if let Ok(mut log) = self.0.lock() {
            log.push(event);
        }
    }

    fn take(&self) -> Vec<Event> {
        self.0
            .lock()
            .map(|mut log| std::mem::take(&mut *log))
            .unwrap_or_default()
    }
}

/// What the checks keep of a cached value.
trait Summary {
    fn summary(&self) -> Answer;
}

impl Summary for Txt {
    fn summary(&self) -> Answer {
        match self {
            Txt::Spf(_) => Answer::Spf,
            _ => Answer::Other,
        }
    }
}

impl Summary for RecordSet<MX> {
    fn summary(&self) -> Answer {
        Answer::Hosts(
            self.rrset
                .iter()
                .flat_map(|mx| mx.exchanges.iter().cloned())
                .collect(),
        )
    }
}

impl Summary for RecordSet<Ipv4Addr> {
    fn summary(&self) -> Answer {
        Answer::Other
    }
}

impl Summary for RecordSet<Ipv6Addr> {
    fn summary(&self) -> Answer {
        Answer::Other
    }
}

/// A cache that never answers and logs every question and every answer put into it.
struct RecordingCache<'a, V> {
    kind: Kind,
    log: &'a LookupLog,
    value: PhantomData<V>,
}

impl<'a, V> RecordingCache<'a, V> {
    fn new(kind: Kind, log: &'a LookupLog) -> Self {
        RecordingCache {
            kind,
            log,
            value: PhantomData,
        }
    }
}

impl<V: Summary> ResolverCache<Box<str>, V> for RecordingCache<'_, V> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.log.push(Event::Get(self.kind, key_text(name).into()));
        None
    }

    fn remove<Q>(&self, _: &Q) -> Option<V>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, key: Box<str>, value: V, _: Instant) {
        self.log
            .push(Event::Insert(self.kind, key, value.summary()));
    }
}

/// The text of a cache key. The cache API hands over the key only as `Q: Hash`; a `str`
/// feeds the hasher its bytes and then one 0xff byte, so a hasher that keeps the bytes it is
/// fed gives the name back (checked by a unit test).
fn key_text<Q: Hash + ?Sized>(key: &Q) -> String {
    #[derive(Default)]
    struct Bytes(Vec<u8>);
    impl Hasher for Bytes {
        fn write(&mut self, bytes: &[u8]) {
            self.0.extend_from_slice(bytes);
        }
        fn finish(&self) -> u64 {
            0
        }
    }
    let mut bytes = Bytes::default();
    key.hash(&mut bytes);
    let mut bytes = bytes.0;
    if bytes.last() == Some(&0xff) {
        bytes.pop();
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_that_have_no_policy() {
        for ok in [
            "example.org",
            "mail.example.org.",
            "_spf.example.org",
            "xn--bcher-kva.example",
        ] {
            assert!(is_checkable_domain(ok), "{ok}");
        }
        let long = format!("{}.example.org", "a".repeat(64));
        for bad in [
            "[192.0.2.1]",
            "A...example.com",
            "localhost",
            "",
            ".",
            &long,
            "a b.example",
        ] {
            assert!(!is_checkable_domain(bad), "{bad}");
        }
    }

    #[test]
    fn key_text_gives_the_name_back() {
        assert_eq!(key_text("example.org."), "example.org.");
        let boxed: Box<str> = "_spf.example.org.".into();
        let borrowed: &str = boxed.borrow();
        assert_eq!(key_text(borrowed), "_spf.example.org.");
    }
}
