//! The TLS client side: rustls (with *ring*, as the servers) trusting only the CA
//! certificates given, for a reader or ingest connecting over MQTTS.

use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("bad PEM certificate: {0}")]
    Pem(String),
    #[error("no CA certificate in the PEM given")]
    NoCertificate,
    #[error("{0}")]
    Rustls(String),
}

/// A client configuration trusting only the CA certificates in `ca_pem`.
pub fn client_config(ca_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| TlsError::Pem(e.to_string()))?;
        roots.add(cert).map_err(|e| TlsError::Pem(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    // *ring*, as the servers (rustls marks it deprecated for lacking post-quantum key
    // exchange; aws-lc-rs would need cmake to build).
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pem_without_a_certificate_is_refused() {
        assert!(matches!(client_config(b""), Err(TlsError::NoCertificate)));
        assert!(
            client_config(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
                .is_err()
        );
    }
}
