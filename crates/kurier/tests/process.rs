//! The server as a process: crash recovery, single instance, graceful shutdown, privilege
//! dropping, live user management, the config checker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn send_one(port: u16, subject: &str) -> String {
    let mut w = Wire::greeted(port);
    assert!(w.cmd("MAIL FROM:<a@example.test>").starts_with("250 "));
    assert!(w.cmd("RCPT TO:<postmaster@localhost>").starts_with("250 "));
    assert!(w.cmd("DATA").starts_with("354 "));
    w.send(format!("Subject: {subject}\r\n\r\nbody\r\n.\r\n").as_bytes());
    w.reply()
}

#[test]
fn message_acknowledged_before_kill_9_is_delivered_after_restart() {
    let mut s = TestServer::start("", "[delivery]\nenabled = false\n");
    let r = send_one(s.smtp, "survivor");
    assert!(r.starts_with("250 2.0.0 Ok: queued as"), "{r}");
    let id = r.trim_end().rsplit(' ').next().unwrap().to_string();
    // Acknowledged means on disk: the queue file is there before anything else happens.
    assert_eq!(s.queued().len(), 1);
    assert!(s.queued()[0].ends_with(&id));
    s.kill9();
    s.set_tables("[delivery]\nenabled = true\n");
    s.spawn();
    let mail = s.wait_for_mail("localhost", "postmaster", 1);
    let (_, received, rest) = split_delivered(&mail[0]);
    assert!(received.contains(&format!("id {id}")), "{received}");
    assert_eq!(rest, b"Subject: survivor\n\nbody\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.queued().is_empty() {
        assert!(
            Instant::now() < deadline,
            "queue not emptied after delivery"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn kill_9_right_after_250_loses_nothing() {
    let mut s = TestServer::default();
    let r = send_one(s.smtp, "racing");
    assert!(r.starts_with("250 2.0.0"), "{r}");
    s.kill9();
    s.spawn();
    // Delivered before the kill or after the restart, but delivered, once.
    let mail = s.wait_for_mail("localhost", "postmaster", 1);
    assert!(
        split_delivered(&mail[0])
            .2
            .starts_with(b"Subject: racing\n")
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        list(&s.maildir("localhost", "postmaster").join("new")).len(),
        1
    );
}

#[test]
fn second_instance_on_the_same_data_directory_refuses_to_start() {
    let s = TestServer::default();
    let other = tempfile::tempdir().unwrap();
    let cfg = other.path().join("k.toml");
    std::fs::write(
        &cfg,
        "[[listeners]]\naddress = \"127.0.0.1:0\"\nrole = \"smtp\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config", cfg.to_str().unwrap(), "--data-dir"])
        .arg(s.data_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another kurier is already running on data directory"),
        "{err}"
    );
    // The first one still works.
    assert!(send_one(s.smtp, "still here").starts_with("250 "));
}

#[test]
fn sigterm_finishes_transactions_then_exits_cleanly() {
    let mut s = TestServer::start("", "[limits]\nshutdown_grace = \"10s\"\n");
    let mut idle = Wire::greeted(s.smtp);
    let mut busy = Wire::greeted(s.smtp);
    assert!(busy.cmd("MAIL FROM:<a@example.test>").starts_with("250 "));
    signal(s.pid(), nix::sys::signal::Signal::SIGTERM);
    assert_eq!(
        idle.reply(),
        "421 4.3.2 mx.kurier.test Service shutting down, try again later\r\n"
    );
    // The transaction in progress may finish; then the session is closed.
    assert!(
        busy.cmd("RCPT TO:<postmaster@localhost>")
            .starts_with("250 ")
    );
    assert!(busy.cmd("DATA").starts_with("354 "));
    busy.send(b"Subject: last one\r\n\r\nx\r\n.\r\n");
    assert!(busy.reply().starts_with("250 2.0.0 Ok: queued as"));
    assert!(busy.reply().starts_with("421 4.3.2"));
    let status = s.terminate();
    assert_eq!(status.code(), Some(0), "{}", s.log());
    // No new connections after the stop.
    assert!(std::net::TcpStream::connect(("127.0.0.1", s.smtp)).is_err());
    s.spawn();
    s.wait_for_mail("localhost", "postmaster", 1);
}

/// Keeps both cores busy while it lives, so races between the signal, the listeners and the
/// sessions show up as they do on a loaded machine.
struct CpuLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuLoad {
    fn start(threads: usize) -> CpuLoad {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    // Bounded: the test ends it, and it ends itself after a minute.
                    let until = Instant::now() + Duration::from_secs(60);
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                })
            })
            .collect();
        CpuLoad { stop, threads }
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn sigterm_gives_every_session_its_421_under_load() {
    const ROUNDS: usize = 6;
    const IDLE: usize = 25;
    const BUSY: usize = 8;
    let _load = CpuLoad::start(2);
    for round in 0..ROUNDS {
        let mut s = TestServer::start(
            "",
            "[limits]\nshutdown_grace = \"10s\"\nconnections_per_ip = 100\n",
        );
        // Every other round: a SIGTERM at once after the banner, with nobody connected,
        // is a clean stop too (the handler is in place before the ports are bound).
        if round % 2 == 1 {
            let status = s.terminate();
            assert_eq!(status.code(), Some(0), "round {round}: {}", s.log());
            continue;
        }
        let mut idle: Vec<Wire> = (0..IDLE).map(|_| Wire::greeted(s.smtp)).collect();
        let mut busy: Vec<Wire> = (0..BUSY)
            .map(|_| {
                let mut w = Wire::greeted(s.smtp);
                assert!(w.cmd("MAIL FROM:<a@example.test>").starts_with("250 "));
                w
            })
            .collect();
        signal(s.pid(), nix::sys::signal::Signal::SIGTERM);
        for (i, w) in idle.iter_mut().enumerate() {
            assert_eq!(
                w.reply(),
                "421 4.3.2 mx.kurier.test Service shutting down, try again later\r\n",
                "round {round}, idle session {i}:\n{}",
                s.log()
            );
        }
        for (i, w) in busy.iter_mut().enumerate() {
            let what = format!("round {round}, busy session {i}");
            assert!(
                w.cmd("RCPT TO:<postmaster@localhost>").starts_with("250 "),
                "{what}"
            );
            assert!(w.cmd("DATA").starts_with("354 "), "{what}");
            w.send(format!("Subject: {what}\r\n\r\nx\r\n.\r\n").as_bytes());
            assert!(w.reply().starts_with("250 2.0.0 Ok: queued as"), "{what}");
            assert!(w.reply().starts_with("421 4.3.2"), "{what}");
        }
        let status = s.terminate();
        assert_eq!(status.code(), Some(0), "round {round}: {}", s.log());
        s.spawn();
        s.wait_for_mail("localhost", "postmaster", BUSY);
    }
}

