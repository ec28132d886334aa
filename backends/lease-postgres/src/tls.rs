//! TLS through rustls (feature `tls`): the connector, and the process-wide crypto provider it
//! needs, which this library does not choose for its application (unless `tls-ring`).

use std::path::Path;
use std::sync::Arc;

use lease_core::StoreError;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::NAME;

/// A connector that verifies the server's certificate against `root_cert` (a PEM file), or
/// the system's roots without one.
pub(crate) fn connector(root_cert: Option<&Path>) -> Result<MakeRustlsConnect, StoreError> {
    let provider = provider()?;
    let mut roots = RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    StoreError::invalid_input(
                        NAME,
                        format!("cannot read the CA certificate {}: {e}", path.display()),
                    )
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(StoreError::invalid_input(
                    NAME,
                    format!("{} holds no usable CA certificate", path.display()),
                ));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(StoreError::permanent(
                    NAME,
                    "no system root certificates found for TLS; give the server's CA with \
                     `sslrootcert`",
                ));
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::permanent(NAME, format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The process's crypto provider: the one the application installed; with `tls-ring`, ring,
/// installed now if none was.
fn provider() -> Result<Arc<rustls::crypto::CryptoProvider>, StoreError> {
    #[cfg(feature = "tls-ring")]
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may install one first; either way one is installed after this.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .ok_or_else(|| {
            StoreError::invalid_input(
                NAME,
                "TLS needs a rustls crypto provider: install one at the start of the program \
                 (`rustls::crypto::ring::default_provider().install_default()` or aws-lc-rs's), \
                 or enable the `tls-ring` feature of lease-postgres",
            )
        })
}
