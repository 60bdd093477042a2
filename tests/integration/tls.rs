//! TLS and mTLS on both listeners, with certificates made at run time, and
//! a certificate reloaded while serving.

use crate::common::{self, client_on};

use std::{path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use common::{Ca, Leaf, TestServer, request, within, write};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rendezvous::{Config, proto::sync_client::SyncClient};
use tokio_rustls::{
    TlsConnector,
    rustls::{
        self, ClientConfig, RootCertStore,
        pki_types::{CertificateDer, ServerName, pem::PemObject},
    },
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

async fn tls_server(dir: &Path, server: &Leaf, client_ca: Option<&Ca>) -> TestServer {
    TestServer::with(Config {
        tls_cert: Some(write(dir, "server.pem", &server.cert)),
        tls_key: Some(write(dir, "server.key", &server.key)),
        tls_client_ca: client_ca.map(|ca| write(dir, "client-ca.pem", &ca.pem)),
        max_wait: Duration::from_secs(5),
        ..common::test_config()
    })
    .await
}

async fn grpc_client(
    server: &TestServer,
    ca: &Ca,
    identity: Option<&Leaf>,
) -> Result<SyncClient<Channel>, tonic::transport::Error> {
    Ok(SyncClient::new(grpc_channel(server, ca, identity).await?))
}

async fn grpc_channel(
    server: &TestServer,
    ca: &Ca,
    identity: Option<&Leaf>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca.pem))
        .domain_name("localhost");
    if let Some(leaf) = identity {
        tls = tls.identity(Identity::from_pem(&leaf.cert, &leaf.key));
    }
    Channel::from_shared(format!("https://{}", server.grpc_addr))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

/// An HTTPS request with rustls and hyper, as any HTTPS client would send it.
/// `GET /readyz` over HTTPS, trusting `ca`: the status, or a panic if the
/// handshake fails.
async fn readyz_status(addr: std::net::SocketAddr, ca: &Ca) -> u16 {
    https(addr, ca, http::Method::GET, "/readyz")
        .await
        .unwrap()
        .0
}

/// A TLS connection to `addr` that trusts `ca` and offers `alpn`.
async fn tls_connect(
    addr: std::net::SocketAddr,
    ca: &Ca,
    alpn: &[u8],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())
}

/// A client that trusts only `ca` refuses the server's certificate: the
/// server no longer serves one that `ca` signed.
async fn assert_certificate_not_trusted(addr: std::net::SocketAddr, ca: &Ca) {
    let refused = https(addr, ca, http::Method::GET, "/healthz").await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("invalid peer certificate")),
        "{refused:?}"
    );
}

async fn https(
    addr: std::net::SocketAddr,
    ca: &Ca,
    method: http::Method,
    path: &str,
) -> Result<(u16, String), String> {
    let tls = tls_connect(addr, ca, b"http/1.1").await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    // Debug, for the cause: with TLS 1.3 a refused client certificate shows
    // as the server's alert on the first read, under hyper's own error.
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test]
async fn grpc_over_tls_pairs_with_https() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let server = tls_server(dir.path(), &ca.leaf(&["localhost", "127.0.0.1"]), None).await;

    let mut client = grpc_client(&server, &ca, None).await.unwrap();
    let waiter = tokio::spawn(async move {
        client
            .wait_for_second_party(request("secure", b"over tls"))
            .await
    });
    server.parked(1).await;
    let (status, body) = https(
        server.http_addr,
        &ca,
        http::Method::POST,
        "/wait-for-second-party/secure",
    )
    .await
    .unwrap();
    assert_eq!((status, body.as_str()), (200, "Synced"));
    let answer = within(waiter).await.unwrap().unwrap().into_inner();
    assert_eq!(answer.role(), rendezvous::proto::Role::First);
    assert_eq!(answer.peer_payload, Bytes::new());

    // A cleartext client gets no service from a TLS port: to an HTTP/2
    // preface, or an HTTP/1.1 request, the answer is a TLS alert (record
    // type 21) or nothing, never HTTP.
    for (addr, hello) in [
        (server.grpc_addr, &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..]),
        (
            server.http_addr,
            b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n",
        ),
    ] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
        plain.write_all(hello).await.unwrap();
        let mut answer = Vec::new();
        let _ = within(plain.read_to_end(&mut answer)).await;
        assert!(
            answer.is_empty() || answer[0] == 21,
            "{addr}: {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert_eq!(server.waiting(), 0);
}

#[tokio::test]
async fn mtls_refuses_a_client_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let clients = Ca::new();
    let server = tls_server(dir.path(), &ca.leaf(&["localhost"]), Some(&clients)).await;

    // Without a client certificate: the handshake fails, on both ports.
    let refused = match grpc_client(&server, &ca, None).await {
        Err(error) => format!("{error:?}"),
        Ok(mut client) => format!(
            "{:?}",
            client
                .wait_for_second_party(request("m", b""))
                .await
                .unwrap_err()
        ),
    };
    assert!(refused.contains("CertificateRequired"), "{refused}");
    let refused = https(
        server.http_addr,
        &ca,
        http::Method::POST,
        "/wait-for-second-party/m",
    )
    .await
    .unwrap_err();
    assert!(refused.contains("CertificateRequired"), "{refused}");
    assert_eq!(server.waiting(), 0);

    // With one from the client CA: served, and two such clients pair.
    let identity = clients.leaf(&["client"]);
    let first = grpc_channel(&server, &ca, Some(&identity)).await.unwrap();
    let second = grpc_channel(&server, &ca, Some(&identity)).await.unwrap();
    common::assert_pair(&server, client_on(first), client_on(second), "m").await;
}

