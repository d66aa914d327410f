//! Any command line: parsing never panics, and every refusal is a well-formed reply.
#![no_main]
use kurier_smtp::command::parse_command;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = parse_command(data) {
        let r = e.reply();
        assert!(r.is_permanent() && r.enhanced.is_some());
        let wire = r.to_bytes();
        assert!(wire.ends_with(b"\r\n") && wire.iter().filter(|&&b| b == b'\n').count() == 1);
    }
});
