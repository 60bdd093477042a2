//! What a client needs to connect, checked before any connection is made:
//! where the server is, how to trust it (TLS, a CA, a client certificate),
//! and what to prove to it (a bearer token).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use tonic::{
    metadata::AsciiMetadataValue,
    transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Uri},
};

use crate::trace::TraceContext;

/// The server a client talks to when it is given none: the server's own
/// default gRPC address.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// The longest a connection may take to open, whatever the calls' deadlines.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a client could not be set up. Errors from calls are `tonic::Status`.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server address is not `HOST:PORT` or an `http(s)://` URI.
    #[error("{address:?} is not a server address ({why}); use HOST:PORT or https://HOST:PORT")]
    BadServer {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        why: String,
    },
    /// A file named in the options could not be read.
    #[error("cannot read the {what} {path}: {source}")]
    Read {
        /// Which file: "token file", "CA certificate", ...
        what: &'static str,
        /// The file named in the options.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The token is empty, or cannot be a header value.
    #[error("the token{} {why}", match path {
        Some(path) => format!(" in {}", path.display()),
        None => String::new(),
    })]
    BadToken {
        /// The file it came from, if it came from one.
        path: Option<PathBuf>,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The TLS settings could not be used (a bad certificate, say).
    #[error("cannot set up TLS: {0}")]
    Tls(#[source] tonic::transport::Error),
    /// The server could not be reached.
    #[error("cannot connect to {server}: {source}")]
    Connect {
        /// The server's URI.
        server: Uri,
        /// What went wrong, from the transport.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Where the server is, how to trust it, and what to prove to it: all that a
/// connection needs, checked before any connection is made.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub(super) server: Uri,
    pub(super) tls_ca: Option<PathBuf>,
    pub(super) identity: Option<(PathBuf, PathBuf)>,
    pub(super) tls_server_name: Option<String>,
    /// `Bearer <token>`, ready to send.
    pub(super) authorization: Option<AsciiMetadataValue>,
    /// A valid W3C `traceparent`, ready to send.
    pub(super) traceparent: Option<AsciiMetadataValue>,
}

impl ClientOptions {
    /// Options for the server at `server`: `HOST:PORT` (plain HTTP/2),
    /// `http://HOST:PORT`, or `https://HOST:PORT` (TLS, trusting the
    /// system's CAs unless [`ClientOptions::tls_ca`] says otherwise).
    pub fn new(server: &str) -> Result<Self, ClientError> {
        let bad = |why: String| ClientError::BadServer {
            address: server.into(),
            why,
        };
        let with_scheme = match server.contains("://") {
            true => server.to_owned(),
            false => format!("http://{server}"),
        };
        let uri: Uri = with_scheme.parse().map_err(|e| bad(format!("{e}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(bad("the scheme must be http or https".into()));
        }
        if uri.port_u16().is_none() {
            return Err(bad("it has no port".into()));
        }
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(bad("a server address has no path".into()));
        }
        Ok(Self {
            server: uri,
            tls_ca: None,
            identity: None,
            tls_server_name: None,
            authorization: None,
            traceparent: None,
        })
    }

    /// Trusts the server's certificate only if it chains to these PEM CA
    /// certificates, and speaks TLS whatever the address's scheme.
    pub fn tls_ca(self, ca: impl Into<PathBuf>) -> Self {
        Self {
            tls_ca: Some(ca.into()),
            ..self
        }
    }

    /// Presents this PEM certificate chain and key, for a server that
    /// requires client certificates (mTLS). Implies TLS.
    pub fn client_identity(self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            identity: Some((cert.into(), key.into())),
            ..self
        }
    }

    /// Expects the server's certificate to be for `name` rather than for the
    /// address's host (an address that is an IP, a tunnel). Implies TLS.
    pub fn tls_server_name(self, name: impl Into<String>) -> Self {
        Self {
            tls_server_name: Some(name.into()),
            ..self
        }
    }

    /// Sends this bearer token with every rendezvous call, for a server run
    /// with `--auth-token-file`.
    pub fn token(self, token: &str) -> Result<Self, ClientError> {
        let bad = |why| ClientError::BadToken { path: None, why };
        if token.trim().is_empty() {
            return Err(bad("is empty"));
        }
        let authorization = AsciiMetadataValue::try_from(format!("Bearer {}", token.trim()))
            .map_err(|_| bad("holds a character that cannot go in a header"))?;
        Ok(Self {
            authorization: Some(authorization),
            ..self
        })
    }

    /// [`ClientOptions::token`], read from the first line of a file, so that
    /// it never shows in a command line or a process list.
    pub fn token_file(self, path: &Path) -> Result<Self, ClientError> {
        let text = read("token file", path)?;
        let text = String::from_utf8_lossy(&text);
        let first = text.lines().next().unwrap_or_default();
        self.token(first).map_err(|error| match error {
            ClientError::BadToken { why, .. } => ClientError::BadToken {
                path: Some(path.to_owned()),
                why,
            },
            other => other,
        })
    }

    /// Sends this W3C `traceparent` with every rendezvous call, so that the
    /// server's log lines for the call, and its partner's, carry this trace
    /// id. A malformed one is dropped, not sent, as Trace Context asks of
    /// anyone who would pass one on.
    pub fn traceparent(self, value: &str) -> Self {
        let valid = TraceContext::from_traceparent(value.as_bytes()).is_some();
        Self {
            traceparent: valid.then(|| value.parse().expect("a valid traceparent is ASCII")),
            ..self
        }
    }

    /// The `traceparent` header these options send, if any: for a caller
    /// that also speaks HTTP to the gateway (the load tool).
    pub fn traceparent_header(&self) -> Option<http::HeaderValue> {
        http_header(self.traceparent.as_ref())
    }

    /// The `authorization` header these options send, if any: for a caller
    /// that also speaks HTTP to the gateway (the load tool).
    pub fn authorization(&self) -> Option<http::HeaderValue> {
        http_header(self.authorization.as_ref())
    }

    /// The server's URI.
    pub fn server(&self) -> &Uri {
        &self.server
    }

    /// Whether connections use TLS: an `https` address, or any TLS option.
    pub fn uses_tls(&self) -> bool {
        self.server.scheme_str() == Some("https")
            || self.tls_ca.is_some()
            || self.identity.is_some()
            || self.tls_server_name.is_some()
    }

    /// The endpoint these options describe, for a caller that wants to tune
    /// it further (the load tool sets flow-control windows) before
    /// connecting. Reads the TLS files now, so a bad one fails here.
    pub fn endpoint(&self) -> Result<Endpoint, ClientError> {
        let uri = match self.uses_tls() && self.server.scheme_str() == Some("http") {
            // TLS was asked for by an option: the address's scheme follows.
            true => {
                let authority = self.server.authority().expect("checked in new").as_str();
                format!("https://{authority}")
                    .parse()
                    .expect("a valid URI with another scheme")
            }
            false => self.server.clone(),
        };
        let mut endpoint = Endpoint::from(uri)
            // A call's own deadline, when shorter, ends it sooner.
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if self.uses_tls() {
            endpoint = endpoint
                .tls_config(self.tls_config()?)
                .map_err(ClientError::Tls)?;
        }
        Ok(endpoint)
    }

    fn tls_config(&self) -> Result<ClientTlsConfig, ClientError> {
        let mut tls = ClientTlsConfig::new();
        tls = match &self.tls_ca {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read("CA certificate", ca)?)),
            None => tls.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(
                read("client certificate", cert)?,
                read("client key", key)?,
            ));
        }
        if let Some(name) = &self.tls_server_name {
            tls = tls.domain_name(name);
        }
        Ok(tls)
    }
}

/// A gRPC metadata value as the HTTP header it is on the wire.
pub(super) fn http_header(value: Option<&AsciiMetadataValue>) -> Option<http::HeaderValue> {
    let value = value?;
    Some(http::HeaderValue::from_bytes(value.as_bytes()).expect("a valid metadata value"))
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}