#[tokio::test]
async fn a_reload_serves_the_new_certificate_and_a_bad_one_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (Ca::new(), Ca::new());
    let server = tls_server(dir.path(), &old_ca.leaf(&["localhost"]), None).await;
    assert_eq!(readyz_status(server.http_addr, &old_ca).await, 200);
    // A connection made before the reload, with a caller parked on it.
    let before = grpc_channel(&server, &old_ca, None).await.unwrap();
    let mut parked_before = SyncClient::new(before.clone());
    let waiter = tokio::spawn(async move {
        parked_before
            .wait_for_second_party(request("across-reload", b"old"))
            .await
    });
    server.parked(1).await;

    let new = new_ca.leaf(&["localhost"]);
    write(dir.path(), "server.pem", &new.cert);
    write(dir.path(), "server.key", &new.key);
    server.reloader.reload();
    assert_eq!(readyz_status(server.http_addr, &new_ca).await, 200);
    assert_certificate_not_trusted(server.http_addr, &old_ca).await;

    // The connection opened before is left alone: its parked caller pairs
    // with a caller on a new connection, and it takes new calls. (Were it
    // reconnected, the new certificate would fail its old CA.)
    let after = grpc_channel(&server, &new_ca, None).await.unwrap();
    let answer = SyncClient::new(after.clone())
        .wait_for_second_party(request("across-reload", b"new"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.peer_payload, "old");
    let answer = within(waiter).await.unwrap().unwrap().into_inner();
    assert_eq!(answer.peer_payload, "new");
    common::assert_pair(&server, client_on(before), client_on(after), "again").await;

    // A broken file on reload: the server keeps the certificate it has.
    write(dir.path(), "server.key", "not a key");
    server.reloader.reload();
    assert_eq!(readyz_status(server.http_addr, &new_ca).await, 200);
    assert_certificate_not_trusted(server.http_addr, &old_ca).await;
}

/// The same through the binary and a real SIGHUP.
#[tokio::test]
async fn sighup_reloads_the_certificate_in_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (Ca::new(), Ca::new());
    let old = old_ca.leaf(&["localhost"]);
    let cert = write(dir.path(), "server.pem", &old.cert);
    let key = write(dir.path(), "server.key", &old.key);
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let mut server = common::Process::start(&["--tls-cert", cert, "--tls-key", key]).await;
    let addr = server.http.parse().unwrap();
    assert_eq!(
        https(addr, &old_ca, http::Method::GET, "/healthz")
            .await
            .unwrap()
            .0,
        200
    );

    let new = new_ca.leaf(&["localhost"]);
    std::fs::write(cert, &new.cert).unwrap();
    std::fs::write(key, &new.key).unwrap();
    server.signal("HUP");
    server.next("reloaded the TLS certificate and key").await;
    assert_eq!(
        https(addr, &new_ca, http::Method::GET, "/healthz")
            .await
            .unwrap()
            .0,
        200
    );
    assert_certificate_not_trusted(addr, &old_ca).await;
}

/// Over TLS, HTTP/2 clients must send their preface within
/// `--header-timeout` too (hyper alone would wait for it forever): a client
/// that completes the handshake and then stalls is cut off, on both ports,
/// while HTTP/2 over TLS works on both.
#[tokio::test]
async fn a_tls_client_that_stalls_before_its_http2_preface_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let leaf = ca.leaf(&["localhost"]);
    let server = TestServer::with(Config {
        tls_cert: Some(write(dir.path(), "server.pem", &leaf.cert)),
        tls_key: Some(write(dir.path(), "server.key", &leaf.key)),
        header_timeout: Duration::from_secs(2),
        ..common::test_config()
    })
    .await;
    let stall = |addr, start: &'static [u8]| {
        let ca = &ca;
        async move {
            let mut tls = tls_connect(addr, ca, b"h2").await.unwrap();
            tls.write_all(start).await.unwrap();
            let mut rest = Vec::new();
            let read = within(tls.read_to_end(&mut rest)).await;
            // Closed, with nothing said: the server drops the connection
            // without a TLS close_notify, which rustls reports as such.
            let error = read.unwrap_err();
            assert_eq!(
                error.kind(),
                std::io::ErrorKind::UnexpectedEof,
                "{addr}: {error}"
            );
            assert_eq!(String::from_utf8_lossy(&rest), "", "{addr}");
        }
    };
    tokio::join!(
        stall(server.grpc_addr, b""),
        stall(server.http_addr, b""),
        stall(server.grpc_addr, b"PRI * HTTP/2.0\r\n"),
    );

    for addr in [server.grpc_addr, server.http_addr] {
        let tls = tls_connect(addr, &ca, b"h2").await.unwrap();
        let (h2, connection) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(connection);
        common::assert_h2_connection_serves(h2, &server, addr, "https").await;
    }
}
