//! Whatever a damaged disk holds, decoding a queue file never panics, and what it accepts
//! is written back and read again unchanged.
#![no_main]

use kurier_spool::{decode_queue_file, encode_queue_file};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((envelope, body_start)) = decode_queue_file(data) {
        let body = &data[body_start..];
        assert_eq!(body.len() as u64, envelope.size);
        let again = encode_queue_file(&envelope, body).expect("an accepted envelope encodes");
        let (decoded, start) = decode_queue_file(&again).expect("what we write we read");
        assert_eq!(decoded, envelope);
        assert_eq!(&again[start..], body);
    }
});
