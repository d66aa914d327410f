//! Reading mail: a real Dovecot from Debian, configured by `kurier dovecot config`, serves
//! Kurier's Maildirs with Kurier's passwords over IMAP and POP3 (plain, STARTTLS/STLS,
//! implicit TLS), and follows `kurier user add|del` at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Stops the Dovecot started with this configuration when the test ends, however it ends.
struct Dovecot(PathBuf);

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = Command::new("doveadm")
            .arg("-c")
            .arg(&self.0)
            .arg("stop")
            .output();
    }
}

fn mailread(
    ip: &str,
    ports: &[String],
    user: &str,
    password: &str,
    login_only: bool,
) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/mailread.py");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(script).arg(ip).args(ports).args([user, password]);
    if login_only {
        cmd.arg("login");
    }
    let out = run_ok(&mut cmd);
    let json = out.lines().find(|l| l.starts_with('{')).expect("JSON line");
    serde_json::from_str(json).unwrap()
}

fn decoded(v: &serde_json::Value) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            base64::engine::general_purpose::STANDARD
                .decode(m.as_str().unwrap())
                .unwrap()
        })
        .collect()
}

#[test]
fn dovecot_serves_the_maildirs_with_kurier_passwords() {
    if !nix::unistd::geteuid().is_root() {
        panic!("this test runs Dovecot and Kurier's run_as: it needs root (as CI has)");
    }
    // Dovecot works as Kurier's user, never as root.
    let s = TestServer::start("run_as = \"nobody\"", "");
    // Dovecot's auth process (as nobody) reaches the data directory through the test's.
    std::fs::set_permissions(
        s.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    s.add_user("alice@localhost");
    for subject in ["first", "second, with a longer body"] {
        let mut w = Wire::greeted(s.smtp);
        assert!(w.cmd("MAIL FROM:<a@example.test>").starts_with("250 "));
        assert!(w.cmd("RCPT TO:<alice@localhost>").starts_with("250 "));
        assert!(w.cmd("DATA").starts_with("354 "));
        w.send(format!("Subject: {subject}\r\n\r\nline one\r\n..dot\r\n\r\n.\r\n").as_bytes());
        assert!(w.reply().starts_with("250 "));
    }
    let files = s.wait_for_mail("localhost", "alice", 2);
    // What a client must get: the Maildir file with CRLF line ends.
    let expected: Vec<Vec<u8>> = files
        .iter()
        .map(|f| {
            String::from_utf8_lossy(f)
                .replace('\n', "\r\n")
                .into_bytes()
        })
        .collect();

    let ip = next_loopback().to_string();
    // High ports: a system Dovecot the package started may hold the usual ones.
    let ports: Vec<String> = free_ports::<4>().iter().map(u16::to_string).collect();
    let out = s.cli(&[
        "dovecot",
        "config",
        "--listen",
        &ip,
        "--imap-port",
        &ports[0],
        "--imaps-port",
        &ports[1],
        "--pop3-port",
        &ports[2],
        "--pop3s-port",
        &ports[3],
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = s.dir.path().join("dovecot");
    std::fs::create_dir(&run).unwrap();
    let conf = s.dir.path().join("dovecot.conf");
    std::fs::write(
        &conf,
        format!(
            // Plain-text logins without TLS are refused except from a trusted network: the
            // test's client comes from 127.0.0.1 to another loopback address.
            "{}base_dir = {r}/run\nstate_dir = {r}/state\nlog_path = {r}/dovecot.log\n\
             login_trusted_networks = 127.0.0.0/8\nauth_verbose = yes\n",
            String::from_utf8(out.stdout).unwrap(),
            r = run.display()
        ),
    )
    .unwrap();
    // Dovecot goes to the background, its processes keeping whatever output they were
    // given: none, so that waiting for its start is waiting for the master alone.
    let started = Command::new("dovecot")
        .arg("-c")
        .arg(&conf)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(started.success(), "dovecot -c {} failed", conf.display());
    let _dovecot = Dovecot(conf.clone());
    for port in &ports {
        wait_listening(format!("{ip}:{port}").parse().unwrap());
    }

    let read = mailread(&ip, &ports, "alice@localhost", PASSWORD, false);
    for way in [
        "imap",
        "imap_starttls",
        "imaps",
        "pop3",
        "pop3_stls",
        "pop3s",
    ] {
        assert_eq!(
            decoded(&read[way]),
            expected,
            "{way} gave other octets than the Maildir holds"
        );
    }
    let boxes = read["mailboxes"].to_string();
    assert!(boxes.contains("INBOX") && boxes.contains("Junk"), "{boxes}");
    // A wrong password is refused, and user names are case-insensitive as in Kurier.
    assert_eq!(
        mailread(&ip, &ports, "alice@localhost", "wrong", true)["login"],
        false
    );
    assert_eq!(
        mailread(&ip, &ports, "Alice@LOCALHOST", PASSWORD, true)["login"],
        true
    );

    // A user added logs in at once; once deleted, not any more. "At once" within Dovecot's
    // own re-check of the passwd-file, at most once a second: a few tries, bounded.
    let logs_in_soon = |user: &str, expected: bool| {
        (0..10).any(|_| {
            let ok = mailread(&ip, &ports, user, PASSWORD, true)["login"] == expected;
            if !ok {
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
            ok
        })
    };
    s.add_user("bob@localhost");
    let passwd = std::fs::read_to_string(s.data_dir().join("dovecot-passwd")).unwrap();
    assert!(
        passwd.contains("\nbob@localhost:{ARGON2ID}$argon2id$"),
        "{passwd}"
    );
    let dovecot_log = || std::fs::read_to_string(run.join("dovecot.log")).unwrap_or_default();
    assert!(logs_in_soon("bob@localhost", true), "{}", dovecot_log());
    let out = s.cli(&["user", "del", "bob@localhost"]);
    assert!(out.status.success());
    assert!(logs_in_soon("bob@localhost", false), "{}", dovecot_log());
    let log = std::fs::read_to_string(run.join("dovecot.log")).unwrap_or_default();
    assert!(!log.contains("Error"), "Dovecot logged errors:\n{log}");
}

#[test]
fn a_configuration_for_root_owned_mailboxes_is_refused() {
    let s = TestServer::configured("", "");
    std::fs::create_dir(s.data_dir()).unwrap();
    let out = s.cli(&["dovecot", "config"]);
    if nix::unistd::geteuid().is_root() {
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("run_as"), "{err}");
    }
}
