//! TLS to relays (TXN-11): rustls on the `ring` provider, trust anchors from the system's
//! store plus a relay's `ca_file`.
//!
//! - `required` and `implicit` use the strict verifier: a certificate that does not chain to a
//!   trust anchor or does not name the host fails the handshake, and the host counts as
//!   unreachable.
//! - `opportunistic` uses the same verifier but lets a failure pass: the failure is logged
//!   (with the host and why) and the session goes on encrypted, which still beats clear text
//!   against a passive listener (RFC 7435).
//!
//! Why these choices: docs/architecture.md, "Dependencies and why".

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::settings::TlsMode;

/// Why a TLS client could not be set up for a relay.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The ca_file cannot be read or holds no certificate.
    #[error("ca_file {path}: {why}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Nothing to verify a relay with.
    #[error("no trust anchors: the system store is empty and no ca_file is given (tls = \"{0}\" needs one to verify the relay)")]
    NoAnchors(&'static str),
    /// rustls refused the configuration.
    #[error("TLS set-up: {0}")]
    Rustls(String),
}

/// The provider every TLS connection uses: ring. rustls marks it deprecated because it has no
/// post-quantum key exchange (aws-lc-rs has); we keep it on purpose, to stay free of aws-lc's
/// C/cmake build (docs/architecture.md, "Dependencies and why").
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The system's trust anchors, loaded once (errors for single certificates are logged and
/// skipped; an unreadable store leaves it empty).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static R: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    R.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in found.errors.iter().take(5) {
            tracing::warn!(error = %e, "a certificate of the system's trust store could not be loaded");
        }
        found.certs
    })
}

fn load_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let err = |why: String| TlsSetupError::CaFile {
        path: path.to_path_buf(),
        why,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// The strict verifier for the system's trust anchors and those of `ca_file`: `None` when there
/// are none at all.
fn strict_verifier(
    ca_file: Option<&Path>,
) -> Result<Option<Arc<WebPkiServerVerifier>>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    let (_, bad) = roots.add_parsable_certificates(system_roots().iter().cloned());
    if bad > 0 {
        tracing::debug!(
            bad,
            "system certificates rustls could not parse were skipped"
        );
    }
    if let Some(p) = ca_file {
        for c in load_pem_certs(p)? {
            roots.add(c).map_err(|e| TlsSetupError::CaFile {
                path: p.to_path_buf(),
                why: e.to_string(),
            })?;
        }
    }
    if roots.is_empty() {
        return Ok(None);
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map(Some)
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))
}

/// A rustls client configuration for one relay's settings.
pub fn client_config(
    mode: TlsMode,
    ca_file: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    let cfg = match mode {
        TlsMode::Required | TlsMode::Implicit => match strict_verifier(ca_file)? {
            Some(v) => builder.with_webpki_verifier(v).with_no_client_auth(),
            None => return Err(TlsSetupError::NoAnchors(mode.as_str())),
        },
        TlsMode::None | TlsMode::Opportunistic => {
            // With a ca_file, the anchors are read now: a file that cannot be read is this
            // relay's set-up error. Without one, they are loaded at the first certificate to
            // verify: the system's store costs milliseconds of every start, and a relay that
            // never offers STARTTLS never needs it.
            let strict = OnceLock::new();
            if ca_file.is_some() {
                let _ = strict.set(strict_verifier(ca_file)?);
            }
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(LogOnFailure {
                    strict,
                    provider: provider(),
                }))
                .with_no_client_auth()
        }
    };
    Ok(Arc::new(cfg))
}

/// Opportunistic TLS: verify as strictly as `required` does, log a failure, accept anyway.
#[derive(Debug)]
struct LogOnFailure {
    /// The strict verifier, once built (`None` inside: no anchors to verify with).
    strict: OnceLock<Option<Arc<WebPkiServerVerifier>>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for LogOnFailure {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Only the system's anchors can be missing here (a ca_file's were read with the
        // client), and reading them does not fail: an unreadable store is an empty one.
        let strict = self
            .strict
            .get_or_init(|| strict_verifier(None).ok().flatten());
        let why = match strict {
            Some(v) => match v.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Ok(ok) => return Ok(ok),
                Err(e) => e.to_string(),
            },
            None => "no trust anchors to verify it with".to_owned(),
        };
        tracing::warn!(host = %server_name.to_str(), error = %why,
            "the relay's certificate does not verify; opportunistic TLS goes on encrypted");
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What the driver needs to put a connection under TLS.
#[derive(Clone)]
pub struct TlsTarget {
    /// The rustls client, with its trust anchors.
    pub connector: tokio_rustls::TlsConnector,
    /// The name the certificate must be valid for.
    pub name: ServerName<'static>,
}

impl std::fmt::Debug for TlsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTarget")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TlsTarget {
    /// For a relay `host` (a name or an IP address literal).
    pub fn new(config: Arc<rustls::ClientConfig>, host: &str) -> Result<Self, TlsSetupError> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| TlsSetupError::Rustls(format!("{host:?} is no TLS server name: {e}")))?;
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(config),
            name,
        })
    }
}

/// What a client configuration depends on: the mode and the extra trust anchors.
type ConfigKey = (TlsMode, Option<PathBuf>);

/// Client configurations built once per (mode, ca_file) and shared by every connection.
#[derive(Debug, Default)]
pub struct TlsConfigs {
    built: Mutex<HashMap<ConfigKey, Arc<rustls::ClientConfig>>>,
}

impl TlsConfigs {
    /// The client configuration for these trust settings (built once, then shared).
    pub fn get(
        &self,
        mode: TlsMode,
        ca_file: Option<&Path>,
    ) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
        let key = (mode, ca_file.map(Path::to_path_buf));
        let mut m = self
            .built
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = m.get(&key) {
            return Ok(c.clone());
        }
        let c = client_config(mode, ca_file)?;
        m.insert(key, c.clone());
        Ok(c)
    }
}

/// `TLSv1.3`, `TLSv1.2`: the negotiated version as the ledger and the log write it.
pub fn version_name(v: Option<rustls::ProtocolVersion>) -> &'static str {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLS",
    }
}
