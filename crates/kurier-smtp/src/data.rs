//! The message stream after DATA or BDAT: line-ending strictness, dot-unstuffing, limits.
//!
//! RFC 5321 §4.1.1.4: the message ends with the line `.` alone, i.e. `<CRLF>.<CRLF>`; lines that
//! begin with a dot have it doubled by the client (§4.5.2) and the first dot is removed here.
//! RFC 5321 §2.3.8: lines end with CRLF only. A bare LF or bare CR is never taken as a line end,
//! so `\n.\n`, `\r\n.\n` or `\r.\r` cannot end the message early: that is the SMTP smuggling
//! class (CVE-2023-51764 and siblings), where servers disagreeing on the end of DATA let one
//! message hide another. A message containing a bare CR or LF is refused outright, because a
//! later hop could read it differently.
//!
//! The decoder works on arbitrary chunks (a line may be split across reads) and keeps no more
//! than the decoded message, which it stops growing once the size limit is passed.

use crate::reply::{Reply, codes};

/// RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets including the CRLF.
pub const MAX_TEXT_LINE: usize = 1000;

/// Which framing the stream uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// DATA: dot-stuffed, ends at `<CRLF>.<CRLF>`.
    Dot,
    /// BDAT: length-delimited chunks, no dot handling (RFC 3030).
    Chunked,
}

/// A defect found in the message; the message is refused at its end with this reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDefect {
    /// A LF not preceded by CR.
    BareLf,
    /// A CR not followed by LF.
    BareCr,
    /// A line longer than [`MAX_TEXT_LINE`].
    LineTooLong,
    /// More octets than the configured maximum message size.
    TooBig,
}

