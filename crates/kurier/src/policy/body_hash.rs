//! DKIM and ARC body hashes (RFC 6376 §3.7) computed while reading the message in chunks,
//! so that a message whose body is on disk is verified without reading it into memory.
//! The header section alone is parsed; the hashes its signatures ask for are filled in
//! here.

use mail_auth::common::crypto::{HashAlgorithm, HashContext, HashImpl, Sha1, Sha256};
use mail_auth::dkim::Canonicalization;
use mail_auth::dkim::canonicalize::BodyHasher;

use kurier_spool::MessageData;

/// One body hash a signature asks for, as mail-auth lists them: canonicalization, hash
/// algorithm, length limit (`l=`, 0 for the whole body) and the hash, filled in here.
pub type BodyHashes = Vec<(Canonicalization, HashAlgorithm, u64, Vec<u8>)>;

enum Hasher {
    Sha1(BodyHasher<<Sha1 as HashImpl>::Context>),
    Sha256(BodyHasher<<Sha256 as HashImpl>::Context>),
}

impl Hasher {
    fn write(&mut self, chunk: &[u8]) {
        match self {
            Hasher::Sha1(h) => h.write(chunk),
            Hasher::Sha256(h) => h.write(chunk),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Sha1(h) => h.finish().0.complete().as_ref().to_vec(),
            Hasher::Sha256(h) => h.finish().0.complete().as_ref().to_vec(),
        }
    }
}

/// Fills in every hash of `hashes` over the body of `data`, which starts at `body_start`.
pub fn fill(hashes: &mut BodyHashes, data: &MessageData, body_start: usize) -> std::io::Result<()> {
    let mut hashers: Vec<(Hasher, Option<BlankWhitespaceLines>)> = hashes
        .iter()
        .map(|(cb, ha, l, _)| {
            let hasher = match ha {
                HashAlgorithm::Sha1 => Hasher::Sha1(BodyHasher::new(Sha1::hasher(), *cb, *l)),
                HashAlgorithm::Sha256 => Hasher::Sha256(BodyHasher::new(Sha256::hasher(), *cb, *l)),
            };
            // The filter changes no relaxed hash (see its type), but it moves octets, so
            // not under a length limit, which counts octets as they arrived.
            let filter =
                (*cb == Canonicalization::Relaxed && *l == 0).then(BlankWhitespaceLines::default);
            (hasher, filter)
        })
        .collect();
    let mut out = Vec::new();
    data.for_each_chunk(body_start, |chunk| {
        for (hasher, filter) in &mut hashers {
            match filter {
                Some(f) => {
                    out.clear();
                    f.pass(chunk, &mut out);
                    hasher.write(&out);
                }
                None => hasher.write(chunk),
            }
        }
    })?;
    for ((_, _, _, hash), (hasher, _)) in hashes.iter_mut().zip(hashers) {
        *hash = hasher.finish();
    }
    Ok(())
}

/// Makes every line made only of SP and HTAB an empty line. RFC 6376 §3.4.4 relaxed body
/// canonicalization removes the white space at the end of every line and then ignores empty
/// lines at the end of the body, so this changes no relaxed hash; mail-auth 0.13.3 keeps
/// such lines at the end of the body (later versions do not) and would fail a correct
/// signature without it. White space at the start of a line with text is passed on as one
/// SP, which relaxed canonicalization makes of any run of it (§3.4.4).
#[derive(Debug, Default)]
struct BlankWhitespaceLines {
    /// Inside a line, past its first octet that is not white space.
    in_text: bool,
    /// White space seen at the start of the current line, not passed on yet.
    held: bool,
}

impl BlankWhitespaceLines {
    fn pass(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        for &b in chunk {
            match b {
                b'\n' => {
                    out.push(b);
                    self.in_text = false;
                    self.held = false;
                }
                // Message data has no bare CR: this one ends the line.
                b'\r' => {
                    self.held = false;
                    out.push(b);
                }
                b' ' | b'\t' if !self.in_text => self.held = true,
                _ => {
                    if !self.in_text && self.held {
                        out.push(b' ');
                    }
                    self.in_text = true;
                    self.held = false;
                    out.push(b);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn hash(body: &[u8], cb: Canonicalization) -> Vec<u8> {
        let mut hashes: BodyHashes = vec![(cb, HashAlgorithm::Sha256, 0, Vec::new())];
        let mut message = b"Subject: s\r\n\r\n".to_vec();
        message.extend_from_slice(body);
        fill(&mut hashes, &MessageData::in_memory(message), 14).unwrap();
        hashes.remove(0).3
    }

    #[test]
    fn relaxed_hashes_ignore_white_space_lines_at_the_end_and_match_mail_auth() {
        use Canonicalization::{Relaxed, Simple};
        let body = b"Hello  world \r\n \tindented\r\n\r\nend\r\n";
        for cb in [Relaxed, Simple] {
            let expected = HashAlgorithm::Sha256
                .hash(cb.canonical_body(body, 0))
                .as_ref()
                .to_vec();
            assert_eq!(hash(body, cb), expected, "{cb:?}");
        }
        let with_tail = b"Hello  world \r\n \tindented\r\n\r\nend\r\n \r\n\t \r\n\r\n";
        assert_eq!(hash(with_tail, Relaxed), hash(body, Relaxed));
        assert_ne!(hash(with_tail, Simple), hash(body, Simple));
        // The empty body and a body of empty lines (RFC 6376 §3.4.4: no CRLF at all).
        assert_eq!(hash(b"", Relaxed), hash(b" \r\n\r\n", Relaxed));
    }

    #[test]
    fn chunk_borders_do_not_change_the_filter() {
        let body = b"a\r\n  \r\n b  \r\n\t\r\nx\r\n";
        let mut whole = Vec::new();
        BlankWhitespaceLines::default().pass(body, &mut whole);
        assert_eq!(whole, b"a\r\n\r\n b  \r\n\r\nx\r\n");
        for cut in 0..body.len() {
            let mut f = BlankWhitespaceLines::default();
            let mut out = Vec::new();
            f.pass(&body[..cut], &mut out);
            f.pass(&body[cut..], &mut out);
            assert_eq!(out, whole, "cut at {cut}");
        }
    }
}
