//! `kurier dns records`: the printed records are accepted by BIND's zone checker, the DKIM
//! records are the ones `kurier dkim generate` printed, and the TLSA record is the hash
//! OpenSSL computes of the certificate's public key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::dns::{Rr, TestDns};
use common::*;
use std::process::Command;

fn sh(script: &str) -> String {
    run_ok(Command::new("sh").args(["-c", script]))
}

#[test]
fn records_pass_named_checkzone_and_match_the_keys_and_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    sh(&format!(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
         -subj /CN=mx.example.org -keyout {d}/key.pem -out {d}/cert.pem 2>/dev/null"
    ));
    let config = dir.path().join("kurier.toml");
    std::fs::write(
        &config,
        format!(
            "hostname = \"mx.example.org\"\ndomains = [\"example.org\"]\ndata_dir = \"{d}/data\"\n\
             [tls]\ncertificate = \"{d}/cert.pem\"\nprivate_key = \"{d}/key.pem\"\n"
        ),
    )
    .unwrap();
    let kurier = |args: &[&str]| {
        let mut c = Command::new(BIN);
        c.arg("--config").arg(&config).args(args);
        c
    };
    // No keys yet, and no data directory: the records say how to make one.
    let out = run_ok(&mut kurier(&["dns", "records", "example.org"]));
    assert!(out.contains("kurier dkim generate example.org"), "{out}");
    let mut printed = Vec::new();
    for (selector, alg) in [("s1", "rsa"), ("s2", "ed25519")] {
        let out = run_ok(&mut kurier(&[
            "dkim",
            "generate",
            "example.org",
            "--selector",
            selector,
            "--algorithm",
            alg,
        ]));
        printed.push(
            out.lines()
                .find(|l| l.contains("._domainkey."))
                .unwrap()
                .to_string(),
        );
    }
    let out = run_ok(&mut kurier(&[
        "dns",
        "records",
        "example.org",
        "--ipv4",
        "192.0.2.25",
        "--ipv6",
        "2001:db8::25",
    ]));
    for record in &printed {
        assert!(
            out.contains(record.as_str()),
            "{record} missing from\n{out}"
        );
    }
    let spki_hash = sh(&format!(
        "openssl x509 -in {d}/cert.pem -noout -pubkey | openssl pkey -pubin -outform DER \
         | sha256sum | cut -d' ' -f1"
    ));
    let tlsa = format!(
        "_25._tcp.mx.example.org. IN TLSA 3 1 1 {}",
        spki_hash.trim()
    );
    assert!(out.contains(&tlsa), "{tlsa} missing from\n{out}");
    assert!(
        out.contains("example.org. IN MX 10 mx.example.org.\n"),
        "{out}"
    );

    // The lines as a zone's content, after its SOA and NS: BIND loads it.
    let zone = dir.path().join("example.org.zone");
    std::fs::write(
        &zone,
        format!(
            "$TTL 3600\n@ IN SOA ns.example.org. hostmaster.example.org. 1 3600 600 86400 300\n\
             @ IN NS ns.example.org.\nns IN A 192.0.2.53\n{out}"
        ),
    )
    .unwrap();
    let checked = run_ok(
        Command::new("named-checkzone")
            .arg("example.org")
            .arg(&zone),
    );
    assert!(checked.contains("OK"), "{checked}");
    // And it does check: a record broken the way a hand-made copy breaks is refused.
    std::fs::write(
        &zone,
        std::fs::read_to_string(&zone).unwrap() + "broken.example.org. IN MX mx.example.org.\n",
    )
    .unwrap();
    run_fail(
        Command::new("named-checkzone")
            .arg("example.org")
            .arg(&zone),
    );

    let out = run_fail(&mut kurier(&["dns", "records", "elsewhere.test"]));
    assert!(out.contains("not a local domain"), "{out}");
}

