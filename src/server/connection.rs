//! One connection, from accept to close: `--max-connections`, TCP
//! keepalive, TLS, telling HTTP/2 from HTTP/1.1 by its preface (and
//! replaying the bytes read to tell), `--header-timeout`, HTTP/2 settings,
//! ageing (`--max-connection-age`), and a graceful end at shutdown.

use std::{future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

use hyper::{
    body::Incoming,
    rt::bounds::Http2ServerConnExec,
    server::conn::{http1::Builder as Http1Builder, http2::Builder as Http2Builder},
    service::{HttpService, service_fn},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::graceful::GracefulConnection,
};
use socket2::{SockRef, TcpKeepalive};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite},
    net::TcpStream,
    sync::watch,
};
use tokio_rustls::TlsAcceptor;

use crate::{
    config::{Config, ConnectionAge, Http2Config},
    gateway::Gateway,
    grpc::GrpcService,
    metrics::Metrics,
    tls::Tls,
};

/// Unwraps an accepted connection, or turns it away when `--max-connections`
/// are already open. Accept errors are mostly transient (a peer that reset
/// before we got to it, or out of file descriptors); the pause keeps the
/// latter from spinning the loop.
pub(super) async fn accepted_stream(
    accepted: io::Result<(TcpStream, SocketAddr)>,
    config: &Config,
    open: usize,
) -> Option<TcpStream> {
    match accepted {
        Ok((stream, peer)) if open >= config.max_connections => {
            // Best effort, and never waited for: a plain HTTP answer that
            // says why (a gRPC client sees the connection close).
            let _ = stream.try_write(too_many_connections().as_bytes());
            tracing::debug!(%peer, open, "refused a connection: --max-connections reached");
            None
        }
        Ok((stream, _)) => {
            // Answers are tiny and latency is the product: do not batch them.
            let _ = stream.set_nodelay(true);
            // The only dead-peer detection HTTP/1.1 has (HTTP/2 also PINGs).
            let keepalive = TcpKeepalive::new()
                .with_time(config.tcp_keepalive)
                .with_interval(config.tcp_keepalive)
                .with_retries(3);
            let _ = SockRef::from(&stream).set_tcp_keepalive(&keepalive);
            Some(stream)
        }
        Err(error) => {
            tracing::warn!(%error, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

/// The answer to a connection over `--max-connections`, as plain HTTP/1.1.
fn too_many_connections() -> String {
    let body = "the server has --max-connections connections open; retry in a moment\n";
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         connection: close\r\nretry-after: 1\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// What each connection needs from the configuration: kept small, because
/// every connection task holds a copy for its whole life.
#[derive(Debug, Clone)]
pub(super) struct ConnectionSettings {
    pub(super) header_timeout: Duration,
    pub(super) http2: Http2Config,
    /// `None`: HTTP/2 connections live as long as their clients keep them.
    pub(super) age: Option<ConnectionAge>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) tls: Option<Arc<Tls>>,
}

/// Applies `--http2-*` to a connection builder; both listeners share them.
fn configure_http2(builder: &mut Http2Builder<TokioExecutor>, settings: &Http2Config) {
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .initial_connection_window_size(settings.connection_window)
        .initial_stream_window_size(settings.stream_window)
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout);
}

pub(super) async fn serve_grpc(
    stream: TcpStream,
    grpc: Arc<GrpcService>,
    config: ConnectionSettings,
    stopping: watch::Receiver<bool>,
) {
    let service = service_fn(move |request| grpc.handle(request));
    match &config.tls {
        None => {
            // Browsers' gRPC-Web comes over HTTP/1.1 in cleartext; gRPC
            // itself always starts with the HTTP/2 preface.
            let sniff = starts_with(&stream, &HTTP2_PREFACE[..4]);
            match tokio::time::timeout(config.header_timeout, sniff).await {
                Ok(Some(true)) => serve_http2(stream, service, &config, stopping).await,
                Ok(Some(false)) => Box::pin(serve_http1(stream, service, &config, stopping)).await,
                Ok(None) | Err(_) => {}
            }
        }
        Some(tls) => {
            let Some(stream) = handshake(tls.grpc_acceptor(), stream, &config).await else {
                return;
            };
            // Boxed, like every TLS connection: the session's state inline
            // would enlarge cleartext connections too.
            Box::pin(serve_http2(stream, service, &config, stopping)).await;
        }
    }
}

pub(super) async fn serve_http(
    stream: TcpStream,
    gateway: Arc<Gateway>,
    config: ConnectionSettings,
    stopping: watch::Receiver<bool>,
) {
    match &config.tls {
        None => {
            // hyper's own header timeout only starts once it has the
            // connection; a peer that sends nothing at all is dropped here
            // after as long.
            let sniff = starts_with(&stream, &HTTP2_PREFACE[..4]);
            let Ok(Some(http2)) = tokio::time::timeout(config.header_timeout, sniff).await else {
                return;
            };
            serve_http_on(stream, http2, gateway, &config, stopping).await;
        }
        Some(tls) => {
            let Some(stream) = handshake(tls.http_acceptor(), stream, &config).await else {
                return;
            };
            let http2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            Box::pin(serve_http_on(stream, http2, gateway, &config, stopping)).await;
        }
    }
}

/// Serves the HTTP port's protocols over cleartext or TLS.
async fn serve_http_on<I>(
    io: I,
    http2: bool,
    gateway: Arc<Gateway>,
    config: &ConnectionSettings,
    stopping: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| gateway.handle(request));
    if http2 {
        // Boxed: HTTP/2 is rare on this port, and its connection state inline
        // would make every HTTP/1.1 connection (one per parked legacy caller)
        // that much larger.
        Box::pin(serve_http2(io, service, config, stopping)).await;
    } else {
        serve_http1(io, service, config, stopping).await;
    }
}

/// Serves HTTP/1.1 on either port: the legacy endpoint and probes on the
/// HTTP port, gRPC-Web on the gRPC port.
///
/// Not an `async fn`: it returns `drive`'s future itself, so that the
/// connection is stored once (the crate doc's "What a parked caller
/// costs"); an HTTP/1.1 connection is what each parked legacy caller costs.
fn serve_http1<I, S, B>(
    io: I,
    service: S,
    config: &ConnectionSettings,
    stopping: watch::Receiver<bool>,
) -> impl Future<Output = ()>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = Http1Builder::new()
        .timer(TokioTimer::new())
        // Slowloris: the whole request head must arrive within this.
        .header_read_timeout(config.header_timeout)
        // hyper's minimum: it caps the request head (and each buffered
        // read) at 8 KiB instead of letting the read buffer double to 16.
        .max_buf_size(8192)
        .serve_connection(TokioIo::new(io), service);
    // HTTP/1.1 connections carry one call at a time, and a proxy's pool
    // spreads those; aging them would only cost every parked legacy caller
    // a timer.
    drive(connection, stopping, std::future::pending())
}

/// Serves HTTP/2 on either port, in cleartext or over TLS, once the client
/// has sent its whole preface within `--header-timeout`: hyper alone would
/// wait for it forever.
async fn serve_http2<I, S, B>(
    io: I,
    service: S,
    config: &ConnectionSettings,
    stopping: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: Http2ServerConnExec<S::Future, B>,
{
    let Some(io) = with_preface(io, config.header_timeout).await else {
        return;
    };
    let mut builder = Http2Builder::new(TokioExecutor::new());
    configure_http2(&mut builder, &config.http2);
    drive(
        builder.serve_connection(TokioIo::new(io), service),
        stopping,
        aged(config.age, &config.metrics),
    )
    .await;
}

/// Completes when a connection reaches `--max-connection-age` (never, if it
/// is not set), with the grace its calls in flight have from then on.
async fn aged(age: Option<ConnectionAge>, metrics: &Metrics) -> Duration {
    let Some(ConnectionAge { age, grace }) = age else {
        return std::future::pending().await;
    };
    tokio::time::sleep(jittered(age)).await;
    metrics.connection_aged();
    grace
}

/// `age`, plus or minus 10% at random, as gRPC does: connections opened
/// together (by clients that all reconnected after a deploy) do not all go
/// together.
fn jittered(age: Duration) -> Duration {
    age.mul_f64(0.9 + fastrand::f64() * 0.2)
}

/// A TLS handshake, held to `--header-timeout` like any request head. A
/// client that fails it (no client certificate under mTLS, a plaintext
/// client on a TLS port) is dropped and logged at debug.
async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    config: &ConnectionSettings,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(config.header_timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            tracing::debug!(%error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}

/// What an HTTP/2 client sends first. On the HTTP port, its first four
/// bytes tell prior-knowledge HTTP/2 from HTTP/1.1 (no method is PRI).
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a connection's first bytes are `expected`: `Some(true)` once
/// they all arrived, `Some(false)` as soon as one differs, `None` if the
/// peer closed first. Peeks, so nothing is consumed. Callers bound it with
/// `--header-timeout`.
async fn starts_with(stream: &TcpStream, expected: &[u8]) -> Option<bool> {
    let mut start = [0u8; HTTP2_PREFACE.len()];
    let start = &mut start[..expected.len()];
    loop {
        match stream.peek(start).await {
            Ok(0) | Err(_) => return None,
            Ok(n) if start[..n] != expected[..n] => return Some(false),
            Ok(n) if n == expected.len() => return Some(true),
            // peek returns at once while anything is buffered, so the rest
            // of a prefix split across packets is waited for with short
            // pauses.
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Reads an HTTP/2 client's preface within `timeout` (read, not peeked:
/// over TLS there is nothing to peek at), and gives it back in front of the
/// rest of the stream. `None` if it does not come in time. Anything other
/// than the preface is left for hyper to refuse.
async fn with_preface<I>(mut io: I, timeout: Duration) -> Option<Replayed<I>>
where
    I: AsyncRead + Unpin,
{
    let mut preface = [0u8; HTTP2_PREFACE.len()];
    match tokio::time::timeout(timeout, io.read_exact(&mut preface)).await {
        Ok(Ok(_)) => Some(Replayed {
            head: preface,
            replayed: 0,
            io,
        }),
        Ok(Err(_)) | Err(_) => None,
    }
}

pin_project_lite::pin_project! {
    /// A stream whose first bytes were read to check them, and are read
    /// again from here before the rest.
    struct Replayed<I> {
        head: [u8; HTTP2_PREFACE.len()],
        replayed: usize,
        #[pin]
        io: I,
    }
}

impl<I: AsyncRead> AsyncRead for Replayed<I> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let this = self.project();
        let rest = &this.head[*this.replayed..];
        if rest.is_empty() {
            return this.io.poll_read(cx, buf);
        }
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        *this.replayed += n;
        std::task::Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite> AsyncWrite for Replayed<I> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

/// Runs a connection to its end, asking it to finish gracefully (GOAWAY, or
/// close once idle) when shutdown begins, or when `aged` completes; then its
/// calls in flight have the grace `aged` returns to finish.
async fn drive<C>(
    connection: C,
    mut stopping: watch::Receiver<bool>,
    aged: impl Future<Output = Duration>,
) where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    tokio::pin!(connection);
    let result = tokio::select! {
        biased;
        result = connection.as_mut() => result,
        // The flag only ever goes from false to true, so any change means stop.
        _ = stopping.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        grace = aged => {
            tracing::debug!("connection reached --max-connection-age: sent GOAWAY");
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(grace, connection.as_mut()).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::debug!("closed an aged connection whose calls outlived its grace");
                    return;
                }
            }
        }
    };
    if let Err(error) = result {
        // Peers that vanish or reset are routine; not worth a line at info.
        tracing::debug!(%error, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ages_spread_over_ten_percent_either_way() {
        let age = Duration::from_secs(100);
        let ages: Vec<Duration> = (0..1000).map(|_| jittered(age)).collect();
        let (min, max) = (ages.iter().min().unwrap(), ages.iter().max().unwrap());
        assert!(*min >= Duration::from_secs(90), "{min:?}");
        assert!(*max <= Duration::from_secs(110), "{max:?}");
        // 1000 draws: both ends of the range are reached, within a second.
        assert!(*min < Duration::from_secs(91), "{min:?}");
        assert!(*max > Duration::from_secs(109), "{max:?}");
    }
}
