//! Test harness: runs the real `kurier` binary on free loopback ports with its own data
//! directory, and talks to it with raw sockets or with real clients (swaks, python3, curl).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod dns;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_kurier");
pub const PASSWORD: &str = "correct horse battery";

pub struct TestServer {
    pub dir: tempfile::TempDir,
    /// The smtp listener's address (127.0.0.1 and a free port unless chosen).
    pub smtp_ip: std::net::IpAddr,
    pub smtp: u16,
    pub submission: u16,
    pub submissions: u16,
    child: Option<Child>,
    top: String,
    tables: String,
    /// A DNS server of its own (an empty zone) unless the test brings one.
    own_dns: Option<dns::TestDns>,
}

/// Distinct free ports: all sockets are held until every port is known, so the same port
/// cannot come back twice.
pub fn free_ports<const N: usize>() -> [u16; N] {
    // Below Linux's ephemeral range (32768 and up): no outgoing connection and no bind to
    // port 0 is ever given these ports, so nothing takes one between this check and the
    // server's bind. A start derived from the process id keeps test processes apart; all
    // N are held at once.
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = std::process::id().wrapping_mul(7919);
    for _ in 0..1000 {
        let n = NEXT.fetch_add(N as u32, Ordering::SeqCst);
        let base = 20_000 + (offset.wrapping_add(n) % (12_000 - N as u32)) as u16;
        let held: Vec<TcpListener> = (0..N as u16)
            .filter_map(|i| TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == N {
            return std::array::from_fn(|i| held[i].local_addr().unwrap().port());
        }
    }
    panic!("no free ports for a test server");
}

impl TestServer {
    /// Starts a server. `top` holds top-level keys, `tables` extra TOML tables. If one of
    /// its ports was taken meanwhile (by anything else on the machine), it starts over on
    /// other ports.
    pub fn start(top: &str, tables: &str) -> TestServer {
        for _ in 0..3 {
            let mut s = Self::configured(top, tables);
            match s.try_spawn() {
                Ok(()) => return s,
                Err(log) if log.contains("Address already in use") => continue,
                Err(log) => panic!("server did not start:\n{log}"),
            }
        }
        panic!("no free ports for a test server after three tries");
    }

    /// Writes the config but does not start the server (for tests that prepare the data
    /// directory first).
    pub fn configured(top: &str, tables: &str) -> TestServer {
        let [smtp, submission, submissions] = free_ports::<3>();
        let s = TestServer {
            dir: tempfile::tempdir().unwrap(),
            smtp_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            smtp,
            submission,
            submissions,
            child: None,
            top: top.to_string(),
            tables: tables.to_string(),
            own_dns: (!tables.contains("[dns]")).then(|| dns::TestDns::start(vec![])),
        };
        s.write_config();
        s
    }

    /// Starts a server whose smtp listener is on `ip:port` (e.g. an MX on port 25).
    pub fn start_at(ip: std::net::IpAddr, port: u16, top: &str, tables: &str) -> TestServer {
        let mut s = Self::configured(top, tables);
        s.smtp_ip = ip;
        s.smtp = port;
        s.write_config();
        s.spawn();
        s
    }

    pub fn default() -> TestServer {
        Self::start("", "")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("kurier.toml")
    }

    /// Replaces the extra tables (e.g. to turn delivery back on) for the next start.
    pub fn set_tables(&mut self, tables: &str) {
        self.tables = tables.to_string();
        self.write_config();
    }

    /// Writes the config again after a test changed the ports or the address.
    pub fn rewrite_config(&self) {
        self.write_config();
    }

    fn write_config(&self) {
        let mut defaults = String::new();
        if !self.top.contains("hostname =") {
            defaults.push_str("hostname = \"mx.kurier.test\"\n");
        }
        if !self.top.contains("domains =") {
            defaults.push_str("domains = [\"localhost\", \"kurier.test\"]\n");
        }
        // Tests never reach the machine's resolver (or any non-loopback address): without a
        // test DNS server of its own, each server gets an empty zone on loopback.
        let mut dns = self
            .own_dns
            .as_ref()
            .map(|d| d.config())
            .unwrap_or_default();
        // Tests send from loopback and expect sender authentication (the default exempts
        // loopback), unless the test sets its own table.
        if !self.tables.contains("[authentication]") {
            dns.push_str("[authentication]\nexempt_networks = []\n");
        }
        let text = format!(
            "{defaults}{top}\n\
             [[listeners]]\naddress = \"{}:{}\"\nrole = \"smtp\"\n\
             [[listeners]]\naddress = \"127.0.0.1:{}\"\nrole = \"submission\"\n\
             [[listeners]]\naddress = \"127.0.0.1:{}\"\nrole = \"submissions\"\n{dns}{tables}\n",
            self.smtp_ip,
            self.smtp,
            self.submission,
            self.submissions,
            top = self.top,
            tables = self.tables
        );
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// Starts the binary and waits (bounded) for its ready banner.
    pub fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("server did not start:\n{log}");
        }
    }

    /// Starts the binary and waits (bounded) until it has written its listening file (the
    /// process id and the bound addresses); on failure, the log.
    pub fn try_spawn(&mut self) -> Result<(), String> {
        self.try_spawn_with(Command::new(BIN))
    }

    /// Starts the binary from `sh` with `umask MASK` (e.g. "000"), to see what it creates
    /// whatever umask it inherits.
    pub fn spawn_with_umask(&mut self, mask: &str) {
        let mut sh = Command::new("sh");
        sh.args(["-c", "umask \"$0\" && exec \"$@\"", mask, BIN]);
        if let Err(log) = self.try_spawn_with(sh) {
            panic!("server did not start:\n{log}");
        }
    }

    /// `try_spawn` with the command that runs the binary (`sh … exec` keeps the process id).
    fn try_spawn_with(&mut self, mut command: Command) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        // A file left by a server killed with SIGKILL names another process.
        let listening = self.data_dir().join("listening");
        let _ = std::fs::remove_file(&listening);
        let child = command
            .args(["serve", "--config"])
            .arg(self.config_path())
            .arg("--data-dir")
            .arg(self.data_dir())
            .env("KURIER_LOG", "debug")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(addresses) = read_listening(&listening, pid) {
                for (role, address) in addresses {
                    match role.as_str() {
                        "smtp" => (self.smtp_ip, self.smtp) = (address.ip(), address.port()),
                        "submission" => self.submission = address.port(),
                        "submissions" => self.submissions = address.port(),
                        _ => {}
                    }
                }
                return Ok(());
            }
            let exited = self.child.as_mut().unwrap().try_wait().unwrap().is_some();
            if exited {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
        Err(self.log())
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        signal(c.id(), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs a `kurier` subcommand against this server's config and data directory.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(self.config_path())
            .arg("--data-dir")
            .arg(self.data_dir())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    pub fn add_user(&self, address: &str) {
        let pw = self.dir.path().join("pw");
        std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
        let out = self.cli(&[
            "user",
            "add",
            address,
            "--password-file",
            pw.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "user add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn maildir(&self, domain: &str, user: &str) -> PathBuf {
        self.data_dir().join("mail").join(domain).join(user)
    }

    /// Waits (bounded) until the mailbox has `count` messages in new/; returns them in
    /// file-name order.
    pub fn wait_for_mail(&self, domain: &str, user: &str, count: usize) -> Vec<Vec<u8>> {
        self.wait_for_files(&self.maildir(domain, user), count)
    }

    /// The same for the mailbox's Junk folder (Maildir++ `.Junk`).
    pub fn wait_for_junk(&self, domain: &str, user: &str, count: usize) -> Vec<Vec<u8>> {
        self.wait_for_files(&self.maildir(domain, user).join(".Junk"), count)
    }

    fn wait_for_files(&self, maildir: &Path, count: usize) -> Vec<Vec<u8>> {
        let new = maildir.join("new");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let files = list(&new);
            if files.len() >= count {
                assert_eq!(
                    files.len(),
                    count,
                    "more messages than expected in {}",
                    new.display()
                );
                return files.iter().map(|f| std::fs::read(f).unwrap()).collect();
            }
            assert!(
                Instant::now() < deadline,
                "{} has {} message(s), expected {count}\n{}",
                new.display(),
                files.len(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Files in the queue directory.
    pub fn queued(&self) -> Vec<PathBuf> {
        list(&self.data_dir().join("spool/queue"))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The roles and addresses in a server's listening file, once it is complete and written
/// by process `pid`.
pub fn read_listening(path: &Path, pid: u32) -> Option<Vec<(String, std::net::SocketAddr)>> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    if lines.next()? != format!("pid {pid}") {
        return None;
    }
    lines
        .map(|l| {
            let (role, address) = l.split_once(' ')?;
            Some((role.to_string(), address.parse().ok()?))
        })
        .collect()
}

pub fn list(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
    nix::sys::signal::kill(pid, sig).unwrap();
}

/// Splits a delivered Maildir file into (Return-Path and Delivered-To lines, the trace
/// headers this server added: Received and, for checked mail, Authentication-Results, the
/// rest). The rest must equal the sent message byte for byte (with LF line ends).
pub fn split_delivered(file: &[u8]) -> (String, String, Vec<u8>) {
    let mut lines = file.split_inclusive(|&b| b == b'\n');
    let mut trace = String::new();
    for _ in 0..2 {
        trace.push_str(std::str::from_utf8(lines.next().unwrap()).unwrap());
    }
    let mut received = String::new();
    let mut consumed = trace.len();
    for line in lines {
        let l = std::str::from_utf8(line).unwrap_or("");
        let starts_ours = received.is_empty() && l.starts_with("Received: ")
            || received.starts_with("Received: ")
                && !received.contains("Authentication-Results: ")
                && l.starts_with("Authentication-Results: ");
        if starts_ours || !received.is_empty() && l.starts_with('\t') {
            received.push_str(l);
            consumed += line.len();
        } else {
            break;
        }
    }
    (trace, received, file[consumed..].to_vec())
}

/// CRLF → LF, as Maildir stores messages.
pub fn lf(message: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(message)
        .replace("\r\n", "\n")
        .into_bytes()
}

/// A raw SMTP connection for wire-level tests.
pub struct Wire {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    pub fn connect(port: u16) -> Wire {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        Wire {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, data: &[u8]) {
        self.stream.write_all(data).unwrap();
    }

    /// Reads one complete reply (all its lines); empty string on EOF.
    pub fn reply(&mut self) -> String {
        let mut out = String::new();
        loop {
            let line = match self.line() {
                Some(l) => l,
                None => return out,
            };
            out.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return out;
            }
        }
    }

    fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let l: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(String::from_utf8_lossy(&l).to_string());
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Sends a command line and returns the reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Connects, reads the greeting and says EHLO.
    pub fn greeted(port: u16) -> Wire {
        let mut w = Wire::connect(port);
        assert!(w.reply().starts_with("220 "));
        assert!(w.cmd("EHLO client.test").starts_with("250-"));
        w
    }
}

/// Runs a command (a real client); returns whether it succeeded and everything it printed.
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs a command that must succeed; returns its output.
pub fn run_ok(cmd: &mut Command) -> String {
    let (ok, text) = run(cmd);
    assert!(ok, "{cmd:?} failed:\n{text}");
    text
}

/// Runs a command that must fail; returns its output.
pub fn run_fail(cmd: &mut Command) -> String {
    let (ok, text) = run(cmd);
    assert!(!ok, "{cmd:?} unexpectedly succeeded:\n{text}");
    text
}

/// A fresh loopback address per call (127.0.X.Y), so tests running in parallel can each have
/// their own port 25.
pub fn next_loopback() -> std::net::Ipv4Addr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) + std::process::id() % 97 * 50;
    std::net::Ipv4Addr::new(127, 0, 10 + (n / 250 % 200) as u8, (n % 250 + 1) as u8)
}

/// Waits (bounded) until something accepts connections on `addr`.
pub fn wait_listening(addr: std::net::SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "nothing listening on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SPF results by their RFC 7208 names, for comparisons with other implementations.
pub fn spf_result_name(r: mail_auth::SpfResult) -> &'static str {
    use mail_auth::SpfResult::*;
    match r {
        Pass => "pass",
        Fail => "fail",
        SoftFail => "softfail",
        Neutral => "neutral",
        TempError => "temperror",
        PermError => "permerror",
        None => "none",
    }
}

/// Helper scripts for the peers (receiver, DSN parser).
pub const PEERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers");

/// The scripted receiver (see tests/peers/receiver.py).
pub struct Receiver {
    child: Child,
    pub dir: tempfile::TempDir,
}

impl Receiver {
    pub fn start(ip: std::net::Ipv4Addr) -> Receiver {
        Receiver::start_on(std::net::IpAddr::V4(ip), 25, false)
    }

    /// On any address and port; with `refuse_mail`, MAIL FROM gets 550 5.7.1.
    pub fn start_on(ip: std::net::IpAddr, port: u16, refuse_mail: bool) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("/usr/bin/python3")
            .arg(format!("{PEERS}/receiver.py"))
            .args([ip.to_string(), port.to_string()])
            .arg(dir.path())
            .args(refuse_mail.then_some("refuse-mail"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_listening(std::net::SocketAddr::new(ip, port));
        Receiver { child, dir }
    }

    /// Waits (bounded) for `n` saved messages; returns (envelope, content) oldest first.
    pub fn wait_messages(&self, n: usize) -> Vec<(serde_json::Value, Vec<u8>)> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let emls: Vec<PathBuf> = list(self.dir.path())
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "eml"))
                .collect();
            if emls.len() >= n {
                return emls
                    .iter()
                    .map(|p| {
                        let env: serde_json::Value = serde_json::from_slice(
                            &std::fs::read(p.with_extension("json")).unwrap(),
                        )
                        .unwrap();
                        (env, std::fs::read(p).unwrap())
                    })
                    .collect();
            }
            assert!(
                Instant::now() < deadline,
                "receiver got {} message(s), expected {n}",
                emls.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// swaks submitting as `user` (also the envelope sender) over STARTTLS with AUTH PLAIN.
pub fn swaks_submit(port: u16, user: &str, to: &str) -> Command {
    let mut c = Command::new("swaks");
    c.args([
        "--server",
        &format!("127.0.0.1:{port}"),
        "--timeout",
        "20",
        "--tls",
        "--auth",
        "PLAIN",
    ])
    .args([
        "--auth-user",
        user,
        "--auth-password",
        PASSWORD,
        "--from",
        user,
        "--to",
        to,
    ]);
    c
}
