//! TLS files: PEM certificates and keys for the server, and the CA clients verify the master with.

use std::path::Path;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The certificates in a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| format!("{} is not PEM: {e}", path.display()))?
        .ok_or_else(|| format!("{} holds no private key", path.display()))
}

/// A CA certificate file's PEM, checked to hold a certificate.
pub fn read_ca(path: &Path) -> Result<Vec<u8>, String> {
    read_certs(path)?;
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}
