//! The client's DATA encoder, on any bytes at all: it never sends a bare CR or LF (RFC 5321
//! §2.3.8), the data ends exactly once, at its end, and the receiving decoder gets back the
//! message with its line ends normalised; given in pieces, it encodes the same.
#![no_main]
use kurier_smtp::data::{DataDecoder, DotStuffer, Framing, dot_stuff};
use libfuzzer_sys::fuzz_target;

/// The message with every CR, LF or CRLF made one CRLF, and a final CRLF.
fn normalised(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'\r' || data[i] == b'\n' {
            if data[i] == b'\r' && data.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
            out.extend_from_slice(b"\r\n");
        } else {
            out.push(data[i]);
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // Half the inputs mapped onto an alphabet rich in CR, LF and dots.
    let input: Vec<u8> = if data.first().is_some_and(|b| b % 2 == 0) {
        data.iter().map(|b| b"\r\n.\r\n.ab\r\n"[usize::from(b % 10)]).collect()
    } else {
        data.to_vec()
    };
    let out = dot_stuff(&input);
    // In pieces (as a message read from its file is sent), the same octets.
    let mut pieces = Vec::new();
    let mut stuffer = DotStuffer::default();
    let step = usize::from(data.get(1).copied().unwrap_or(1)).max(1);
    for piece in input.chunks(step) {
        stuffer.push(piece, &mut pieces);
    }
    stuffer.finish(&mut pieces);
    assert_eq!(pieces, out, "pieces of {step} encode differently");
    for (i, &b) in out.iter().enumerate() {
        if b == b'\r' {
            assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR sent");
        }
        if b == b'\n' {
            assert!(i > 0 && out[i - 1] == b'\r', "bare LF sent");
        }
    }
    assert!(out.ends_with(b".\r\n"));
    let end = out.windows(5).position(|w| w == b"\r\n.\r\n");
    if out.len() > 3 {
        assert_eq!(end, Some(out.len() - 5), "the data ends early");
    }
    let mut d = DataDecoder::new(Framing::Dot, u64::MAX);
    let fed = d.feed(&out);
    assert!(fed.complete && fed.consumed == out.len());
    if let Ok(body) = d.finish() {
        assert_eq!(body, normalised(&input));
    }
});
