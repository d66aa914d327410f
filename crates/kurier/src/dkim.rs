//! DKIM signing of mail from local domains (RFC 6376), with RSA-SHA256 and Ed25519-SHA256
//! (RFC 8463; both when both keys exist, as that RFC recommends).
//!
//! Keys live in `<data_dir>/dkim/<domain>/<selector>.<rsa|ed25519>.key` (PKCS#8 PEM, mode
//! 0600). `kurier dkim generate` makes one and prints the TXT record to publish.
//! Signatures use relaxed header and simple body canonicalization.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use kurier_smtp::Domain;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use thiserror::Error;

use crate::data_dir::DataDir;
use crate::fsutil::{WriteOptions, owner_for, write_atomic};
use kurier_spool::MessageData;

/// DKIM key problems.
#[derive(Debug, Error)]
pub enum DkimError {
    /// File access.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Key generation or parsing.
    #[error("DKIM key: {0}")]
    Key(String),
    /// Bad domain or selector.
    #[error("{0}")]
    Name(String),
}

/// Key algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Algorithm {
    /// Ed25519-SHA256 (RFC 8463).
    Ed25519,
    /// RSA-SHA256, 2048 bits.
    Rsa,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Ed25519 => "ed25519",
            Algorithm::Rsa => "rsa",
        }
    }
}

fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// Generates a key for `domain` and returns (key file, TXT record line to publish).
pub fn generate(
    data_dir: &DataDir,
    domain: &Domain,
    selector: &str,
    alg: Algorithm,
) -> Result<(PathBuf, String), DkimError> {
    if !valid_label(domain.as_str()) || !valid_label(selector) || selector.contains('.') {
        return Err(DkimError::Name(format!(
            "bad domain {domain} or selector {selector:?}"
        )));
    }
    let key_err = |e: String| DkimError::Key(e);
    let (pkcs8, public) = match alg {
        Algorithm::Ed25519 => {
            let pkcs8 = Ed25519Key::generate_pkcs8().map_err(|e| key_err(e.to_string()))?;
            let key = Ed25519Key::from_pkcs8_der(&pkcs8).map_err(|e| key_err(e.to_string()))?;
            // RFC 8463 §4.2: p= is the raw 32-byte public key.
            (pkcs8, key.public_key())
        }
        Algorithm::Rsa => {
            let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(|e| key_err(e.to_string()))?;
            let pkcs8: Pkcs8V1Der<'static> = kp.as_der().map_err(|e| key_err(e.to_string()))?;
            let spki: PublicKeyX509Der<'static> = kp
                .public_key()
                .as_der()
                .map_err(|e| key_err(e.to_string()))?;
            (pkcs8.as_ref().to_vec(), spki.as_ref().to_vec())
        }
    };
    let dir = data_dir.dkim_domain(domain);
    let path = dir.join(format!("{selector}.{}.key", alg.name()));
    let file_err = |e: std::io::Error| DkimError::File {
        path: path.clone(),
        message: e.to_string(),
    };
    fs::create_dir_all(&dir).map_err(file_err)?;
    if path.exists() {
        return Err(DkimError::Name(format!(
            "{} exists already; choose another selector",
            path.display()
        )));
    }
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        BASE64
            .encode(&pkcs8)
            .as_bytes()
            .chunks(64)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let once = WriteOptions {
        replace: false,
        owner: owner_for(data_dir.root()),
        ..WriteOptions::private()
    };
    write_atomic(&path, &[pem.as_bytes()], &once).map_err(file_err)?;
    Ok((path, txt_record(selector, domain.as_str(), alg, &public)))
}

/// The TXT record that publishes a public key (RFC 6376 §3.6.1; RFC 8463 §4.2 for
/// Ed25519), in zone-file form: long data as several quoted strings of at most 255
/// characters, which resolvers join again (RFC 7208 §3.3 describes the same for SPF).
fn txt_record(selector: &str, domain: &str, alg: Algorithm, public: &[u8]) -> String {
    let value = format!("v=DKIM1; k={}; p={}", alg.name(), BASE64.encode(public));
    let quoted: Vec<String> = value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!(
        "{selector}._domainkey.{domain}. IN TXT {}",
        quoted.join(" ")
    )
}

/// The TXT records of every key `domain` has under `<data_dir>/dkim/`, derived from the
/// private keys (what `kurier dns records` prints), in selector order.
pub fn published_records(data_dir: &DataDir, domain: &Domain) -> Result<Vec<String>, DkimError> {
    let dir = data_dir.dkim_domain(domain);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(DkimError::File {
                path: dir,
                message: e.to_string(),
            });
        }
    };
    let mut files: Vec<PathBuf> = entries.flatten().map(|f| f.path()).collect();
    files.sort();
    let mut records = Vec::new();
    for path in files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let Some((selector, alg)) = name.strip_suffix(".key").and_then(|n| n.rsplit_once('.'))
        else {
            continue;
        };
        let bad = |message: String| DkimError::File {
            path: path.clone(),
            message,
        };
        let der = PrivatePkcs8KeyDer::from_pem_file(&path).map_err(|e| bad(e.to_string()))?;
        let (alg, public) = match alg {
            "ed25519" => {
                let key = Ed25519Key::from_pkcs8_der(der.secret_pkcs8_der())
                    .map_err(|e| bad(e.to_string()))?;
                (Algorithm::Ed25519, key.public_key())
            }
            "rsa" => {
                let key = aws_lc_rs::rsa::KeyPair::from_pkcs8(der.secret_pkcs8_der())
                    .map_err(|e| bad(e.to_string()))?;
                let spki: PublicKeyX509Der<'static> =
                    key.public_key().as_der().map_err(|e| bad(e.to_string()))?;
                (Algorithm::Rsa, spki.as_ref().to_vec())
            }
            other => return Err(bad(format!("unknown algorithm {other:?}"))),
        };
        records.push(txt_record(selector, domain.as_str(), alg, &public));
    }
    Ok(records)
}