#[test]
fn grace_period_ends_stuck_transactions() {
    let mut s = TestServer::start("", "[limits]\nshutdown_grace = \"1s\"\n");
    let mut busy = Wire::greeted(s.smtp);
    assert!(busy.cmd("MAIL FROM:<a@example.test>").starts_with("250 "));
    signal(s.pid(), nix::sys::signal::Signal::SIGTERM);
    assert!(busy.reply().starts_with("421 4.3.2"));
    assert_eq!(s.terminate().code(), Some(0));
}

#[test]
fn users_added_and_removed_while_running() {
    let s = TestServer::default();
    let mut w = Wire::greeted(s.smtp);
    assert!(w.cmd("MAIL FROM:<a@example.test>").starts_with("250 "));
    assert!(w.cmd("RCPT TO:<bob@localhost>").starts_with("550 5.1.1"));
    s.add_user("bob@localhost");
    assert!(w.cmd("RCPT TO:<bob@localhost>").starts_with("250 "));
    assert!(w.cmd("RCPT TO:<Bob+tag@LocalHost>").starts_with("250 "));
    let out = s.cli(&["user", "list"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "bob@localhost\n");
    let out = s.cli(&[
        "user",
        "add",
        "bob@localhost",
        "--password-file",
        "/dev/null",
    ]);
    assert!(!out.status.success());
    let out = s.cli(&[
        "user",
        "add",
        "carol@elsewhere.test",
        "--password-file",
        s.dir.path().join("pw").to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("elsewhere.test is not a local domain"));
    assert!(s.cli(&["user", "del", "bob@localhost"]).status.success());
    assert!(w.cmd("RCPT TO:<bob@localhost>").starts_with("550 5.1.1"));
    let hash = s.data_dir().join("users.toml");
    let text = std::fs::read_to_string(hash).unwrap();
    assert!(!text.contains("bob@"), "{text}");
}

#[test]
fn config_check_reports_the_offending_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "hostname = \"mx.example.org\"\ndomains = [\"example.org\"]\n",
    )
    .unwrap();
    let out = run_ok(Command::new(BIN).args(["config", "check", good.to_str().unwrap()]));
    assert!(out.contains("good.toml: ok"), "{out}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[limits]\nmessage_size = 0\n").unwrap();
    let out = run_fail(Command::new(BIN).args(["config", "check", bad.to_str().unwrap()]));
    assert!(
        out.contains("key `limits.message_size`: must be greater than 0"),
        "{out}"
    );
    std::fs::write(&bad, "[limits]\nmesage_size = 10\n").unwrap();
    let out = run_fail(Command::new(BIN).args(["config", "check", bad.to_str().unwrap()]));
    assert!(
        out.contains("unknown field `mesage_size`") && out.contains("line 2"),
        "{out}"
    );
    // The printed default is itself a valid config.
    let default = run_ok(Command::new(BIN).args(["config", "default"]));
    std::fs::write(&good, default).unwrap();
    run_ok(Command::new(BIN).args(["config", "check", good.to_str().unwrap()]));
}

