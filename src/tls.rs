//! TLS on both listeners, with rustls: the same certificate and key for each,
//! client certificates required when `--tls-client-ca` is set (mTLS), and a
//! reload from disk on SIGHUP that keeps serving the old certificate if the
//! new files are unusable.

use std::{path::PathBuf, sync::Arc};

use arc_swap::ArcSwap;
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, RootCertStore, ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::WebPkiClientVerifier,
    },
};

/// Where the certificate, key and (for mTLS) client CA live.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificates that client certificates must chain to.
    pub client_ca: Option<PathBuf>,
}

/// Why the TLS files could not be used. On reload, the old ones stay.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("cannot use {path}: {problem}")]
    File {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// rustls refused the combination (a key that does not match, say).
    #[error("cannot build the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The client CA file could not make a verifier.
    #[error("cannot use the client CA: {0}")]
    ClientCa(#[from] rustls::server::VerifierBuilderError),
}

/// The TLS configurations in force, one per listener (their ALPN differs).
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    grpc: ArcSwap<ServerConfig>,
    http: ArcSwap<ServerConfig>,
}

/// gRPC is HTTP/2 only.
const GRPC_ALPN: &[&[u8]] = &[b"h2"];
/// The HTTP port speaks both, as it does in cleartext.
const HTTP_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

impl Tls {
    /// Loads the files, failing (so the server does not start) if unusable.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let (grpc, http) = build(&files)?;
        Ok(Self {
            files,
            grpc: ArcSwap::from_pointee(grpc),
            http: ArcSwap::from_pointee(http),
        })
    }

    /// Reads the files again. Open connections keep their sessions; new
    /// ones get the new certificate. On error nothing changes.
    pub fn reload(&self) -> Result<(), TlsError> {
        let (grpc, http) = build(&self.files)?;
        self.grpc.store(Arc::new(grpc));
        self.http.store(Arc::new(http));
        Ok(())
    }

    /// An acceptor with the gRPC listener's current configuration.
    pub fn grpc_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.grpc.load_full())
    }

    /// An acceptor with the HTTP listener's current configuration.
    pub fn http_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.http.load_full())
    }
}

/// The gRPC and HTTP configurations, from one reading of the files, so that
/// both listeners always serve the same certificate (a file rewritten
/// between two readings could otherwise split them).
fn build(files: &TlsFiles) -> Result<(ServerConfig, ServerConfig), TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(path)? {
                roots.add(cert)?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::File {
        path: files.key.clone(),
        problem: e.to_string(),
    })?;
    let mut grpc = builder.with_single_cert(certificates(&files.cert)?, key)?;
    let mut http = grpc.clone();
    grpc.alpn_protocols = alpn(GRPC_ALPN);
    http.alpn_protocols = alpn(HTTP_ALPN);
    Ok((grpc, http))
}

fn alpn(protocols: &[&[u8]]) -> Vec<Vec<u8>> {
    protocols.iter().map(|p| p.to_vec()).collect()
}

fn certificates(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let problem = |problem: String| TlsError::File {
        path: path.clone(),
        problem,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| problem(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(e.to_string()))?;
    if certs.is_empty() {
        return Err(problem("no PEM certificate in it".into()));
    }
    Ok(certs)
}
