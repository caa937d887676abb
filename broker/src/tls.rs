//! TLS settings shared by every MQTT and HTTPS endpoint of Demolab: PEM files in, rustls
//! configurations (ring provider) out.
//!
//! The embedded broker's TLS listener, the gateway's and the hub's MQTT clients and the hub's
//! HTTPS server all read their certificates here, so a missing, unreadable or invalid PEM file
//! is reported the same way everywhere: with the configuration key and the file it names
//! (`uplink.tls.ca_file: /etc/demolab/ca.pem holds no certificate in PEM form`).
//!
//! ```no_run
//! # fn demo() -> Result<(), demolab_broker::tls::TlsError> {
//! use demolab_broker::tls::ClientTlsFiles;
//! let files = ClientTlsFiles {
//!     ca_file: "ca.pem".into(),
//!     ..ClientTlsFiles::default()
//! };
//! let tls = files.load("uplink.tls")?;
//! let _rustls_config = tls.rustls_config();
//! # Ok(()) }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use serde::Deserialize;

/// Why TLS settings cannot be used; every variant names the configuration key (dotted, as the
/// caller passed its prefix) and, where there is one, the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("{key}: cannot read {}: {source}", path.display())]
    Read {
        /// The configuration key.
        key: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file holds nothing of the expected kind, or malformed PEM.
    #[error("{key}: {} {problem}", path.display())]
    Pem {
        /// The configuration key.
        key: String,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// rustls refused the material (a key that does not match its certificate, a CA that is
    /// not a certificate authority, ...).
    #[error("{key}: {problem}")]
    Rejected {
        /// The configuration key.
        key: String,
        /// What rustls said.
        problem: String,
    },
}

impl TlsError {
    /// The configuration key the error is about.
    pub fn key(&self) -> &str {
        match self {
            TlsError::Read { key, .. }
            | TlsError::Pem { key, .. }
            | TlsError::Rejected { key, .. } => key,
        }
    }
}

/// The client side of a TLS connection to an MQTT broker, as written in a configuration file
/// (`[uplink.tls]` of `gateway.toml`, `[broker.tls]` of `hub.toml`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsFiles {
    /// PEM file of the certificate authority (or authorities) that signed the broker's
    /// certificate. Only these are trusted: a lab network has its own CA, not a public one.
    pub ca_file: PathBuf,
    /// PEM certificate chain presented to the broker (mutual TLS); needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name the broker's certificate must carry when it differs from the host connected to
    /// (a broker reached by IP whose certificate names only its DNS name).
    #[serde(default)]
    pub server_name: Option<String>,
}

impl ClientTlsFiles {
    /// Reads and checks the files; errors name `{prefix}.ca_file` and so on.
    pub fn load(&self, prefix: &str) -> Result<ClientTls, TlsError> {
        let key = |name: &str| format!("{prefix}.{name}");
        let roots = read_certificates(&key("ca_file"), &self.ca_file)?;
        let mut store = RootCertStore::empty();
        for cert in roots {
            store.add(cert).map_err(|err| TlsError::Rejected {
                key: key("ca_file"),
                problem: format!("{}: {err}", self.ca_file.display()),
            })?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                .build()
                .map_err(|err| TlsError::Rejected {
                    key: key("ca_file"),
                    problem: err.to_string(),
                })?;
        let verifier: Arc<dyn ServerCertVerifier> = match &self.server_name {
            Some(name) => Arc::new(FixedServerName {
                name: ServerName::try_from(name.clone()).map_err(|_| TlsError::Rejected {
                    key: key("server_name"),
                    problem: format!("{name:?} is neither a DNS name nor an IP address"),
                })?,
                inner: verifier,
            }),
            None => verifier,
        };
        let builder = client_builder(&provider, &key("ca_file"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&self.cert_file, &self.key_file) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert_file), Some(key_file)) => {
                let chain = read_certificates(&key("cert_file"), cert_file)?;
                let private = read_private_key(&key("key_file"), key_file)?;
                builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|err| TlsError::Rejected {
                        key: key("key_file"),
                        problem: format!(
                            "{} with {}: {err}",
                            key_file.display(),
                            cert_file.display()
                        ),
                    })?
            }
            (Some(_), None) => {
                return Err(TlsError::Rejected {
                    key: key("key_file"),
                    problem: "needed with cert_file".into(),
                });
            }
            (None, Some(_)) => {
                return Err(TlsError::Rejected {
                    key: key("cert_file"),
                    problem: "needed with key_file".into(),
                });
            }
        };
        Ok(ClientTls {
            config: Arc::new(config),
            files: self.clone(),
        })
    }
}

/// A loaded client configuration, cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    files: ClientTlsFiles,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &Self) -> bool {
        self.files == other.files
    }
}

impl ClientTls {
    /// The rustls configuration, for rumqttc's `TlsConfiguration::Rustls` or a TLS connector.
    pub fn rustls_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config)
    }

    /// The files it was loaded from.
    pub fn files(&self) -> &ClientTlsFiles {
        &self.files
    }
}