#[test]
fn aliases_from_the_config_deliver_to_every_target() {
    let mut s = TestServer::configured(
        "",
        "[aliases]\n\"team@kurier.test\" = [\"alice@localhost\", \"postmaster@localhost\"]\n\"postmaster@kurier.test\" = \"alice@localhost\"\n",
    );
    s.add_user("alice@localhost");
    s.spawn();
    let mut w = Wire::greeted(s.smtp);
    assert!(w.cmd("MAIL FROM:<a@example.test>").starts_with("250 "));
    assert!(w.cmd("RCPT TO:<team@kurier.test>").starts_with("250 "));
    assert!(
        w.cmd("RCPT TO:<postmaster@kurier.test>")
            .starts_with("250 ")
    );
    assert!(w.cmd("DATA").starts_with("354 "));
    w.send(b"Subject: to the team\r\n\r\nhi\r\n.\r\n");
    assert!(w.reply().starts_with("250 "));
    // Both addresses lead to alice: she gets one copy; postmaster@localhost gets one.
    s.wait_for_mail("localhost", "postmaster", 1);
    let alice = s.wait_for_mail("localhost", "alice", 1);
    assert!(
        split_delivered(&alice[0])
            .0
            .contains("Delivered-To: alice@localhost")
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(list(&s.maildir("localhost", "alice").join("new")).len(), 1);
}

/// Started as root with `run_as`, the server binds its ports as root and then writes the
/// spool and the mailboxes as the unprivileged user.
#[test]
fn drops_privileges_after_binding() {
    if !nix_is_root() {
        eprintln!("not root: privilege dropping cannot be exercised here");
        return;
    }
    let s = TestServer::start("run_as = \"nobody\"", "");
    let uid = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody")
        .uid
        .as_raw();
    assert!(send_one(s.smtp, "as nobody").starts_with("250 "));
    let mail = s.wait_for_mail("localhost", "postmaster", 1);
    assert!(!mail.is_empty());
    use std::os::unix::fs::MetadataExt;
    let file = &list(&s.maildir("localhost", "postmaster").join("new"))[0];
    assert_eq!(std::fs::metadata(file).unwrap().uid(), uid);
    assert_eq!(
        std::fs::metadata(s.data_dir().join("spool/queue"))
            .unwrap()
            .uid(),
        uid
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        line.split_whitespace()
            .skip(1)
            .all(|u| u == uid.to_string()),
        "{line}"
    );
}

fn nix_is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Unmounts a tmpfs when the test ends, whatever happens.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// With the spool on a full file system, messages get 452 4.3.1, nothing acknowledged is lost,
/// no partial file is left behind, and the server accepts mail again once space returns.
#[test]
fn full_disk_gives_452_and_loses_nothing() {
    if !nix_is_root() {
        eprintln!("not root: cannot mount a tmpfs to fill");
        return;
    }
    let mut s = TestServer::configured("", "[delivery]\nenabled = false\n");
    std::fs::create_dir_all(s.data_dir()).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=600k", "tmpfs"])
        .arg(s.data_dir())
        .status()
        .unwrap();
    assert!(mounted.success(), "mount tmpfs");
    let _guard = Tmpfs(s.data_dir());
    s.spawn();
    let body = format!(
        "Subject: big\r\n\r\n{}",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n".repeat(1600)
    );
    let mut accepted = 0;
    let mut refused = None;
    for _ in 0..20 {
        let mut w = Wire::greeted(s.smtp);
        assert!(w.cmd("MAIL FROM:<a@example.test>").starts_with("250 "));
        assert!(w.cmd("RCPT TO:<postmaster@localhost>").starts_with("250 "));
        assert!(w.cmd("DATA").starts_with("354 "));
        w.send(body.as_bytes());
        w.send(b".\r\n");
        let r = w.reply();
        if r.starts_with("250 ") {
            accepted += 1;
        } else {
            refused = Some(r);
            break;
        }
    }
    let refused = refused.expect("the spool never filled up");
    assert_eq!(
        refused,
        "452 4.3.1 Insufficient system storage, try again later\r\n"
    );
    assert!(accepted >= 1, "nothing was accepted before the disk filled");
    assert_eq!(s.queued().len(), accepted);
    assert!(
        list(&s.data_dir().join("spool/tmp")).is_empty(),
        "partial file left in tmp/"
    );
    // Space returns: accepted again.
    let grown = Command::new("mount")
        .args(["-o", "remount,size=8m"])
        .arg(s.data_dir())
        .status()
        .unwrap();
    assert!(grown.success());
    assert!(send_one(s.smtp, "after").starts_with("250 "));
    // Everything acknowledged is delivered once delivery runs.
    s.kill9();
    s.set_tables("[delivery]\nenabled = true\n");
    s.spawn();
    s.wait_for_mail("localhost", "postmaster", accepted + 1);
    s.kill9();
}

#[test]
fn user_add_reads_the_password_from_stdin() {
    use std::io::Write;
    let s = TestServer::default();
    let mut child = Command::new(BIN)
        .args(["user", "add", "dora@localhost", "--config"])
        .arg(s.config_path())
        .arg("--data-dir")
        .arg(s.data_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("added dora@localhost"));
    // The running server accepts her credentials at once.
    let out = run_ok(&mut swaks_submit(
        s.submission,
        "dora@localhost",
        "dora@localhost",
    ));
    assert!(out.contains("235 2.7.0"), "{out}");
    s.wait_for_mail("localhost", "dora", 1);
}

#[test]
fn listening_file_names_the_bound_ports_of_port_0_and_goes_at_a_graceful_stop() {
    let mut s = TestServer::configured("", "");
    s.smtp = 0;
    s.submission = 0;
    s.submissions = 0;
    s.rewrite_config();
    s.spawn();
    // The harness read the ports from the listening file: the system chose them.
    assert!(s.smtp != 0 && s.submission != 0 && s.submissions != 0);
    let listening = s.data_dir().join("listening");
    let roles: Vec<String> = read_listening(&listening, s.pid())
        .unwrap()
        .into_iter()
        .map(|(role, _)| role)
        .collect();
    assert_eq!(roles, ["smtp", "submission", "submissions"]);
    assert!(send_one(s.smtp, "port zero").starts_with("250 2.0.0"));
    assert!(s.terminate().success());
    assert!(
        !listening.exists(),
        "listening file left after a graceful stop"
    );
}

/// An address that would lead outside `mail/` never becomes a path: as an alias target it
/// fails `config check` (naming the alias); as a key of a users file edited by hand it is
/// refused at load, with a warning naming it, so RCPT gets 550 and nothing is written
/// outside the data directory.
#[test]
fn addresses_that_would_climb_out_of_mail_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("alias.toml");
    std::fs::write(
        &bad,
        "domains = [\"localhost\"]\n[aliases]\n\"info@localhost\" = \"\\\"../../../escape\\\"@localhost\"\n",
    )
    .unwrap();
    let out = run_fail(Command::new(BIN).args(["config", "check", bad.to_str().unwrap()]));
    assert!(out.contains("aliases.\"info@localhost\""), "{out}");

    let s = TestServer::default();
    s.add_user("alice@localhost");
    let users_path = s.data_dir().join("users.toml");
    let mut users: toml::Table = std::fs::read_to_string(&users_path)
        .unwrap()
        .parse()
        .unwrap();
    let table = users["users"].as_table_mut().unwrap();
    let hash = table["alice@localhost"].clone();
    table.insert("\"../../../escape\"@localhost".into(), hash);
    std::fs::write(&users_path, toml::to_string(&users).unwrap()).unwrap();
    let mut w = Wire::greeted(s.smtp);
    assert!(w.cmd("MAIL FROM:<a@example.test>").starts_with("250 "));
    let reply = w.cmd("RCPT TO:<\"../../../escape\"@localhost>");
    if reply.starts_with("250 ") {
        assert!(w.cmd("DATA").starts_with("354 "));
        w.send(b"Subject: out\r\n\r\nbody\r\n.\r\n");
        w.reply();
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        !s.dir.path().join("escape").exists(),
        "mail written outside"
    );
    assert!(reply.starts_with("550 "), "{reply}");
    let log = s.log();
    assert!(
        log.contains("users file: user refused") && log.contains("escape"),
        "{log}"
    );
    // The other users are kept.
    assert!(w.cmd("RCPT TO:<alice@localhost>").starts_with("250 "));
}

