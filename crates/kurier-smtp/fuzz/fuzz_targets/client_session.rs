//! The outbound client fed arbitrary server replies: it never panics or loops, and reports
//! exactly one outcome per recipient for each finished transaction.
#![no_main]
use kurier_smtp::client::*;
use kurier_smtp::{Mailbox, ReversePath};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut c = ClientSession::new(ClientConfig {
        helo: "out.fuzz.test".into(),
        tls: TlsPolicy::Opportunistic,
        tls_active: false,
        auth: Some(Credentials {
            username: "u".into(),
            password: "p".into(),
        }),
    });
    let tx = OutboundTransaction {
        from: ReversePath::Mailbox(mailbox("a@fuzz.test")),
        recipients: vec![
            OutboundRecipient {
                address: mailbox("b@fuzz.test"),
                notify: None,
                orcpt: None,
            },
            OutboundRecipient {
                address: mailbox("c@fuzz.test"),
                notify: None,
                orcpt: None,
            },
        ],
        size: 10,
        eight_bit: data.first().is_some_and(|b| b % 2 == 0),
        smtputf8: false,
        ret: None,
        envid: None,
    };
    let mut steps = 0;
    let mut sent = 0;
    for chunk in data.chunks(5) {
        c.receive(chunk);
        while let Some(a) = c.poll_action() {
            steps += 1;
            assert!(steps < 10_000);
            match a {
                // A driver sends a bounded number of messages per connection.
                ClientAction::Ready if sent < 3 => {
                    sent += 1;
                    c.send(&tx);
                }
                ClientAction::StartTls => c.tls_established(),
                ClientAction::Done(r) => assert_eq!(r.rcpts.len(), 2),
                _ => {}
            }
        }
    }
});

fn mailbox(s: &str) -> Mailbox {
    Mailbox::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}
