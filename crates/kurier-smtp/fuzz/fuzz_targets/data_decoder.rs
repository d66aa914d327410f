//! The DATA stream in arbitrary pieces decodes exactly like the whole stream, and a
//! message that decodes cleanly never contains a bare CR or LF.
#![no_main]
use kurier_smtp::data::{DataDecoder, Framing};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    // First byte: piece size; the rest, mapped onto an alphabet rich in CR, LF and dots.
    let piece = usize::from(data[0] % 16) + 1;
    let input: Vec<u8> = data[1..]
        .iter()
        .map(|b| b"\r\n.\r\n.ab\r\n"[usize::from(b % 10)])
        .collect();
    let whole = {
        let mut d = DataDecoder::new(Framing::Dot, 4096);
        let fed = d.feed(&input);
        (fed.consumed, fed.complete, d.finish())
    };
    let mut d = DataDecoder::new(Framing::Dot, 4096);
    let mut consumed = 0;
    let mut complete = false;
    for chunk in input.chunks(piece) {
        let fed = d.feed(chunk);
        consumed += fed.consumed;
        if fed.complete {
            complete = true;
            break;
        }
    }
    let pieces = (consumed, complete, d.finish());
    assert_eq!(whole, pieces);
    if let (_, true, Ok(body)) = &whole {
        for (i, &b) in body.iter().enumerate() {
            if b == b'\n' {
                assert!(
                    i > 0 && body[i - 1] == b'\r',
                    "bare LF in an accepted message"
                );
            }
            if b == b'\r' {
                assert!(
                    body.get(i + 1) == Some(&b'\n'),
                    "bare CR in an accepted message"
                );
            }
        }
    }
});