fn uid_of(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).unwrap().uid()
}

fn mode_of(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).unwrap().mode() & 0o777
}

/// Every entry under `dir` whose mode lets anyone but the owner in, but for `allowed`.
fn open_to_others(dir: &std::path::Path, allowed: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                todo.push(path.clone());
            }
            let name = path.strip_prefix(dir).unwrap().display().to_string();
            if mode_of(&path) & 0o077 != 0 && !allowed.contains(&name.as_str()) {
                found.push(format!("{name} {:o}", mode_of(&path)));
            }
        }
    }
    found
}

/// Started with umask 000, the server (and `kurier user`) still keep everything to their
/// user: the data directory and every directory in it 0700, every file 0600 (but the
/// certificate, public by nature), so no other local user reads queued mail or mailboxes,
/// nor opens and flocks kurier.lock to keep the server from starting.
#[test]
fn files_are_private_whatever_the_umask() {
    let mut s = TestServer::configured("", "[delivery]\nenabled = false\n");
    s.spawn_with_umask("000");
    assert!(send_one(s.smtp, "queued").starts_with("250 "));
    assert_eq!(s.queued().len(), 1);
    s.add_user("alice@localhost");
    assert_eq!(mode_of(&s.data_dir()), 0o700);
    let public = ["tls/cert.pem"];
    assert_eq!(open_to_others(&s.data_dir(), &public), Vec::<String>::new());
    s.kill9();
    s.set_tables("");
    s.spawn_with_umask("000");
    s.wait_for_mail("localhost", "postmaster", 1);
    assert!(s.maildir("localhost", "postmaster").join("cur").is_dir());
    assert_eq!(open_to_others(&s.data_dir(), &public), Vec::<String>::new());
}

