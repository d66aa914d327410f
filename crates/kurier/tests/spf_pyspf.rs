//! Kurier's SPF verdicts agree with pyspf (Debian's python3-spf, an independent
//! implementation) on a table of records, both resolving through the same DNS server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::dns::{Rr, TestDns};
use common::{run_ok, spf_result_name};
use std::process::Command;

fn txt(s: &str) -> Rr {
    Rr::Txt(s.to_string())
}

#[test]
fn spf_verdicts_agree_with_pyspf() {
    let mut zone: Vec<(&str, Rr)> = vec![
        ("inc.spf.test", txt("v=spf1 include:included.spf.test -all")),
        ("included.spf.test", txt("v=spf1 ip4:192.0.2.0/24 -all")),
        ("redir.spf.test", txt("v=spf1 redirect=target.spf.test")),
        ("target.spf.test", txt("v=spf1 ip4:192.0.2.10 ~all")),
        ("a.spf.test", txt("v=spf1 a:host.spf.test/24 -all")),
        ("host.spf.test", Rr::A("198.51.100.7".parse().unwrap())),
        ("mx.spf.test", txt("v=spf1 mx -all")),
        ("mx.spf.test", Rr::Mx(10, "mail.spf.test".into())),
        ("mail.spf.test", Rr::A("203.0.113.5".parse().unwrap())),
        ("ip6.spf.test", txt("v=spf1 ip6:2001:db8::/32 -all")),
        (
            "exists.spf.test",
            txt("v=spf1 exists:%{i}.ok.spf.test -all"),
        ),
        (
            "192.0.2.99.ok.spf.test",
            Rr::A("127.0.0.2".parse().unwrap()),
        ),
        (
            "macro.spf.test",
            txt("v=spf1 exists:%{l}.users.spf.test -all"),
        ),
        ("alice.users.spf.test", Rr::A("127.0.0.2".parse().unwrap())),
        ("neutral.spf.test", txt("v=spf1 ?all")),
        (
            "void.spf.test",
            txt("v=spf1 a:nx1.spf.test a:nx2.spf.test a:nx3.spf.test -all"),
        ),
        ("multi.spf.test", txt("v=spf1 -all")),
        ("multi.spf.test", txt("v=spf1 +all")),
    ];
    let ten: String = (1..=11)
        .map(|i| format!(" include:l{i}.spf.test"))
        .collect();
    let ten_record = format!("v=spf1{ten} -all");
    zone.push(("ten.spf.test", Rr::Txt(ten_record)));
    let leaves: Vec<String> = (1..=11).map(|i| format!("l{i}.spf.test")).collect();
    for l in &leaves {
        zone.push((l.as_str(), txt("v=spf1 ip4:203.0.113.99 -all")));
    }
    let dns = TestDns::start(zone);
    let cases: Vec<(&str, &str, &str)> = vec![
        ("192.0.2.5", "a@inc.spf.test", "pass"),
        ("198.51.100.1", "a@inc.spf.test", "fail"),
        ("192.0.2.10", "a@redir.spf.test", "pass"),
        ("192.0.2.11", "a@redir.spf.test", "softfail"),
        ("198.51.100.200", "a@a.spf.test", "pass"),
        ("198.51.101.1", "a@a.spf.test", "fail"),
        ("203.0.113.5", "a@mx.spf.test", "pass"),
        ("203.0.113.6", "a@mx.spf.test", "fail"),
        ("2001:db8::1", "a@ip6.spf.test", "pass"),
        ("2001:db9::1", "a@ip6.spf.test", "fail"),
        ("192.0.2.99", "a@exists.spf.test", "pass"),
        ("192.0.2.98", "a@exists.spf.test", "fail"),
        ("192.0.2.1", "alice@macro.spf.test", "pass"),
        ("192.0.2.1", "bob@macro.spf.test", "fail"),
        ("192.0.2.1", "a@neutral.spf.test", "neutral"),
        ("192.0.2.1", "a@void.spf.test", "permerror"),
        ("192.0.2.1", "a@ten.spf.test", "permerror"),
        ("192.0.2.1", "a@none.spf.test", "none"),
        ("192.0.2.1", "a@multi.spf.test", "permerror"),
    ];
    // Kurier (mail-auth over hickory).
    let resolver = kurier::dns::MxResolver::new(&[format!("127.0.0.1:{}", dns.port)]).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ours: Vec<&str> = cases
        .iter()
        .map(|(ip, sender, _)| {
            let spf = rt.block_on(kurier::policy::spf::verify(
                &resolver,
                ip.parse().unwrap(),
                "helo.spf.test",
                "mx.test",
                sender,
            ));
            spf_result_name(spf.result())
        })
        .collect();
    // pyspf, through dnspython pointed at the same server.
    let script = r#"
import json, sys
import dns.resolver, spf
r = dns.resolver.Resolver(configure=False)
r.nameservers = ["127.0.0.1"]
r.port = int(sys.argv[1])
dns.resolver.default_resolver = r
out = []
for ip, sender, _ in json.loads(sys.argv[2]):
    result, _explanation = spf.check2(i=ip, s=sender, h="helo.spf.test")
    out.append(result)
print(json.dumps(out))
"#;
    let cases_json = serde_json::to_string(&cases).unwrap();
    let out = run_ok(Command::new("/usr/bin/python3").args([
        "-c",
        script,
        &dns.port.to_string(),
        &cases_json,
    ]));
    let theirs: Vec<String> = serde_json::from_str(out.trim().lines().last().unwrap()).unwrap();
    let mut disagreements = Vec::new();
    for (i, (ip, sender, expected)) in cases.iter().enumerate() {
        assert_eq!(theirs[i], *expected, "pyspf on {sender} from {ip}");
        if ours[i] != *expected {
            disagreements.push(format!(
                "{sender} from {ip}: kurier {}, pyspf {}, expected {expected}",
                ours[i], theirs[i]
            ));
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
    let agreed = ours.iter().zip(&theirs).filter(|(a, b)| *a == b).count();
    println!(
        "SPF: Kurier and pyspf agree on {agreed} of {} cases",
        cases.len()
    );
}