/// A ready signer for one key (domain, selector, headers and canonicalization set).
enum Signer {
    Ed25519(DkimSigner<Ed25519Key, Done>),
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
}

/// The signing keys of the local domains, loaded at startup.
#[derive(Default)]
pub struct Signers {
    keys: HashMap<String, Vec<(String, Signer)>>,
}

/// Simple body canonicalization: relaxed body in the pinned mail-auth release mishandles
/// trailing whitespace-only lines.
macro_rules! signer {
    ($key:expr, $domain:expr, $selector:expr) => {
        DkimSigner::from_key($key)
            .domain($domain)
            .selector($selector)
            .headers(SIGNED_HEADERS)
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Simple)
    };
}

/// The header fields signed (RFC 6376 §5.4.1 recommendations).
const SIGNED_HEADERS: [&str; 12] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

impl Signers {
    /// Loads every key under `<data_dir>/dkim/`; a bad key file is reported and skipped.
    pub fn load(data_dir: &DataDir) -> Signers {
        let mut keys: HashMap<String, Vec<(String, Signer)>> = HashMap::new();
        let Ok(domains) = fs::read_dir(data_dir.dkim()) else {
            return Signers::default();
        };
        for d in domains.flatten() {
            let domain = d.file_name().to_string_lossy().to_ascii_lowercase();
            let Ok(files) = fs::read_dir(d.path()) else {
                continue;
            };
            let mut files: Vec<PathBuf> = files.flatten().map(|f| f.path()).collect();
            files.sort();
            for path in files {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                let Some((selector, alg)) =
                    name.strip_suffix(".key").and_then(|n| n.rsplit_once('.'))
                else {
                    continue;
                };
                let loaded = PrivatePkcs8KeyDer::from_pem_file(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|der| match alg {
                        "ed25519" => Ed25519Key::from_pkcs8_der(der.secret_pkcs8_der())
                            .map(|k| Signer::Ed25519(signer!(k, &domain, selector)))
                            .map_err(|e| e.to_string()),
                        "rsa" => RsaKey::<Sha256>::from_key_der(
                            rustls_pki_types::PrivateKeyDer::Pkcs8(der),
                        )
                        .map(|k| Signer::Rsa(signer!(k, &domain, selector)))
                        .map_err(|e| e.to_string()),
                        other => Err(format!("unknown algorithm {other:?}")),
                    });
                match loaded {
                    Ok(key) => {
                        tracing::info!(domain = %domain, selector, alg, "DKIM key loaded");
                        keys.entry(domain.clone())
                            .or_default()
                            .push((selector.to_string(), key));
                    }
                    Err(e) => {
                        tracing::error!(path = %path.display(), error = %e, "cannot load DKIM key")
                    }
                }
            }
        }
        Signers { keys }
    }

    /// True when `domain` has a key.
    pub fn has(&self, domain: &str) -> bool {
        self.keys.contains_key(&domain.to_ascii_lowercase())
    }

    /// The DKIM-Signature fields (CRLF-terminated) for `message` signed as `domain`; empty
    /// when the domain has no key.
    pub fn sign(&self, domain: &str, message: &[u8]) -> String {
        let whole = |write: &mut dyn FnMut(&[u8])| {
            write(message);
            Ok(())
        };
        self.sign_chunks(domain, whole).unwrap_or_default()
    }

    /// [`Signers::sign`] for a message being received, read in chunks (a large one from its
    /// file, never whole into memory); an error is a failure to read that file.
    pub fn sign_data(&self, domain: &str, message: &MessageData) -> std::io::Result<String> {
        self.sign_chunks(domain, |write| message.for_each_chunk(0, write))
    }

    /// Signs the message `feed` writes, in order, to the function it is given, once per key.
    fn sign_chunks(
        &self,
        domain: &str,
        feed: impl Fn(&mut dyn FnMut(&[u8])) -> std::io::Result<()>,
    ) -> std::io::Result<String> {
        let mut out = String::new();
        for (selector, signer) in self
            .keys
            .get(&domain.to_ascii_lowercase())
            .into_iter()
            .flatten()
        {
            let signature = match signer {
                Signer::Ed25519(s) => {
                    let mut stream = s.sign_streaming();
                    feed(&mut |c| stream.write(c))?;
                    stream.finish()
                }
                Signer::Rsa(s) => {
                    let mut stream = s.sign_streaming();
                    feed(&mut |c| stream.write(c))?;
                    stream.finish()
                }
            };
            match signature {
                Ok(s) => out.push_str(&s.to_header()),
                Err(e) => {
                    tracing::error!(domain, selector = %selector, error = %e, "DKIM signing failed")
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_published_record_is_the_one_printed_at_generation() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = DataDir::new(dir.path());
        let domain = Domain::parse("example.org").unwrap();
        assert!(published_records(&data_dir, &domain).unwrap().is_empty());
        let (_, rsa) = generate(&data_dir, &domain, "a2026", Algorithm::Rsa).unwrap();
        let (_, ed) = generate(&data_dir, &domain, "b2026", Algorithm::Ed25519).unwrap();
        assert_eq!(published_records(&data_dir, &domain).unwrap(), [rsa, ed]);
        // A damaged key file is an error naming it, not a record left out.
        fs::write(data_dir.dkim_domain(&domain).join("c.rsa.key"), "junk").unwrap();
        let e = published_records(&data_dir, &domain).unwrap_err();
        assert!(e.to_string().contains("c.rsa.key"), "{e}");
    }
}