/// Run as root on a data directory that belongs to the service user, `kurier user` and
/// `kurier queue` (server down) become that user before touching it: links it planted in
/// place of users.lock and kurier.lock, pointing at a file of root's, lead nowhere. What the
/// commands write belongs to the service user.
#[test]
fn root_run_commands_do_not_follow_links_the_service_user_planted() {
    if !nix_is_root() {
        eprintln!("not root: nothing to become");
        return;
    }
    let s = TestServer::configured("run_as = \"nobody\"", "");
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let data = s.data_dir();
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(nobody.uid.as_raw()), Some(nobody.gid.as_raw())).unwrap();
    let victim = s.dir.path().join("shadow");
    std::fs::write(&victim, "root:$6$secret:19000::::::\n").unwrap();
    std::os::unix::fs::symlink(&victim, data.join("users.lock")).unwrap();
    std::os::unix::fs::symlink(&victim, data.join("kurier.lock")).unwrap();
    // The password file is root's own: read before the switch.
    let pw = s.dir.path().join("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let pw = pw.to_str().unwrap();
    let add = ["user", "add", "alice@localhost", "--password-file", pw];
    let out = s.cli(&add);
    assert!(!out.status.success(), "user add followed users.lock");
    let out = s.cli(&["queue", "hold", "0123456789abcdef01234"]);
    assert!(!out.status.success(), "queue hold followed kurier.lock");
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "root:$6$secret:19000::::::\n"
    );
    assert_eq!(uid_of(&victim), 0);
    assert!(!data.join("users.toml").exists());
    std::fs::remove_file(data.join("users.lock")).unwrap();
    std::fs::remove_file(data.join("kurier.lock")).unwrap();
    let out = s.cli(&add);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["users.toml", "users.lock"] {
        assert_eq!(uid_of(&data.join(f)), nobody.uid.as_raw(), "{f}");
        assert_eq!(mode_of(&data.join(f)), 0o600, "{f}");
    }
}

