//! The server started in this process through `kurier::server::start`: it binds port 0
//! and hands back the addresses the system chose, so a test (or an application embedding
//! Kurier) needs neither free-port guessing nor the banner.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use kurier::config::Config;
use kurier::data_dir::DataDir;
use kurier_smtp::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_in_process_on_port_0_accepts_and_delivers_mail() {
    let dir = tempfile::tempdir().unwrap();
    let dns = common::dns::TestDns::start(vec![]);
    let text = format!(
        "hostname = \"mx.kurier.test\"\ndomains = [\"localhost\"]\n\
         [[listeners]]\naddress = \"127.0.0.1:0\"\nrole = \"smtp\"\n\
         [[listeners]]\naddress = \"127.0.0.1:0\"\nrole = \"submission\"\n{}",
        dns.config()
    );
    let config = Config::parse(&text).unwrap();
    let data = DataDir::new(dir.path().join("data"));
    let running = kurier::server::start(config, data.clone()).await.unwrap();
    let roles: Vec<Role> = running.addresses.iter().map(|(r, _)| *r).collect();
    assert_eq!(roles, [Role::Smtp, Role::Submission]);
    assert!(running.addresses.iter().all(|(_, a)| a.port() != 0));
    let smtp = running.addresses[0].1.port();
    let reply = tokio::task::spawn_blocking(move || {
        let mut w = Wire::greeted(smtp);
        assert!(w.cmd("MAIL FROM:<a@example.test>").starts_with("250 "));
        assert!(w.cmd("RCPT TO:<postmaster@localhost>").starts_with("250 "));
        assert!(w.cmd("DATA").starts_with("354 "));
        w.send(b"Subject: in process\r\n\r\nbody\r\n.\r\n");
        w.reply()
    })
    .await
    .unwrap();
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    let new = data.root().join("mail/localhost/postmaster/new");
    let mut delivered = 0;
    for _ in 0..200 {
        delivered = std::fs::read_dir(&new).map(|d| d.count()).unwrap_or(0);
        if delivered > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(delivered, 1);
    running.shutdown().await;
    // Stopped means the ports are free again.
    assert!(std::net::TcpStream::connect(("127.0.0.1", smtp)).is_err());
}