impl DataDefect {
    /// The reply refusing a message with this defect.
    pub fn reply(self, max_size: u64) -> Reply {
        match self {
            DataDefect::BareLf => Reply::new(
                550,
                codes::MEDIA,
                "Message refused: bare LF in message data; lines must end with CRLF (RFC 5321 section 2.3.8)",
            ),
            DataDefect::BareCr => Reply::new(
                550,
                codes::MEDIA,
                "Message refused: bare CR in message data; lines must end with CRLF (RFC 5321 section 2.3.8)",
            ),
            DataDefect::LineTooLong => Reply::new(
                500,
                codes::SYNTAX,
                "Line too long: message text lines are limited to 1000 octets (RFC 5321 section 4.5.3.1.6)",
            ),
            DataDefect::TooBig => Reply::new(
                552,
                codes::TOO_BIG,
                format!("Message size exceeds fixed maximum message size of {max_size} octets"),
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line.
    LineStart,
    /// A line started with a dot (DATA framing only); the dot is held back.
    Dot,
    /// `.` then CR at the start of a line: LF here ends the message.
    DotCr,
    /// Inside a line.
    InLine,
    /// A CR inside a line: LF here ends the line.
    Cr,
}

/// Incremental decoder for the message stream. Feed it chunks with [`DataDecoder::feed`].
#[derive(Debug, Clone)]
pub struct DataDecoder {
    framing: Framing,
    state: State,
    line_len: usize,
    max_size: u64,
    size: u64,
    body: Vec<u8>,
    /// Octets of the message handed out by [`DataDecoder::take_beyond`].
    taken: u64,
    defect: Option<DataDefect>,
}

/// What [`DataDecoder::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// How many input octets were used. Octets after the end of DATA belong to the next command.
    pub consumed: usize,
    /// True when `<CRLF>.<CRLF>` was seen (DATA framing only).
    pub complete: bool,
}

impl DataDecoder {
    /// A decoder that refuses messages over `max_size` octets (after unstuffing).
    pub fn new(framing: Framing, max_size: u64) -> Self {
        DataDecoder {
            framing,
            state: State::LineStart,
            line_len: 0,
            max_size,
            size: 0,
            body: Vec::new(),
            taken: 0,
            defect: None,
        }
    }

    /// Hands out the decoded octets past the first `keep` of the message, so that the
    /// driver can write a large message to disk while it arrives and hold only its start
    /// (where the header section is) in memory. The message [`DataDecoder::finish`] returns
    /// is then the first `keep` octets followed by what was decoded after the last take;
    /// the octets handed out go between them.
    pub fn take_beyond(&mut self, keep: usize) -> Vec<u8> {
        if self.body.len() <= keep || self.defect.is_some() {
            return Vec::new();
        }
        let tail = self.body.split_off(keep);
        self.taken += tail.len() as u64;
        tail
    }

    /// Octets handed out by [`DataDecoder::take_beyond`] so far.
    pub fn taken(&self) -> u64 {
        self.taken
    }

    /// Octets of message counted so far, including those dropped after the limit.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Octets of message held in memory now (none once the message is refused).
    pub fn held(&self) -> usize {
        self.body.len()
    }

    /// The first defect found, if any.
    pub fn defect(&self) -> Option<DataDefect> {
        self.defect
    }

    /// Decodes a chunk. With DATA framing it stops right after the terminating `.CRLF`.
    pub fn feed(&mut self, input: &[u8]) -> Fed {
        let mut i = 0;
        while i < input.len() {
            // Inside a line, everything up to the next CR or LF is plain content: take it in
            // one step, short of the octet that would break the line or size limit (which
            // the octet-by-octet path below then reports).
            if self.state == State::InLine {
                let n = self.plain_run(&input[i..]);
                if n > 0 {
                    if self.defect.is_none() {
                        self.body.extend_from_slice(&input[i..i + n]);
                    }
                    self.size += n as u64;
                    self.line_len += n;
                    i += n;
                    continue;
                }
            }
            let b = input[i];
            i += 1;
            self.line_len += 1;
            if self.line_len > MAX_TEXT_LINE {
                self.flag(DataDefect::LineTooLong);
            }
            match self.state {
                State::LineStart if b == b'.' && self.framing == Framing::Dot => {
                    self.state = State::Dot;
                }
                State::Dot if b == b'\r' => self.state = State::DotCr,
                State::DotCr if b == b'\n' => {
                    self.state = State::LineStart;
                    self.line_len = 0;
                    return Fed {
                        consumed: i,
                        complete: true,
                    };
                }
                State::DotCr => {
                    // ".\r" followed by something else: the CR was bare. The dot was a
                    // stuffing dot (removed), the CR is kept as content.
                    self.flag(DataDefect::BareCr);
                    self.push(b'\r');
                    self.content(b);
                }
                State::Cr if b == b'\n' => {
                    self.push(b'\r');
                    self.push(b'\n');
                    self.state = State::LineStart;
                    self.line_len = 0;
                }
                State::Cr => {
                    self.flag(DataDefect::BareCr);
                    self.push(b'\r');
                    self.content(b);
                }
                // LineStart (non-dot), Dot (first dot removed), InLine.
                _ => self.content(b),
            }
        }
        Fed {
            consumed: input.len(),
            complete: false,
        }
    }

    /// Ends a BDAT message: a final line without CRLF gets one (RFC 3030 leaves the message
    /// to the client, RFC 5322 wants it to end in CRLF). Returns the message or its defect.
    pub fn finish(mut self) -> Result<Vec<u8>, DataDefect> {
        if self.framing == Framing::Chunked {
            match self.state {
                State::Cr => {
                    self.flag(DataDefect::BareCr);
                }
                State::InLine => {
                    self.push(b'\r');
                    self.push(b'\n');
                }
                _ => {}
            }
        }
        match self.defect {
            Some(d) => Err(d),
            None => Ok(self.body),
        }
    }

    /// How many octets at the start of `rest` are plain line content: no CR or LF, within
    /// the line length limit and, while the message is still kept, within the size limit.
    fn plain_run(&self, rest: &[u8]) -> usize {
        let run = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
        let line_room = MAX_TEXT_LINE.saturating_sub(self.line_len);
        let mut n = run.min(line_room);
        if self.defect.is_none() {
            let size_room = self.max_size.saturating_sub(self.size);
            n = n.min(usize::try_from(size_room).unwrap_or(usize::MAX));
        }
        n
    }

    /// One octet of line content (not a line end).
    fn content(&mut self, b: u8) {
        match b {
            b'\r' => self.state = State::Cr,
            b'\n' => {
                // A bare LF: content, never a line end, so it cannot start a "." line.
                self.flag(DataDefect::BareLf);
                self.push(b);
                self.state = State::InLine;
            }
            _ => {
                self.push(b);
                self.state = State::InLine;
            }
        }
    }

    fn push(&mut self, b: u8) {
        self.size += 1;
        if self.size > self.max_size {
            self.flag(DataDefect::TooBig);
        } else if self.defect.is_none() {
            self.body.push(b);
        }
    }

    fn flag(&mut self, d: DataDefect) {
        if self.defect.is_none() {
            self.defect = Some(d);
            // The message will be refused: keep no more of it.
            self.body = Vec::new();
        }
    }
}

/// Dot-stuffs a message for sending with DATA (RFC 5321 §4.5.2): the inverse of the decoder,
/// used by the SMTP client and by tests.
///
/// Line ends are normalised on the way out, so that nothing a caller passes can be sent as
/// a bare CR or LF (RFC 5321 §2.3.8) or end the data early: a CR or LF that is not part of
/// a CRLF becomes CRLF, and a missing final CRLF is added. (Mail accepted by the decoder has
/// none of these; the rule holds by construction for anything else, such as reports.)
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 8);
    let mut stuffer = DotStuffer::default();
    stuffer.push(message, &mut out);
    stuffer.finish(&mut out);
    out
}