/// `kurier serve` for a while (it stops on its own if it starts).
fn serve_briefly(s: &TestServer) -> String {
    let out = Command::new("timeout")
        .arg("10")
        .arg(BIN)
        .args(["serve", "--config"])
        .arg(s.config_path())
        .arg("--data-dir")
        .arg(s.data_dir())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the server started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Started as root with `run_as`, the server gives the service user a new or empty data
/// directory (by its descriptor) and nothing else: a directory that is not Kurier's is
/// refused, naming it; a Kurier directory of root's is refused with the one chown to run;
/// files of root's in the service user's own directory stay root's.
#[test]
fn start_as_root_hands_over_no_foreign_files() {
    if !nix_is_root() {
        eprintln!("not root: privilege dropping cannot be exercised here");
        return;
    }
    let mut s = TestServer::configured("run_as = \"nobody\"", "");
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let data = s.data_dir();
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("precious"), "x").unwrap();
    let err = serve_briefly(&s);
    assert!(
        err.contains(&format!("data directory {} is not empty", data.display()))
            && err.contains("nothing of Kurier's"),
        "{err}"
    );
    assert_eq!(uid_of(&data), 0);
    assert_eq!(uid_of(&data.join("precious")), 0);
    std::fs::write(data.join("users.toml"), "").unwrap();
    let err = serve_briefly(&s);
    assert!(
        err.contains(&format!("chown -R nobody: {}", data.display())),
        "{err}"
    );
    assert_eq!(uid_of(&data.join("precious")), 0);
    std::os::unix::fs::chown(&data, Some(nobody.uid.as_raw()), Some(nobody.gid.as_raw())).unwrap();
    s.spawn();
    assert!(send_one(s.smtp, "as nobody").starts_with("250 "));
    s.wait_for_mail("localhost", "postmaster", 1);
    assert_eq!(uid_of(&data.join("precious")), 0);
    assert_eq!(uid_of(&data.join("users.toml")), 0);
    assert_eq!(uid_of(&data.join("spool")), nobody.uid.as_raw());
    assert_eq!(mode_of(&data), 0o700);
}