/// The zone of `kurier dns records` served by a real DNS server passes `kurier dns check`;
/// a zone with the mistakes people make fails it, each mistake named.
#[test]
fn check_passes_the_published_zone_and_names_each_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let config = dir.path().join("kurier.toml");
    let write_config = |dns: &common::dns::TestDns| {
        std::fs::write(
            &config,
            format!(
                "hostname = \"mx.example.org\"\ndomains = [\"example.org\"]\ndata_dir = \"{d}/data\"\n{}",
                dns.config()
            ),
        )
        .unwrap();
    };
    let kurier = |args: &[&str]| {
        let mut c = Command::new(BIN);
        c.arg("--config").arg(&config).args(args);
        c
    };
    let empty = TestDns::start(vec![]);
    write_config(&empty);
    let mut keys = Vec::new();
    for (selector, alg) in [("s1", "rsa"), ("s2", "ed25519")] {
        let out = run_ok(&mut kurier(&[
            "dkim",
            "generate",
            "example.org",
            "--selector",
            selector,
            "--algorithm",
            alg,
        ]));
        let line = out.lines().find(|l| l.contains("._domainkey.")).unwrap();
        let parts: Vec<String> = line
            .split('"')
            .skip(1)
            .step_by(2)
            .map(String::from)
            .collect();
        keys.push((format!("{selector}._domainkey.example.org"), parts));
    }
    drop(empty);
    let ip: std::net::Ipv4Addr = "192.0.2.25".parse().unwrap();
    let mut good = vec![
        ("example.org", Rr::Mx(10, "mx.example.org".into())),
        ("mx.example.org", Rr::A(ip)),
        ("25.2.0.192.in-addr.arpa", Rr::Ptr("mx.example.org".into())),
        ("example.org", Rr::Txt("v=spf1 mx -all".into())),
        ("mx.example.org", Rr::Txt("v=spf1 a -all".into())),
        (
            "_dmarc.example.org",
            Rr::Txt("v=DMARC1; p=quarantine; rua=mailto:postmaster@example.org".into()),
        ),
        (
            "_smtp._tls.example.org",
            Rr::Txt("v=TLSRPTv1; rua=mailto:postmaster@example.org".into()),
        ),
    ];
    for (name, parts) in &keys {
        good.push((name.as_str(), Rr::TxtParts(parts.clone())));
    }
    let dns = TestDns::start(good);
    write_config(&dns);
    let out = run_ok(&mut kurier(&[
        "dns",
        "check",
        "example.org",
        "--ipv4",
        "192.0.2.25",
    ]));
    let ok = out.lines().filter(|l| l.starts_with("ok ")).count();
    assert_eq!(ok, 9, "MX, A, 2 SPF, 2 DKIM, DMARC, TLS-RPT, PTR:\n{out}");
    assert_eq!(out.lines().count(), 9, "{out}");
    assert!(
        out.contains("SPF example.org: v=spf1 mx -all (passes for mx.example.org)"),
        "{out}"
    );
    drop(dns);

    // The usual mistakes: MX to the old provider, an SPF that leaves the host out, the host's
    // SPF and DMARC forgotten, an old DKIM key, two SPF records on the host, no PTR.
    let dns = TestDns::start(vec![
        ("example.org", Rr::Mx(10, "mx.oldhost.test".into())),
        ("mx.example.org", Rr::A(ip)),
        (
            "example.org",
            Rr::Txt("v=spf1 include:oldhost.test -all".into()),
        ),
        ("mx.example.org", Rr::Txt("v=spf1 a -all".into())),
        ("mx.example.org", Rr::Txt("v=spf1 -all".into())),
        (
            "s1._domainkey.example.org",
            Rr::Txt("v=DKIM1; k=rsa; p=MIIBoldkey".into()),
        ),
    ]);
    write_config(&dns);
    let out = run_fail(&mut kurier(&[
        "dns",
        "check",
        "example.org",
        "--ipv4",
        "192.0.2.25",
    ]));
    for expected in [
        "WRONG    MX example.org: 10 mx.oldhost.test (not mx.example.org",
        "ok       A/AAAA mx.example.org: 192.0.2.25",
        "WRONG    SPF example.org: v=spf1 include:oldhost.test -all: gives",
        "WRONG    SPF mx.example.org: 2 v=spf1 records",
        "WRONG    DKIM s1._domainkey.example.org: publishes another key",
        "MISSING  DKIM s2._domainkey.example.org",
        "MISSING  DMARC _dmarc.example.org",
        "note     TLS-RPT _smtp._tls.example.org: not published (optional)",
        "MISSING  PTR 192.0.2.25",
        "7 of 9 records need attention",
    ] {
        assert!(out.contains(expected), "{expected:?} missing from\n{out}");
    }
}
