//! Connections to the targets, over gRPC or HTTP/1.1 (with TLS and a token
//! if given), and one call over them.

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rendezvous::client::{Client, ClientOptions};
use tokio::{net::TcpStream, sync::mpsc};
use tonic::Code;

use crate::{CallOutcome, Target, Transport};

/// Connections to each target, and one call over them.
#[derive(Clone)]
pub(crate) struct Load(Arc<[TargetClient]>);

impl Load {
    pub(crate) async fn connect(target: &Target, connections: usize) -> Self {
        let mut clients = Vec::with_capacity(target.target.len());
        for &addr in &target.target {
            clients.push(TargetClient::connect(target, addr, connections).await);
        }
        Self(clients.into())
    }

    /// A call from `slot`: consecutive slots go to different targets, so the
    /// two callers of a pair (slots 2i and 2i + 1) meet across replicas.
    pub(crate) async fn call(&self, slot: usize, id: String) -> CallOutcome {
        let targets = self.0.len();
        self.0[slot % targets].call(slot / targets, id).await
    }
}

/// Connections to one server, and one call over them.
#[derive(Clone)]
pub(crate) enum TargetClient {
    /// The clients, and whether each call sends an attempt key.
    Grpc(Arc<[Client]>, bool),
    Http(HttpPool),
}

impl TargetClient {
    pub(crate) async fn connect(target: &Target, addr: SocketAddr, connections: usize) -> Self {
        let options = client_options(target, addr);
        match target.protocol {
            Transport::Grpc => Self::Grpc(
                grpc_clients(&options, connections).await,
                target.attempt_keys,
            ),
            Transport::Http => Self::Http(
                HttpPool::connect(addr, connections, headers(&options), tls_connector(target))
                    .await,
            ),
        }
    }

    pub(crate) async fn call(&self, slot: usize, id: String) -> CallOutcome {
        match self {
            Self::Grpc(clients, keys) => {
                let client = &clients[slot % clients.len()];
                let key = match keys {
                    true => rendezvous::client::attempt_key(),
                    false => String::new(),
                };
                match client.wait_with_key(&id, Bytes::new(), None, &key).await {
                    Ok(_) => CallOutcome::Ok,
                    Err(status) if status.code() == Code::DeadlineExceeded => CallOutcome::Timeout,
                    Err(_) => CallOutcome::Error,
                }
            }
            Self::Http(pool) => pool.call(&id).await,
        }
    }
}

/// The client options for one target: its address, and `--tls-ca` (for a
/// certificate made out to "localhost") and `--token-file` if given.
pub(crate) fn client_options(target: &Target, addr: SocketAddr) -> ClientOptions {
    let mut options = ClientOptions::new(&addr.to_string()).expect("a socket address is valid");
    if let Some(ca) = &target.tls_ca {
        options = options.tls_ca(ca).tls_server_name("localhost");
    }
    if let Some(path) = &target.token_file {
        options = options.token_file(path).expect("a usable --token-file");
    }
    if let Some(traceparent) = &target.traceparent {
        options = options.traceparent(traceparent);
    }
    options
}

/// What an HTTP caller sends with every call: the token and the
/// traceparent, if the options have them.
pub(crate) fn headers(options: &ClientOptions) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    if let Some(value) = options.authorization() {
        headers.insert(http::header::AUTHORIZATION, value);
    }
    if let Some(value) = options.traceparent_header() {
        headers.insert("traceparent", value);
    }
    headers
}

/// `connections` gRPC connections made from `options`.
pub(crate) async fn grpc_clients(options: &ClientOptions, connections: usize) -> Arc<[Client]> {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let channel = options
            .endpoint()
            .expect("usable client options")
            // Windows large enough that flow control never stalls tens of
            // thousands of parked streams.
            .initial_connection_window_size(16 << 20)
            .initial_stream_window_size(1 << 20)
            .connect()
            .await
            .expect("connects to the target");
        clients.push(Client::from_channel(channel, options));
    }
    clients.into()
}

/// One HTTP/1.1 connection's request handle.
pub(crate) type HttpSender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// HTTP/1.1 connections, each used by one call at a time.
#[derive(Clone)]
pub(crate) struct HttpPool {
    target: SocketAddr,
    /// Sent with every call: the token and the traceparent, if set.
    headers: http::HeaderMap,
    tls: Option<tokio_rustls::TlsConnector>,
    free: Arc<tokio::sync::Mutex<mpsc::Receiver<HttpSender>>>,
    give_back: mpsc::Sender<HttpSender>,
}

impl HttpPool {
    pub(crate) async fn connect(
        target: SocketAddr,
        connections: usize,
        headers: http::HeaderMap,
        tls: Option<tokio_rustls::TlsConnector>,
    ) -> Self {
        let (give_back, free) = mpsc::channel(connections);
        for _ in 0..connections {
            give_back
                .send(Self::open(target, tls.as_ref()).await)
                .await
                .unwrap();
        }
        Self {
            target,
            headers,
            tls,
            free: Arc::new(tokio::sync::Mutex::new(free)),
            give_back,
        }
    }

    pub(crate) async fn open(
        target: SocketAddr,
        tls: Option<&tokio_rustls::TlsConnector>,
    ) -> HttpSender {
        let stream = TcpStream::connect(target)
            .await
            .expect("connects to the target");
        stream.set_nodelay(true).unwrap();
        let Some(tls) = tls else {
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("HTTP/1.1 handshake");
            tokio::spawn(connection);
            return sender;
        };
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let stream = tls.connect(name, stream).await.expect("TLS handshake");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(connection);
        sender
    }

    /// A free connection, waiting for one if all are in use.
    pub(crate) async fn take(&self) -> HttpSender {
        self.free.lock().await.recv().await.expect("pool open")
    }

    /// Returns a connection to the pool, replacing it if the server closed it.
    pub(crate) async fn put_back(&self, sender: HttpSender) {
        let sender = match sender.is_closed() {
            true => Self::open(self.target, self.tls.as_ref()).await,
            false => sender,
        };
        let _ = self.give_back.send(sender).await;
    }

    pub(crate) async fn call(&self, id: &str) -> CallOutcome {
        let mut sender = self.take().await;
        let mut request = http::Request::post(format!("/wait-for-second-party/{id}"))
            .header(http::header::HOST, self.target.to_string())
            .body(Full::default())
            .unwrap();
        for (name, value) in &self.headers {
            request.headers_mut().insert(name, value.clone());
        }
        let outcome = match sender.send_request(request).await {
            Ok(response) => {
                let status = response.status();
                let complete = response.into_body().collect().await.is_ok();
                match status.as_u16() {
                    200 if complete => CallOutcome::Ok,
                    408 => CallOutcome::Timeout,
                    _ => CallOutcome::Error,
                }
            }
            Err(_) => CallOutcome::Error,
        };
        self.put_back(sender).await;
        outcome
    }
}

/// A rustls client for `--tls-ca`, speaking HTTP/1.1.
pub(crate) fn tls_connector(target: &Target) -> Option<tokio_rustls::TlsConnector> {
    use tokio_rustls::rustls::{
        self,
        pki_types::{CertificateDer, pem::PemObject},
    };
    let path = target.tls_ca.as_ref()?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).expect("reads the CA file") {
        roots.add(cert.expect("a PEM certificate")).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
