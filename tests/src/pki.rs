//! A certificate authority made at test time: a CA, a server certificate for `localhost` and
//! `127.0.0.1`, and a client certificate, written as PEM files into a test's temp dir.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// PEM files of one test PKI.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate (what clients trust).
    pub ca: PathBuf,
    /// The server's certificate chain (leaf then CA).
    pub server_cert: PathBuf,
    /// The server's key.
    pub server_key: PathBuf,
    /// A client certificate signed by the CA (mutual TLS).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

impl TestPki {
    /// Generates a fresh CA with a server and a client certificate under `dir/{name}-*.pem`.
    pub fn generate(dir: &Path, name: &str) -> anyhow::Result<Self> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let mut server_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        server_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate()?;
        let server = server_params.signed_by(&server_key, &ca)?;

        let mut client_params = CertificateParams::new(vec!["client.demolab.test".to_owned()])?;
        client_params
            .distinguished_name
            .push(DnType::CommonName, "test client");
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate()?;
        let client = client_params.signed_by(&client_key, &ca)?;

        let write = |file: &str, text: String| -> anyhow::Result<PathBuf> {
            let path = dir.join(format!("{name}-{file}"));
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        Ok(Self {
            ca: write("ca.pem", ca.pem())?,
            server_cert: write("server.pem", format!("{}{}", server.pem(), ca.pem()))?,
            server_key: write("server.key", server_key.serialize_pem())?,
            client_cert: write("client.pem", client.pem())?,
            client_key: write("client.key", client_key.serialize_pem())?,
        })
    }

    /// Client settings that trust this CA (no client certificate).
    pub fn client_files(&self) -> broker::tls::ClientTlsFiles {
        broker::tls::ClientTlsFiles {
            ca_file: self.ca.clone(),
            ..broker::tls::ClientTlsFiles::default()
        }
    }

    /// Server settings with this CA's server certificate.
    pub fn server_files(&self) -> broker::tls::ServerTlsFiles {
        broker::tls::ServerTlsFiles {
            cert_file: self.server_cert.clone(),
            key_file: self.server_key.clone(),
            client_ca_file: None,
            require_client_cert: false,
        }
    }
}
