//! TLS and AUTH as the IIS SMTP service does them: STARTTLS (RFC 3207) with a certificate the
//! mock generates at start (its CA written where a test can trust it) or one it is given, an
//! implicit-TLS mode (TLS from the first byte, port 465 style), AUTH LOGIN and PLAIN (RFC 4954,
//! 4616) with users from the configuration, and switches that make TLS or AUTH a requirement.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::MockError;

/// `[tls]`: STARTTLS and implicit TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Offer STARTTLS in EHLO and accept it.
    pub starttls: bool,
    /// Refuse MAIL (and AUTH) before STARTTLS with `530 5.7.0 Must issue a STARTTLS command
    /// first`.
    pub require: bool,
    /// Every connection is TLS from its first byte (an implicit-TLS listener).
    pub implicit: bool,
    /// The certificate chain (PEM) and its key (PEM) to serve; when absent, the mock generates a
    /// CA and a certificate for its hostname, `localhost` and `127.0.0.1` at start.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Where to write the generated CA (PEM) for clients to trust.
    pub ca_file_out: Option<PathBuf>,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        self.starttls || self.implicit
    }
}

/// `[auth]`: SMTP AUTH.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// user name -> password. Non-empty: AUTH LOGIN and PLAIN are offered (IIS's lines:
    /// `AUTH=LOGIN` and `AUTH GSSAPI NTLM LOGIN`, plus PLAIN on the second line).
    pub users: BTreeMap<String, String>,
    /// Refuse MAIL before a successful AUTH with `530 5.7.1 Client was not authenticated`.
    pub require: bool,
}

/// What a session needs to serve TLS: the acceptor and the CA a client should trust.
#[derive(Clone)]
pub(crate) struct TlsServer {
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
    /// The generated CA (PEM), or the given chain's last certificate.
    pub(crate) ca_pem: String,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer").finish_non_exhaustive()
    }
}

fn cfg_err(what: impl std::fmt::Display) -> MockError {
    MockError::Config(format!("tls: {what}"))
}

/// Build the TLS server of a mock (`None` when TLS is off).
pub(crate) fn server(cfg: &TlsConfig, hostname: &str) -> Result<Option<TlsServer>, MockError> {
    if !cfg.enabled() {
        return Ok(None);
    }
    let (chain, key, ca_pem) = match (&cfg.cert_file, &cfg.key_file) {
        (Some(c), Some(k)) => {
            let io = |p: &PathBuf| {
                let path = p.clone();
                move |e: rustls::pki_types::pem::Error| cfg_err(format!("{}: {e}", path.display()))
            };
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(c)
                .map_err(io(c))?
                .collect::<Result<_, _>>()
                .map_err(io(c))?;
            let key = PrivateKeyDer::from_pem_file(k).map_err(io(k))?;
            let pem = std::fs::read_to_string(c).map_err(|source| MockError::Io {
                path: c.clone(),
                source,
            })?;
            (chain, key, pem)
        }
        (None, None) => generate(hostname)?,
        _ => return Err(cfg_err("cert_file and key_file go together")),
    };
    if let Some(out) = &cfg.ca_file_out {
        std::fs::write(out, &ca_pem).map_err(|source| MockError::Io {
            path: out.clone(),
            source,
        })?;
    }
    // ring, not aws-lc-rs: no C/cmake build (rustls deprecates it for lacking post-quantum
    // key exchange, which a test relay does not need).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(cfg_err)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(cfg_err)?;
    Ok(Some(TlsServer {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        ca_pem,
    }))
}

/// A CA and a server certificate it signed, as PEM: for a TLS peer a test starts (aiosmtpd,
/// Postfix) and the client that must trust it.
#[derive(Debug, Clone)]
pub struct TestCertificates {
    /// The CA certificate: what a client trusts.
    pub ca_pem: String,
    /// The server certificate, then the CA's.
    pub chain_pem: String,
    /// The server's private key (PKCS#8).
    pub key_pem: String,
}

impl TestCertificates {
    /// For `hostname`, `localhost` and `127.0.0.1`.
    pub fn generate(hostname: &str) -> Result<Self, MockError> {
        let (chain, _key, ca_pem, key_pem) = generate_parts(hostname)?;
        let chain_pem = chain
            .iter()
            .map(|c| pem_of("CERTIFICATE", c))
            .collect::<String>();
        Ok(Self {
            ca_pem,
            chain_pem,
            key_pem,
        })
    }
}

fn pem_of(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(&String::from_utf8_lossy(chunk));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

fn generate(
    hostname: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, String), MockError> {
    let (chain, key, ca, _) = generate_parts(hostname)?;
    Ok((chain, key, ca))
}

type Parts = (
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
    String,
    String,
);

/// A CA and a server certificate signed by it for `hostname`, `localhost` and `127.0.0.1`.
fn generate_parts(hostname: &str) -> Result<Parts, MockError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(cfg_err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "mock-mta test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(cfg_err)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(cfg_err)?;
    let issuer = Issuer::new(ca, ca_key);
    let mut names = vec![hostname.to_owned()];
    for n in ["localhost", "127.0.0.1"] {
        if !names.iter().any(|h| h == n) {
            names.push(n.to_owned());
        }
    }
    let mut leaf = CertificateParams::new(names).map_err(cfg_err)?;
    leaf.distinguished_name.push(DnType::CommonName, hostname);
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate().map_err(cfg_err)?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(cfg_err)?;
    let key = PrivateKeyDer::try_from(leaf_key.serialize_der()).map_err(cfg_err)?;
    Ok((
        vec![leaf_cert.der().clone(), ca_cert.der().clone()],
        key,
        ca_cert.pem(),
        leaf_key.serialize_pem(),
    ))
}

/// The name rustls gives a negotiated version, as the journal writes it (`TLSv1.3`).
pub(crate) fn version_name(v: Option<rustls::ProtocolVersion>) -> String {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".into(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".into(),
        Some(other) => format!("{other:?}"),
        None => "TLS".into(),
    }
}

/// Decode base64 (an AUTH exchange line); `None` when it is not base64 or not UTF-8.
pub(crate) fn b64_text(s: &str) -> Option<String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()?;
    String::from_utf8(bytes).ok()
}
