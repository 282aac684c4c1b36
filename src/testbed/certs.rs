//! Certificates for tests and the demo: a fresh CA per run and a server certificate for
//! `localhost` / `127.0.0.1` signed by it, so clients can use `sslmode=verify-full`.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use super::TestbedError;

/// PEM files written by [`write_test_certificates`].
#[derive(Debug, Clone)]
pub struct TestCertificates {
    /// The CA certificate: what clients trust (`sslrootcert`).
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// Generate a CA and a server certificate into `dir`.
pub fn write_test_certificates(dir: &Path) -> Result<TestCertificates, TestbedError> {
    let cert_err = |e: rcgen::Error| TestbedError::Certificates(e.to_string());
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "pgwarden throwaway CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(cert_err)?)
        .map_err(cert_err)?;

    let server_key = KeyPair::generate().map_err(cert_err)?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .map_err(cert_err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let server = params.signed_by(&server_key, &ca).map_err(cert_err)?;

    let files = TestCertificates {
        ca_cert: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
    };
    let write = |path: &Path, text: String| {
        std::fs::write(path, text).map_err(|source| TestbedError::Io {
            action: format!("write {}", path.display()),
            source,
        })
    };
    write(&files.ca_cert, ca.pem())?;
    write(&files.server_cert, server.pem())?;
    write(&files.server_key, server_key.serialize_pem())?;
    Ok(files)
}
