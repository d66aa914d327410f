//! `kurier dns records`: the printed records are accepted by BIND's zone checker, the DKIM
//! records are the ones `kurier dkim generate` printed, and the TLSA record is the hash
//! OpenSSL computes of the certificate's public key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
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
