//! TLS for the gRPC and HTTP ports (issue #15, point 3): the certificate chain and key are
//! read from PEM files at start (`[tls]` in the config); rustls with the *ring* provider.
//! gRPC hands the PEM to tonic; HTTP wraps each accepted socket with [`TlsAcceptor`].

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no usable PEM {what}: {detail}")]
    Pem {
        path: String,
        what: &'static str,
        detail: String,
    },
    #[error("the certificate and key do not make a TLS server: {0}")]
    Config(String),
}

/// The PEM files, read.
#[derive(Clone)]
pub struct Identity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identity(..)")
    }
}

impl Identity {
    /// Reads and checks the files (a bad file stops the start, not the first handshake).
    pub fn load(config: &TlsConfig) -> Result<Self, TlsError> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|source| TlsError::Read {
                path: p.display().to_string(),
                source,
            })
        };
        let identity = Self {
            cert_pem: read(&config.cert_file)?,
            key_pem: read(&config.key_file)?,
        };
        identity.server_config(&config.cert_file, &config.key_file)?;
        Ok(identity)
    }

    fn server_config(
        &self,
        cert_path: &std::path::Path,
        key_path: &std::path::Path,
    ) -> Result<rustls::ServerConfig, TlsError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Pem {
                path: cert_path.display().to_string(),
                what: "certificate",
                detail: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsError::Pem {
                path: cert_path.display().to_string(),
                what: "certificate",
                detail: "no CERTIFICATE block".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|e| TlsError::Pem {
            path: key_path.display().to_string(),
            what: "private key",
            detail: e.to_string(),
        })?;
        // *ring*, as tonic's `tls-ring`: no C toolchain beyond what *ring* needs (aws-lc-sys
        // wants cmake). rustls marks it deprecated for lacking post-quantum key exchange.
        #[allow(deprecated)]
        let provider = rustls::crypto::ring::default_provider();
        rustls::ServerConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Config(e.to_string()))
    }

    /// The acceptor of the HTTP port (HTTP/1.1).
    pub fn http_acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let mut config = self.server_config(
            std::path::Path::new("tls.cert_file"),
            std::path::Path::new("tls.key_file"),
        )?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// tonic's TLS settings for the gRPC port.
    pub fn grpc(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
            &self.cert_pem,
            &self.key_pem,
        ))
    }
}
