//! Any address: parsing never panics, and what parses writes out to text that parses back
//! to the same mailbox (quoting round-trips).
#![no_main]
use kurier_smtp::{ForwardPath, Mailbox, ReversePath};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = Mailbox::parse(s) {
        let again =
            Mailbox::parse(&m.to_string()).unwrap_or_else(|e| panic!("{m} does not reparse: {e}"));
        assert_eq!(again, m);
        assert!(!m.to_string().contains(['\r', '\n', '\0']));
    }
    if let Ok(p) = ForwardPath::parse(s) {
        assert_eq!(ForwardPath::parse(&p.to_string()).ok(), Some(p));
    }
    if let Ok(p) = ReversePath::parse(s) {
        assert_eq!(ReversePath::parse(&p.to_string()).ok(), Some(p));
    }
});