/// [`dot_stuff`] for a message given in pieces (read from a file while it is sent): the
/// same output whatever the pieces, with the same guarantees.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    at_line_start: bool,
    /// A CR at the end of the last piece: a line end, with or without the LF to come.
    pending_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            at_line_start: true,
            pending_cr: false,
        }
    }
}

impl DotStuffer {
    /// Encodes the next piece of the message into `out`. Runs of text without CR or LF are
    /// copied in one step; only line ends and a dot starting a line are looked at.
    pub fn push(&mut self, piece: &[u8], out: &mut Vec<u8>) {
        out.reserve(piece.len() + 8);
        let mut rest = piece;
        while let Some((&first, _)) = rest.split_first() {
            if self.pending_cr {
                self.pending_cr = false;
                out.extend_from_slice(b"\r\n");
                self.at_line_start = true;
                if first == b'\n' {
                    rest = &rest[1..];
                    continue;
                }
            }
            match first {
                b'\r' => {
                    self.pending_cr = true;
                    rest = &rest[1..];
                }
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    self.at_line_start = true;
                    rest = &rest[1..];
                }
                _ => {
                    // RFC 5321 §4.5.2: a line starting with a dot gets one more.
                    if self.at_line_start && first == b'.' {
                        out.push(b'.');
                    }
                    let end = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
                    out.extend_from_slice(&rest[..end]);
                    self.at_line_start = false;
                    rest = &rest[end..];
                }
            }
        }
    }

    /// Ends the message: its last line end, then the end of data.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self.pending_cr || !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(input: &[u8]) -> (Result<Vec<u8>, DataDefect>, Fed) {
        let mut d = DataDecoder::new(Framing::Dot, 1 << 20);
        let fed = d.feed(input);
        (d.finish(), fed)
    }

    #[test]
    fn data_taken_while_it_arrives_puts_the_message_back_together() {
        let message: Vec<u8> = (0..2000)
            .flat_map(|i| format!("line {i} .. with text\r\n.dot\r\n").into_bytes())
            .collect();
        let wire = dot_stuff(&message);
        let mut d = DataDecoder::new(Framing::Dot, 1 << 20);
        let mut taken = Vec::new();
        for chunk in wire.chunks(777) {
            d.feed(chunk);
            taken.extend(d.take_beyond(100));
            assert!(d.held() <= 100 + 777);
        }
        assert_eq!(d.taken(), taken.len() as u64);
        let Ok(kept) = d.finish() else {
            panic!("a clean message was refused")
        };
        let mut whole = kept[..100].to_vec();
        whole.extend(taken);
        whole.extend(&kept[100..]);
        assert_eq!(whole, message);
        // A short message keeps everything.
        let mut d = DataDecoder::new(Framing::Dot, 1 << 20);
        d.feed(b"short\r\n.\r\n");
        assert!(d.take_beyond(100).is_empty());
        assert_eq!(d.finish(), Ok(b"short\r\n".to_vec()));
    }

    #[test]
    fn pieces_are_stuffed_as_the_whole() {
        let message = b"a\r\n.b\rc\n\r\r\n..\r\nend\r";
        let whole = dot_stuff(message);
        for cut in 0..=message.len() {
            let mut out = Vec::new();
            let mut s = DotStuffer::default();
            s.push(&message[..cut], &mut out);
            s.push(&message[cut..], &mut out);
            s.finish(&mut out);
            assert_eq!(out, whole, "cut at {cut}");
        }
        assert_eq!(
            whole,
            b"a\r\n..b\r\nc\r\n\r\n\r\n...\r\nend\r\n.\r\n".to_vec()
        );
    }

    #[test]
    fn simple_message() {
        let (body, fed) = decode(b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n");
        assert_eq!(body, Ok(b"Subject: x\r\n\r\nhello\r\n".to_vec()));
        assert!(fed.complete);
        assert_eq!(fed.consumed, 24);
    }

    #[test]
    fn empty_message() {
        let (body, fed) = decode(b".\r\n");
        assert_eq!(body, Ok(Vec::new()));
        assert!(fed.complete);
    }

    #[test]
    fn dots_are_unstuffed() {
        let (body, _) = decode(b"..leading\r\n...\r\n.x\r\nmid.dle\r\n.\r\n");
        assert_eq!(body, Ok(b".leading\r\n..\r\nx\r\nmid.dle\r\n".to_vec()));
    }

    #[test]
    fn stuffing_round_trip() {
        let msgs: [&[u8]; 4] = [b"a\r\n", b".\r\n..\r\n", b"x\r\n.\r\n.y\r\n", b""];
        for m in msgs {
            let (body, fed) = decode(&dot_stuff(m));
            assert!(fed.complete);
            assert_eq!(body, Ok(m.to_vec()));
        }
    }

    #[test]
    fn stuffing_never_sends_a_bare_cr_or_lf() {
        let hostile: &[u8] = b"a\r.\r\nMAIL FROM:<x@y>\n.\nb\r\n\rc";
        let out = dot_stuff(hostile);
        assert_eq!(
            out,
            b"a\r\n..\r\nMAIL FROM:<x@y>\r\n..\r\nb\r\n\r\nc\r\n.\r\n".to_vec()
        );
        let (body, fed) = decode(&out);
        assert!(fed.complete && fed.consumed == out.len());
        assert_eq!(
            body,
            Ok(b"a\r\n.\r\nMAIL FROM:<x@y>\r\n.\r\nb\r\n\r\nc\r\n".to_vec())
        );
        assert_eq!(dot_stuff(b"no end"), b"no end\r\n.\r\n".to_vec());
    }

    #[test]
    fn byte_by_byte_equals_whole() {
        let input = b"a\r\n..b\r\nc\r\n.\r\n";
        let mut d = DataDecoder::new(Framing::Dot, 1 << 20);
        let mut done = false;
        for (i, b) in input.iter().enumerate() {
            let fed = d.feed(std::slice::from_ref(b));
            assert_eq!(fed.consumed, 1);
            if fed.complete {
                assert_eq!(i, input.len() - 1);
                done = true;
            }
        }
        assert!(done);
        assert_eq!(d.finish(), Ok(b"a\r\n.b\r\nc\r\n".to_vec()));
    }

    /// The smuggling vectors: none of these may end DATA, and all make the message refused.
    #[test]
    fn smuggling_vectors_do_not_end_data() {
        let vectors: [(&[u8], DataDefect); 5] = [
            (b"a\n.\nMAIL FROM:<x@y>\n", DataDefect::BareLf),
            (b"a\r\n.\nMAIL FROM:<x@y>\r\n", DataDefect::BareLf),
            (b"a\n.\r\nMAIL FROM:<x@y>\r\n", DataDefect::BareLf),
            (b"a\r.\rMAIL FROM:<x@y>\r\n", DataDefect::BareCr),
            (b"a\r\n.\rMAIL FROM:<x@y>\r\n", DataDefect::BareCr),
        ];
        for (v, defect) in vectors {
            let mut d = DataDecoder::new(Framing::Dot, 1 << 20);
            let fed = d.feed(v);
            assert!(!fed.complete, "{v:?} ended DATA");
            let fed = d.feed(b"\r\n.\r\n");
            assert!(fed.complete, "real end not seen after {v:?}");
            assert_eq!(d.finish(), Err(defect), "{v:?}");
        }
    }

    #[test]
    fn bare_lf_and_cr_inside_lines() {
        assert_eq!(decode(b"a\nb\r\n.\r\n").0, Err(DataDefect::BareLf));
        assert_eq!(decode(b"a\rb\r\n.\r\n").0, Err(DataDefect::BareCr));
        assert_eq!(decode(b"a\r\r\n.\r\n").0, Err(DataDefect::BareCr));
    }

    #[test]
    fn line_length_limit() {
        let mut ok = vec![b'x'; 998];
        ok.extend_from_slice(b"\r\n.\r\n");
        assert!(decode(&ok).0.is_ok());
        let mut long = vec![b'x'; 999];
        long.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(decode(&long).0, Err(DataDefect::LineTooLong));
        // A stuffed dot counts on the wire: 999 octets including it is too long.
        let mut stuffed = vec![b'.'; 1];
        stuffed.extend(vec![b'x'; 998]);
        stuffed.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(decode(&stuffed).0, Err(DataDefect::LineTooLong));
    }

    #[test]
    fn size_limit_stops_growth() {
        let mut d = DataDecoder::new(Framing::Dot, 10);
        let fed = d.feed(b"0123456789\r\nmore\r\n");
        assert!(!fed.complete);
        assert!(d.body.is_empty(), "refused message must not keep growing");
        let fed = d.feed(b".\r\n");
        assert!(fed.complete);
        assert_eq!(d.size(), 18);
        assert_eq!(d.finish(), Err(DataDefect::TooBig));
    }

    #[test]
    fn size_limit_is_exact() {
        // 11 octets after unstuffing: fits a limit of 11, not of 10, fed whole or in pieces.
        for chunk in [1, 3, 5, 64] {
            for (max, fits) in [(11, true), (10, false)] {
                let mut d = DataDecoder::new(Framing::Dot, max);
                for piece in b"..23456789\r\n.\r\n".chunks(chunk) {
                    d.feed(piece);
                }
                let result = d.finish();
                assert_eq!(result.is_ok(), fits, "max {max}, chunks of {chunk}");
                if fits {
                    assert_eq!(result, Ok(b".23456789\r\n".to_vec()));
                }
            }
        }
    }

    #[test]
    fn chunked_framing_keeps_dots_and_adds_final_crlf() {
        let mut d = DataDecoder::new(Framing::Chunked, 100);
        assert!(!d.feed(b".\r\n.x\r\nlast").complete);
        assert_eq!(d.finish(), Ok(b".\r\n.x\r\nlast\r\n".to_vec()));
        let mut d = DataDecoder::new(Framing::Chunked, 100);
        d.feed(b"a\nb\r\n");
        assert_eq!(d.finish(), Err(DataDefect::BareLf));
        let mut d = DataDecoder::new(Framing::Chunked, 100);
        d.feed(b"a\r");
        assert_eq!(d.finish(), Err(DataDefect::BareCr));
    }

    #[test]
    fn defects_have_replies() {
        for d in [
            DataDefect::BareLf,
            DataDefect::BareCr,
            DataDefect::LineTooLong,
            DataDefect::TooBig,
        ] {
            let r = d.reply(10);
            assert!(r.is_permanent() && r.enhanced.is_some());
        }
    }
}
