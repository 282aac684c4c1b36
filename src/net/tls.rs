//! TLS configurations: the client-facing server config and the upstream client config. Both
//! use the ring provider explicitly (mixing providers makes rustls panic at run time, DESIGN
//! §6).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// ALPN protocol PostgreSQL 17+ clients offer for direct TLS.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate file {path}: {detail}")]
    Cert { path: String, detail: String },
    #[error("cannot read private key file {path}: {detail}")]
    Key { path: String, detail: String },
    #[error("invalid TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |detail: String| TlsError::Cert {
        path: path.display().to_string(),
        detail,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate found".into()));
    }
    Ok(certs)
}

/// The server config for client connections, with ALPN `postgresql` for direct TLS.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    config_with_alpn(cert, key, ALPN_POSTGRESQL)
}

/// The server config for HTTPS (the admin API): ALPN `http/1.1`. With `postgresql` there,
/// every HTTP client that offers ALPN (curl, browsers, Prometheus) would be refused.
pub fn https_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    config_with_alpn(cert, key, b"http/1.1")
}

fn config_with_alpn(cert: &Path, key: &Path, alpn: &[u8]) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(cert)?;
    let key_path = key;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        detail: e.to_string(),
    })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::Key {
                path: key_path.display().to_string(),
                detail: format!("it is not the key of the certificate {}", cert.display()),
            },
            other => TlsError::Rustls(other),
        })?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// The client config for the upstream leg. `ca = None` means `sslmode=require`: encrypted but
/// unverified, exactly libpq's meaning of `require` without a root certificate.
pub fn upstream_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let config = match ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs(ca)? {
                roots.add(cert)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider())))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// `sslmode=require`: accept any certificate but still check the handshake signatures, so
/// the session is at least encrypted to whoever holds the presented key.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `tls-server-end-point` channel-binding data (RFC 5929 §4.1) for a server certificate: the
/// certificate hashed with its signature's hash function, SHA-256 standing in for MD5 and
/// SHA-1. `None` when the signature algorithm names no single hash (Ed25519, RSA-PSS):
/// SCRAM-SHA-256-PLUS is then not offered, as PostgreSQL does.
pub fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
    let (0x30, certificate, _) = der_element(cert_der)? else {
        return None;
    };
    let (0x30, _tbs, rest) = der_element(certificate)? else {
        return None;
    };
    let (0x30, algorithm, _) = der_element(rest)? else {
        return None;
    };
    let (0x06, oid, _) = der_element(algorithm)? else {
        return None;
    };
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    let hash = match oid {
        [rsa @ .., 0x04 | 0x05 | 0x0b] if rsa == RSA => HashAlg::Sha256, // MD5, SHA-1, SHA-256
        [rsa @ .., 0x0c] if rsa == RSA => HashAlg::Sha384,
        [rsa @ .., 0x0d] if rsa == RSA => HashAlg::Sha512,
        [ec @ .., 0x01] if ec == ECDSA => HashAlg::Sha256, // ecdsa-with-SHA1
        [ec @ .., 0x03, 0x02] if ec == ECDSA => HashAlg::Sha256,
        [ec @ .., 0x03, 0x03] if ec == ECDSA => HashAlg::Sha384,
        [ec @ .., 0x03, 0x04] if ec == ECDSA => HashAlg::Sha512,
        _ => return None,
    };
    Some(match hash {
        HashAlg::Sha256 => sha2::Sha256::digest(cert_der).to_vec(),
        HashAlg::Sha384 => sha2::Sha384::digest(cert_der).to_vec(),
        HashAlg::Sha512 => sha2::Sha512::digest(cert_der).to_vec(),
    })
}

enum HashAlg {
    Sha256,
    Sha384,
    Sha512,
}

/// One DER element: (tag, contents, rest). Definite lengths up to 4 bytes only.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(count)?;
        (
            bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b)),
            rest,
        )
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_binding_uses_the_signature_hash() {
        use sha2::Digest;
        let dir = std::env::temp_dir().join(format!("pgwarden-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let certs = crate::testbed::write_test_certificates(&dir).unwrap();
        let der = load_certs(&certs.server_cert).unwrap().remove(0);
        // rcgen signs with ECDSA P-256 / SHA-256 by default.
        assert_eq!(
            tls_server_end_point(&der).unwrap(),
            sha2::Sha256::digest(&der).to_vec()
        );
        assert_eq!(tls_server_end_point(b"\x30\x03\x02\x01\x00"), None);
        assert_eq!(tls_server_end_point(b""), None);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