/// The server side: a certificate chain and its key, optionally a CA that client certificates
/// must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA for client certificates; `None` accepts clients without one.
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: refuse clients that present no certificate.
    pub require_client_cert: bool,
}

impl ServerTlsFiles {
    /// Reads and checks the files; errors name `{prefix}.{cert_key}` etc., where the keys are
    /// the names the caller's file uses for the three paths.
    pub fn load(&self, keys: [&str; 3]) -> Result<ServerConfig, TlsError> {
        let [cert_key, key_key, ca_key] = keys;
        let chain = read_certificates(cert_key, &self.cert_file)?;
        let private = read_private_key(key_key, &self.key_file)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|err| TlsError::Rejected {
                key: cert_key.to_owned(),
                problem: err.to_string(),
            })?;
        let builder = match &self.client_ca_file {
            Some(ca_file) => {
                let mut store = RootCertStore::empty();
                for cert in read_certificates(ca_key, ca_file)? {
                    store.add(cert).map_err(|err| TlsError::Rejected {
                        key: ca_key.to_owned(),
                        problem: format!("{}: {err}", ca_file.display()),
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider);
                let verifier = if self.require_client_cert {
                    verifier.build()
                } else {
                    verifier.allow_unauthenticated().build()
                }
                .map_err(|err| TlsError::Rejected {
                    key: ca_key.to_owned(),
                    problem: err.to_string(),
                })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        builder
            .with_single_cert(chain, private)
            .map_err(|err| TlsError::Rejected {
                key: key_key.to_owned(),
                problem: format!(
                    "{} does not fit {}: {err}",
                    self.key_file.display(),
                    self.cert_file.display()
                ),
            })
    }
}

fn client_builder(
    provider: &Arc<CryptoProvider>,
    key: &str,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, TlsError> {
    ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| TlsError::Rejected {
            key: key.to_owned(),
            problem: err.to_string(),
        })
}

fn read_file(key: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key: key.to_owned(),
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in a PEM file; none at all is an error, as is a malformed PEM section.
pub fn read_certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::Pem {
            key: key.to_owned(),
            path: path.to_owned(),
            problem: format!("is not valid PEM: {err}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            key: key.to_owned(),
            path: path.to_owned(),
            problem: "holds no certificate in PEM form".into(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn read_private_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|err| TlsError::Pem {
        key: key.to_owned(),
        path: path.to_owned(),
        problem: match err {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "holds no private key in PEM form".to_owned()
            }
            other => format!("is not a valid PEM private key: {other}"),
        },
    })
}

/// Verifies the broker's certificate against a configured name instead of the host connected
/// to (rumqttc always uses the host it dials as the TLS server name).
#[derive(Debug)]
struct FixedServerName {
    name: ServerName<'static>,
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for FixedServerName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ca_file_names_the_key_and_the_file() {
        let files = ClientTlsFiles {
            ca_file: "/nonexistent/ca.pem".into(),
            ..ClientTlsFiles::default()
        };
        let err = files.load("uplink.tls").unwrap_err();
        assert_eq!(err.key(), "uplink.tls.ca_file");
        let text = err.to_string();
        assert!(
            text.contains("uplink.tls.ca_file") && text.contains("/nonexistent/ca.pem"),
            "{text}"
        );
    }

    #[test]
    fn a_file_without_certificates_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = read_certificates("broker.tls_cert", &path).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("broker.tls_cert")
                && text.contains("empty.pem")
                && text.contains("no certificate"),
            "{text}"
        );
        let err = read_private_key("broker.tls_key", &path).unwrap_err();
        assert!(err.to_string().contains("no private key"), "{err}");
    }

    #[test]
    fn a_client_certificate_without_its_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca".to_owned()]).unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.cert.pem()).unwrap();
        let files = ClientTlsFiles {
            ca_file: ca_path.clone(),
            cert_file: Some(ca_path),
            ..ClientTlsFiles::default()
        };
        let err = files.load("tls").unwrap_err();
        assert_eq!(err.key(), "tls.key_file");
    }

    #[test]
    fn a_key_that_does_not_fit_the_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let one = rcgen::generate_simple_self_signed(vec!["one".to_owned()]).unwrap();
        let two = rcgen::generate_simple_self_signed(vec!["two".to_owned()]).unwrap();
        let cert_file = dir.path().join("one.pem");
        let key_file = dir.path().join("two.key");
        std::fs::write(&cert_file, one.cert.pem()).unwrap();
        std::fs::write(&key_file, two.signing_key.serialize_pem()).unwrap();
        let files = ServerTlsFiles {
            cert_file,
            key_file,
            client_ca_file: None,
            require_client_cert: false,
        };
        let err = files
            .load(["hub.tls_cert", "hub.tls_key", "hub.tls_client_ca"])
            .unwrap_err();
        assert_eq!(err.key(), "hub.tls_key", "{err}");
    }
}
