//! TLS for the listeners: the configured certificate, or a self-signed one generated on first
//! start and kept in `<data_dir>/tls/` so clients can pin it across restarts; and, in
//! [`client`], the client side for delivery to other servers.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

use kurier_smtp::TlsInfo;

use crate::data_dir::DataDir;
use crate::fsutil::{WriteOptions, write_atomic};

pub mod client;

/// TLS setup failures.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Generating the self-signed certificate failed.
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
    /// rustls refused the certificate/key pair.
    #[error("certificate and key do not form a usable TLS configuration: {0}")]
    Config(String),
}

/// Certificate and key in memory, read before privileges are dropped.
pub struct CertifiedKey {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// Reads a PEM certificate chain and private key.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let pem_err = |path: &Path| {
        let path = path.to_path_buf();
        move |e: rustls_pki_types::pem::Error| TlsError::Pem {
            path,
            message: e.to_string(),
        }
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(pem_err(cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err(cert))?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: cert.to_path_buf(),
            message: "no certificate found".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(pem_err(key))?;
    Ok(CertifiedKey { chain, key })
}

/// The TLSA record data for DANE-EE with the public key's SHA-256 (RFC 7671 §5.1 "3 1 1",
/// the form RFC 7672 §3.1.1 recommends for SMTP): it names the key, not the certificate,
/// so it stays right when a certificate is renewed over the same key.
pub fn tlsa_3_1_1(cert: &Path) -> Result<String, TlsError> {
    let bad = |message: String| TlsError::Pem {
        path: cert.to_path_buf(),
        message,
    };
    let leaf = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("no certificate found".into()))?
        .map_err(|e| bad(e.to_string()))?;
    let parsed = webpki::EndEntityCert::try_from(&leaf).map_err(|e| bad(format!("{e:?}")))?;
    let spki = parsed.subject_public_key_info();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki.as_ref());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("3 1 1 {hex}"))
}

/// Loads `<data_dir>/tls/{cert,key}.pem`, generating them for `hostname` when absent.
/// Returns the key and whether it was generated now.
pub fn load_or_generate(
    data_dir: &DataDir,
    hostname: &str,
) -> Result<(CertifiedKey, bool), TlsError> {
    let cert_path = data_dir.tls_cert();
    let key_path = data_dir.tls_key();
    if cert_path.exists() && key_path.exists() {
        return load(&cert_path, &key_path).map(|k| (k, false));
    }
    let mut names = vec![hostname.to_string()];
    if hostname != "localhost" {
        names.push("localhost".to_string());
    }
    let generated = self_signed(names, hostname).map_err(|e| TlsError::Generate(e.to_string()))?;
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| TlsError::Pem {
            path,
            message: e.to_string(),
        }
    };
    if let Some(dir) = key_path.parent() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    // Key first, then certificate, each written whole: a crash leaves no half key, and a
    // key without its certificate is generated again at the next start.
    let key_pem = generated.signing_key.serialize_pem();
    write_atomic(&key_path, &[key_pem.as_bytes()], &WriteOptions::private())
        .map_err(io_err(&key_path))?;
    write_atomic(
        &cert_path,
        &[generated.cert.pem().as_bytes()],
        &WriteOptions::public(),
    )
    .map_err(io_err(&cert_path))?;
    load(&cert_path, &key_path).map(|k| (k, true))
}

/// A self-signed certificate for `names`, its subject the host name (what `openssl
/// s_client` and a client's warning show), not the library's placeholder.
fn self_signed(
    names: Vec<String>,
    hostname: &str,
) -> Result<rcgen::CertifiedKey<rcgen::KeyPair>, rcgen::Error> {
    let signing_key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(names)?;
    let mut subject = rcgen::DistinguishedName::new();
    subject.push(rcgen::DnType::CommonName, hostname);
    subject.push(rcgen::DnType::OrganizationName, "Kurier self-signed");
    params.distinguished_name = subject;
    let cert = params.self_signed(&signing_key)?;
    Ok(rcgen::CertifiedKey { cert, signing_key })
}

/// The rustls server configuration (TLS 1.2 and 1.3, aws-lc-rs).
pub fn server_config(key: CertifiedKey) -> Result<Arc<ServerConfig>, TlsError> {
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(key.chain, key.key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(config))
}

/// Describes a finished handshake (either side) for the Received header, logs and history.
pub fn session_info(conn: &rustls::CommonState) -> TlsInfo {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(v) => format!("{v:?}"),
        None => "TLS".to_string(),
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_else(|| "unknown".into());
    TlsInfo { version, cipher }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn generated_certificate_is_kept_and_reused() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let (key, generated) = load_or_generate(&DataDir::new(dir.path()), "mx.test").unwrap();
        assert!(generated);
        // The subject is the host name (the DER holds it beside the SAN), not a placeholder.
        let der = key.chain[0].as_ref();
        let holds = |s: &[u8]| der.windows(s.len()).filter(|w| *w == s).count();
        assert_eq!(holds(b"mx.test"), 3, "issuer and subject CN, and the SAN");
        assert_eq!(holds(b"rcgen"), 0);
        server_config(key).unwrap();
        let first = fs::read(dir.path().join("tls/cert.pem")).unwrap();
        let (_, generated) = load_or_generate(&DataDir::new(dir.path()), "mx.test").unwrap();
        assert!(!generated);
        assert_eq!(fs::read(dir.path().join("tls/cert.pem")).unwrap(), first);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("tls/key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn tlsa_names_the_certificate_key() {
        let dir = tempfile::tempdir().unwrap();
        load_or_generate(&DataDir::new(dir.path()), "mx.test").unwrap();
        let tlsa = tlsa_3_1_1(&dir.path().join("tls/cert.pem")).unwrap();
        // The same hash from the private key's side (rcgen derives the public key itself).
        let key = fs::read_to_string(dir.path().join("tls/key.pem")).unwrap();
        use rcgen::PublicKeyData as _;
        let spki = rcgen::KeyPair::from_pem(&key)
            .unwrap()
            .subject_public_key_info();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &spki);
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(tlsa, format!("3 1 1 {hex}"));
        assert!(tlsa_3_1_1(&dir.path().join("tls/key.pem")).is_err());
    }

    #[test]
    fn bad_pem_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        fs::write(&cert, "not pem").unwrap();
        let err = load(&cert, &cert).err().unwrap().to_string();
        assert!(err.contains("c.pem"), "{err}");
    }
}
