//! Listeners, connections and shutdown: the wiring around the service.
//!
//! Connections are served with hyper directly rather than with tonic's
//! `Server`, for two reasons:
//! - tonic's server always adds its timeout layer, which answers
//!   `CANCELLED` instead of `DEADLINE_EXCEEDED` (see [`crate::grpc`]);
//! - tonic's graceful shutdown waits forever for open streams (a health
//!   `Watch` never ends), and shutdown here must be bounded.
//!
//! Shutdown runs in this order: health goes `NOT_SERVING`; the listeners
//! close, so new connections are refused; parked callers are answered
//! `UNAVAILABLE` (HTTP 503); open connections get `--shutdown-grace` to
//! finish, and are then closed.

use std::{convert::Infallible, future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulConnection},
    service::TowerToHyperService,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
};
use tonic::service::Routes;

use crate::{
    config::Config,
    gateway::Gateway,
    grpc,
    health::Health,
    pairing::{Engine, LocalEngine},
    proto,
    service::{Limits, Rendezvous},
};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be bound (address in use, no permission, ...).
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        /// Which listener: "gRPC" or "HTTP".
        what: &'static str,
        /// The address from the configuration.
        addr: SocketAddr,
        /// What the operating system said.
        source: io::Error,
    },
    /// The reflection service could not load the descriptor set.
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The listener's address could not be read back.
    #[error("cannot read a listener's address: {0}")]
    Io(#[from] io::Error),
}

/// A server whose listeners are bound but not yet serving.
///
/// Binding first lets callers learn the real addresses (port 0 in tests)
/// before anything runs.
#[derive(Debug)]
pub struct Application {
    config: Config,
    grpc: TcpListener,
    http: TcpListener,
    engine: Arc<LocalEngine>,
}

impl Application {
    /// Binds both listeners from `config`.
    pub async fn build(config: Config) -> Result<Self, ServerError> {
        let bind = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { what, addr, source })
        };
        let grpc = bind("gRPC", config.grpc_addr).await?;
        let http = bind("HTTP", config.http_addr).await?;
        Ok(Self::from_listeners(config, grpc, http))
    }

    /// A server on listeners bound elsewhere (a test, socket activation); the
    /// addresses in `config` are not used.
    pub fn from_listeners(config: Config, grpc: TcpListener, http: TcpListener) -> Self {
        let engine = Arc::new(LocalEngine::new());
        Self {
            config,
            grpc,
            http,
            engine,
        }
    }

    /// Where gRPC callers connect.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where HTTP callers and probes connect.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The pairing engine this server will use, so that a test or an
    /// embedding program can see how many callers are parked.
    pub fn engine(&self) -> Arc<LocalEngine> {
        self.engine.clone()
    }

    /// Serves until `shutdown` completes, then shuts down in order, and
    /// returns once every connection has finished or been closed.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServerError> {
        let Self {
            config,
            grpc,
            http,
            engine,
        } = self;
        let limits = Limits {
            max_wait: config.max_wait,
            max_payload: config.max_payload,
        };
        let service = Rendezvous::new(engine.clone(), limits);
        let (health, health_server) = Health::serving().await;
        let health = Arc::new(health);

        let routes = Routes::new(health_server)
            .add_service(grpc::server(service.clone()))
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?)
            .prepare();
        let gateway = Arc::new(Gateway::new(service, health.clone()));

        tracing::info!(
            grpc = %grpc.local_addr()?,
            http = %http.local_addr()?,
            max_wait = %humantime::format_duration(config.max_wait),
            max_payload = config.max_payload,
            "listening"
        );

        let (stop, stopping) = watch::channel(false);
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = grpc.accept() => {
                    if let Some(stream) = accepted_stream(accepted).await {
                        connections.spawn(serve_grpc(stream, routes.clone(), stopping.clone()));
                    }
                }
                accepted = http.accept() => {
                    if let Some(stream) = accepted_stream(accepted).await {
                        connections.spawn(serve_http(stream, gateway.clone(), stopping.clone()));
                    }
                }
                // Reap finished connections so the set does not grow forever.
                Some(_) = connections.join_next() => {}
            }
        }

        tracing::info!(open_connections = connections.len(), "shutting down");
        health.drain().await;
        drop((grpc, http));
        let parked = engine.waiting();
        engine.close();
        let _ = stop.send(true);
        tracing::info!(parked, "answered parked callers UNAVAILABLE");

        let drained = tokio::time::timeout(config.shutdown_grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                open_connections = connections.len(),
                grace = %humantime::format_duration(config.shutdown_grace),
                "grace period over; closing the remaining connections"
            );
            connections.shutdown().await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Serves gRPC on `grpc` and HTTP on `http` until `shutdown` completes.
///
/// The entry point for anything that brings its own listeners, such as tests
/// on port 0: `Application::from_listeners(..).run_until_stopped(..)`.
pub async fn run(
    config: Config,
    grpc: TcpListener,
    http: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    Application::from_listeners(config, grpc, http)
        .run_until_stopped(shutdown)
        .await
}

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Unwraps an accepted connection. Accept errors are mostly transient (a
/// peer that reset before we got to it, or out of file descriptors); the
/// pause keeps the latter from spinning the loop.
async fn accepted_stream(accepted: io::Result<(TcpStream, SocketAddr)>) -> Option<TcpStream> {
    match accepted {
        Ok((stream, _)) => {
            // Answers are tiny and latency is the product: do not batch them.
            let _ = stream.set_nodelay(true);
            Some(stream)
        }
        Err(error) => {
            tracing::warn!(%error, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

async fn serve_grpc(stream: TcpStream, routes: Routes, stopping: watch::Receiver<bool>) {
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(routes));
    drive(connection, stopping).await;
}

async fn serve_http(stream: TcpStream, gateway: Arc<Gateway>, stopping: watch::Receiver<bool>) {
    let service = service_fn(move |request| {
        let gateway = gateway.clone();
        async move { Ok::<_, Infallible>(gateway.handle(request).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    drive(connection, stopping).await;
}

/// Runs a connection to its end, asking it to finish gracefully (GOAWAY, or
/// close once idle) when shutdown begins.
async fn drive<C>(connection: C, mut stopping: watch::Receiver<bool>)
where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        // The flag only ever goes from false to true, so any change means stop.
        _ = stopping.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        // Peers that vanish or reset are routine; not worth a line at info.
        tracing::debug!(%error, "connection ended with an error");
    }
}