/// An alias to nobody and an alias loop are configuration errors: `config check` and the
/// server's start refuse them, naming the alias; once the user exists the same config
/// starts; `user del` refuses to remove the user an alias ends at.
#[test]
fn aliases_that_would_lose_mail_are_refused() {
    let aliases = "[aliases]\n\"info@localhost\" = [\"alice@localhost\", \"sales@localhost\"]\n\"sales@localhost\" = \"bob@localhost\"\n";
    let mut s = TestServer::configured("", aliases);
    let (config, data) = (s.config_path(), s.data_dir());
    let check = || {
        let mut c = Command::new(BIN);
        c.args(["--data-dir", data.to_str().unwrap(), "config", "check"]);
        c.arg(&config);
        c
    };
    s.add_user("alice@localhost");
    let out = run_fail(&mut check());
    assert!(out.contains("aliases.\"info@localhost\""), "{out}");
    assert!(
        out.contains("bob@localhost is neither a user nor an alias"),
        "{out}"
    );
    let log = s.try_spawn().unwrap_err();
    assert!(
        log.contains("bob@localhost is neither a user nor an alias"),
        "{log}"
    );

    s.add_user("bob@localhost");
    run_ok(&mut check());
    s.spawn();
    let out = s.cli(&["user", "del", "bob@localhost"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not removing bob@localhost"),
        "{err}"
    );
    assert!(s.data_dir().join("users.toml").exists());
    let users = std::fs::read_to_string(s.data_dir().join("users.toml")).unwrap();
    assert!(users.contains("bob@localhost"), "{users}");

    let dir = tempfile::tempdir().unwrap();
    let looped = dir.path().join("loop.toml");
    std::fs::write(
        &looped,
        "domains = [\"localhost\"]\n[aliases]\n\"a@localhost\" = \"b@localhost\"\n\"b@localhost\" = \"A@localhost\"\n",
    )
    .unwrap();
    let out = run_fail(Command::new(BIN).args(["config", "check", looped.to_str().unwrap()]));
    assert!(
        out.contains("a@localhost → b@localhost → a@localhost"),
        "{out}"
    );
}

/// `config check` refuses what the server would refuse at start: a certificate that does
/// not load, a `run_as` user that does not exist.
#[test]
fn config_check_refuses_what_serve_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let check = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BIN)
            .args(["config", "check"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.success(), text)
    };
    let missing = dir.path().join("missing.pem");
    let (ok, err) = check(
        "tls.toml",
        &format!(
            "[tls]\ncertificate = \"{0}\"\nprivate_key = \"{0}\"\n",
            missing.display()
        ),
    );
    assert!(!ok && err.contains("missing.pem"), "{err}");
    let (ok, err) = check("user.toml", "run_as = \"no-such-kurier-user\"\n");
    assert!(
        !ok && err.contains("no such user \"no-such-kurier-user\""),
        "{err}"
    );
    let (ok, err) = check("root.toml", "run_as = \"root\"\n");
    assert!(!ok && err.contains("unprivileged"), "{err}");
}

/// Commands find the config through `KURIER_CONFIG`, read a relative `data_dir` next to the
/// config file whatever the working directory, and refuse to answer from a data directory
/// that is not there instead of reporting an empty queue.
#[test]
fn commands_find_their_data_directory_or_say_so() {
    let etc = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let config = etc.path().join("kurier.toml");
    std::fs::write(&config, "data_dir = \"data\"\n").unwrap();
    let pw = etc.path().join("pw");
    std::fs::write(&pw, "a long enough password\n").unwrap();
    let kurier = |args: &[&str], with_config: bool| {
        let mut c = Command::new(BIN);
        c.args(args)
            .current_dir(elsewhere.path())
            .env_remove("KURIER_CONFIG");
        if with_config {
            c.env("KURIER_CONFIG", &config);
        }
        c
    };
    let out = run_fail(&mut kurier(&["queue", "list"], false));
    assert!(out.contains("no data directory at ./kurier-data"), "{out}");
    let out = run_fail(&mut kurier(&["user", "list"], false));
    assert!(out.contains("no data directory"), "{out}");
    let out = run_fail(&mut kurier(&["queue", "list"], true));
    assert!(
        out.contains(&format!(
            "no data directory at {}",
            etc.path().join("data").display()
        )),
        "{out}"
    );
    let pw = pw.to_str().unwrap();
    run_ok(&mut kurier(
        &["user", "add", "alice@localhost", "--password-file", pw],
        true,
    ));
    assert!(etc.path().join("data/users.toml").exists());
    assert!(!elsewhere.path().join("kurier-data").exists());
    let out = run_ok(&mut kurier(&["user", "list"], true));
    assert!(out.contains("alice@localhost"), "{out}");
    // Without a config, `user add` does not make a stray ./kurier-data.
    let out = run_fail(&mut kurier(
        &["user", "add", "bob@localhost", "--password-file", pw],
        false,
    ));
    assert!(out.contains("no data directory"), "{out}");
    assert!(!elsewhere.path().join("kurier-data").exists());
}
