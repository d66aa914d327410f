//! The scheduler with its workers running, against fake peers on loopback (listeners in
//! this process): a silent host that accepts connections and never greets (a blackholed
//! MX), and a minimal SMTP sink that counts what it takes. The clock is fixed, so nothing
//! here waits for a retry time: what moves the mail is the scheduler alone.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kurier_spool::{QueueId, Store};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::tests::{Rig, rig_configured};
use super::{DeliveryHandle, start};
use crate::config::{Config, RouteConfig, TlsMode};

/// What a fake peer saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    data_started: AtomicUsize,
    taken: AtomicUsize,
    quits: AtomicUsize,
}

/// A host that accepts and never says a word; connections are held open.
async fn silent() -> (u16, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let counted = seen.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            counted.connections.fetch_add(1, Ordering::SeqCst);
            held.push(c);
        }
    });
    (port, seen)
}

/// A plaintext SMTP server that takes every message, answering its final dot after
/// `hold`.
async fn sink(hold: Duration) -> (u16, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let counted = seen.clone();
    tokio::spawn(async move {
        while let Ok((c, _)) = listener.accept().await {
            counted.connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(c, counted.clone(), hold));
        }
    });
    (port, seen)
}

async fn serve(c: tokio::net::TcpStream, seen: Arc<Seen>, hold: Duration) {
    let (r, mut w) = c.into_split();
    let mut lines = BufReader::new(r).lines();
    let _ = w.write_all(b"220 sink.test ESMTP\r\n").await;
    while let Ok(Some(line)) = lines.next_line().await {
        let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" | "HELO" => b"250 sink.test\r\n",
            "DATA" => {
                let _ = w.write_all(b"354 go on\r\n").await;
                seen.data_started.fetch_add(1, Ordering::SeqCst);
                while let Ok(Some(l)) = lines.next_line().await {
                    if l == "." {
                        break;
                    }
                }
                tokio::time::sleep(hold).await;
                seen.taken.fetch_add(1, Ordering::SeqCst);
                b"250 2.0.0 taken\r\n"
            }
            "QUIT" => {
                seen.quits.fetch_add(1, Ordering::SeqCst);
                let _ = w.write_all(b"221 2.0.0 bye\r\n").await;
                return;
            }
            _ => b"250 2.0.0 ok\r\n",
        };
        if w.write_all(reply).await.is_err() {
            return;
        }
    }
}

fn route(domain: &str, port: u16) -> RouteConfig {
    RouteConfig {
        domains: vec![domain.into()],
        host: Some("127.0.0.1".into()),
        port,
        tls: TlsMode::None,
        ca_file: None,
        username: None,
        password: None,
    }
}

/// Two workers, one connection per destination, a 10-minute remote timeout.
fn rig_for(routes: Vec<RouteConfig>) -> Rig {
    rig_configured(None, |c: &mut Config| {
        c.routes = routes;
        c.delivery.workers = 2;
        c.delivery.per_destination = 1;
        c.delivery.remote_timeout = Duration::from_secs(600);
    })
}

struct Running {
    handle: DeliveryHandle,
    stop: CancellationToken,
    tracker: TaskTracker,
}

fn run(rig: &mut Rig) -> Running {
    let (stop, tracker) = (CancellationToken::new(), TaskTracker::new());
    let handle = start(rig.setup.take().unwrap(), stop.clone(), &tracker);
    Running {
        handle,
        stop,
        tracker,
    }
}

impl Running {
    fn submit(&self, rig: &Rig, to: &str) -> QueueId {
        let id = rig.queue("alice@kurier.test", &[(to, None)]);
        self.handle.submit(rig.store.envelope(&id).unwrap(), None);
        id
    }

    /// Stops as the server does at shutdown; true when every worker ended within 5 s.
    async fn stop(self) -> bool {
        self.stop.cancel();
        self.tracker.close();
        tokio::time::timeout(Duration::from_secs(5), self.tracker.wait())
            .await
            .is_ok()
    }
}

/// Waits (bounded: 10 s) until `what` holds.
async fn until(what: impl Fn() -> bool) -> bool {
    for _ in 0..200 {
        if what() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    what()
}

fn attempts(rig: &Rig, id: &QueueId) -> (u32, bool) {
    let r = &rig.store.envelope(id).unwrap().recipients[0];
    (r.attempts, r.is_pending())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_destination_holds_its_own_slot_only_and_stopping_leaves_its_mail_untried() {
    let (dead_port, dead) = silent().await;
    let (live_port, live) = sink(Duration::ZERO).await;
    let mut rig = rig_for(vec![
        route("dead.test", dead_port),
        route("live.test", live_port),
    ]);
    let running = run(&mut rig);
    let stuck: Vec<QueueId> = (0..3)
        .map(|i| running.submit(&rig, &format!("d{i}@dead.test")))
        .collect();
    assert!(until(|| dead.connections.load(Ordering::SeqCst) == 1).await);
    for i in 0..5 {
        running.submit(&rig, &format!("l{i}@live.test"));
    }
    assert!(
        until(|| live.taken.load(Ordering::SeqCst) == 5).await,
        "the live destination's mail waits behind the dead one"
    );
    assert_eq!(dead.connections.load(Ordering::SeqCst), 1, "one slot only");
    // Stopping gives up the connection still waiting for a greeting: the workers end at
    // once (not after the 10-minute timeout) and nothing counts as an attempt.
    assert!(running.stop().await, "the workers did not stop");
    for id in &stuck {
        assert_eq!(attempts(&rig, id), (0, true));
    }
    // The live destination's pooled connection was closed with QUIT.
    assert!(until(|| live.quits.load(Ordering::SeqCst) == 1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_under_way_at_stop_finishes_and_its_result_is_kept() {
    let (port, seen) = sink(Duration::from_millis(1500)).await;
    let mut rig = rig_for(vec![route("slow.test", port)]);
    let running = run(&mut rig);
    let id = running.submit(&rig, "x@slow.test");
    assert!(until(|| seen.data_started.load(Ordering::SeqCst) == 1).await);
    // The message is on the wire, its reply 1.5 s away: stopping now must wait for it and
    // record it, or the restart would send the message a second time.
    assert!(running.stop().await, "the workers did not stop");
    assert_eq!(seen.taken.load(Ordering::SeqCst), 1);
    // Delivered: it left the queue, and no report was made.
    assert!(rig.store.envelope(&id).is_err(), "still queued");
    assert!(rig.store.all().is_empty());
    // Its connection came back after the pool was closed: it got its QUIT too.
    assert_eq!(seen.quits.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_stop_nothing_new_starts() {
    let (port, seen) = sink(Duration::ZERO).await;
    let mut rig = rig_for(vec![route("live.test", port)]);
    let running = run(&mut rig);
    running.stop.cancel();
    let handle = running.handle.clone();
    let id = running.submit(&rig, "late@live.test");
    assert!(running.stop().await);
    drop(handle);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 0);
    assert_eq!(attempts(&rig, &id), (0, true));
}
