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
//! `UNAVAILABLE` (HTTP 503) (on Redis, a caller with an attempt key
//! keeps its place there for its retry through another replica); open
//! connections get `--shutdown-grace` to finish, and are then closed.
//!
//! Each connection, from accept to close, is served in `server/connection.rs`.

use std::{future::Future, io, net::SocketAddr, sync::Arc};

use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tonic::service::Routes;

mod connection;

use connection::{ConnectionSettings, accepted_stream, serve_grpc, serve_http};

use crate::{
    auth::{Auth, TokenFileError},
    config::Config,
    gateway::Gateway,
    grpc::GrpcService,
    health::Health,
    metrics::{Listener, Metrics},
    pairing::{AnyEngine, Engine, EngineError, EngineLimits},
    proto,
    service::{Limits, Rendezvous},
    tls::{Tls, TlsError},
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
        addr: crate::config::ListenAddr,
        /// What the operating system said.
        source: io::Error,
    },
    /// `--tls-cert`, `--tls-key` or `--tls-client-ca` could not be used.
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] TlsError),
    /// `--auth-token-file` could not be read, or has a bad line.
    #[error("cannot load the token file: {0}")]
    Auth(#[from] TokenFileError),
    /// The reflection service could not load the descriptor set.
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The listener's address could not be read back.
    #[error("cannot read a listener's address: {0}")]
    Io(#[from] io::Error),
    /// The engine's flags are not usable.
    #[error(transparent)]
    Engine(#[from] EngineError),
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
    engine: Arc<AnyEngine>,
    metrics: Metrics,
    auth: Option<Arc<Auth>>,
    tls: Option<Arc<Tls>>,
}

/// Reloads what SIGHUP reloads (the token file, the TLS certificate and
/// key), keeping the old contents of whatever is unusable.
#[derive(Debug, Clone)]
pub struct Reloader {
    auth: Option<Arc<Auth>>,
    tls: Option<Arc<Tls>>,
}

impl Reloader {
    /// Reloads, and logs each outcome: an error keeps the old contents.
    pub fn reload(&self) {
        if let Some(auth) = &self.auth {
            match auth.reload() {
                Ok(tokens) => tracing::info!(tokens, "reloaded the token file"),
                Err(error) => tracing::error!(%error, "kept the old tokens"),
            }
        }
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(()) => tracing::info!("reloaded the TLS certificate and key"),
                Err(error) => tracing::error!(%error, "kept the old TLS certificate"),
            }
        }
    }
}

impl Application {
    /// Binds both listeners from `config`.
    pub async fn build(config: Config) -> Result<Self, ServerError> {
        let bind = |what, addr: crate::config::ListenAddr| async move {
            TcpListener::bind(addr.to_host_port())
                .await
                .map_err(|source| ServerError::Bind { what, addr, source })
        };
        let grpc = bind("gRPC", config.grpc_addr.clone()).await?;
        let http = bind("HTTP", config.http_addr.clone()).await?;
        Self::from_listeners(config, grpc, http)
    }

    /// A server on listeners bound elsewhere (a test, socket activation); the
    /// addresses in `config` are not used.
    ///
    /// The engine is chosen here, by [`AnyEngine::build`].
    pub fn from_listeners(
        config: Config,
        grpc: TcpListener,
        http: TcpListener,
    ) -> Result<Self, ServerError> {
        let mut metrics = Metrics::new();
        metrics.set_max_waiters(config.max_waiters);
        crate::telemetry::register_metrics(metrics.registry_mut());
        let limits = EngineLimits {
            max_waiters: config.max_waiters,
            max_group_bytes: config.max_group_bytes,
        };
        let choice = config.engine(limits).map_err(EngineError::from)?;
        let engine = Arc::new(AnyEngine::build(choice, metrics.registry_mut())?);
        let auth = match &config.auth_token_file {
            Some(path) => Some(Arc::new(Auth::load(path.clone())?)),
            None => None,
        };
        let tls = match config.tls_files() {
            Some(files) => Some(Arc::new(Tls::load(files)?)),
            None => None,
        };
        Ok(Self {
            config,
            grpc,
            http,
            engine,
            metrics,
            auth,
            tls,
        })
    }

    /// What SIGHUP should call, to reload the token file.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            auth: self.auth.clone(),
            tls: self.tls.clone(),
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
    pub fn engine(&self) -> Arc<AnyEngine> {
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
            metrics,
            auth,
            tls,
        } = self;
        let limits = Limits::of(&config);
        let metrics = Arc::new(metrics);
        let service = Rendezvous::new(engine.clone(), limits)
            .with_metrics(metrics.clone())
            .with_auth(auth);
        let (health, health_server) = Health::serving().await;
        let health = Arc::new(health);
        let follower = tokio::spawn(follow_reachability(
            engine.reachable(),
            engine.unreachable_reason(),
            health.clone(),
        ));

        let routes = Routes::new(health_server)
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?)
            .prepare();
        let cors = crate::grpc::cors(&config.cors_allow_origin);
        let grpc_service = Arc::new(GrpcService::new(service.clone(), routes, cors));
        let gateway = Arc::new(Gateway::new(service, health.clone()));

        let age = config.connection_age();
        // Every setting in force, so an operator can see what the flags and
        // environment added up to.
        let duration = |d| humantime::format_duration(d).to_string();
        tracing::info!(
            grpc = %grpc.local_addr()?,
            http = %http.local_addr()?,
            default_wait = duration(config.default_wait()),
            max_wait = duration(config.max_wait),
            max_payload = config.max_payload,
            max_waiters = config.max_waiters,
            max_connections = config.max_connections,
            shutdown_grace = duration(config.shutdown_grace),
            header_timeout = duration(config.header_timeout),
            tcp_keepalive = duration(config.tcp_keepalive),
            max_connection_age = age.map(|a| duration(a.age)),
            max_connection_age_grace = age.map(|a| duration(a.grace)),
            http2_max_streams = config.http2.max_concurrent_streams,
            http2_connection_window = config.http2.connection_window,
            http2_stream_window = config.http2.stream_window,
            http2_keepalive_interval = duration(config.http2.keepalive_interval),
            http2_keepalive_timeout = duration(config.http2.keepalive_timeout),
            cors_allow_origin = config.cors_allow_origin.join(","),
            tokens = config.auth_token_file.is_some(),
            tls = config.tls_cert.is_some(),
            client_certificates = config.tls_client_ca.is_some(),
            "listening"
        );

        let settings = ConnectionSettings {
            header_timeout: config.header_timeout,
            http2: config.http2,
            age,
            metrics: metrics.clone(),
            tls,
        };
        let (stop, stopping) = watch::channel(false);
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = grpc.accept() => {
                    if let Some(stream) = accepted_stream(accepted, &config, connections.len()).await {
                        metrics.connection_accepted(Listener::Grpc);
                        connections.spawn(serve_grpc(stream, grpc_service.clone(), settings.clone(), stopping.clone()));
                    }
                }
                accepted = http.accept() => {
                    if let Some(stream) = accepted_stream(accepted, &config, connections.len()).await {
                        metrics.connection_accepted(Listener::Http);
                        connections.spawn(serve_http(stream, gateway.clone(), settings.clone(), stopping.clone()));
                    }
                }
                // Reap finished connections so the set does not grow forever.
                Some(_) = connections.join_next() => {}
            }
        }

        tracing::info!(open_connections = connections.len(), "shutting down");
        follower.abort();
        health.drain().await;
        drop((grpc, http));
        let parked = engine.waiting();
        let grace = tokio::time::Instant::now() + config.shutdown_grace;
        // Answers the parked callers, and waits (within the grace period)
        // until their entries are gone from a shared store.
        let closed = tokio::time::timeout_at(grace, engine.close()).await;
        let _ = stop.send(true);
        tracing::info!(
            parked,
            cleaned_up = closed.is_ok(),
            "answered parked callers UNAVAILABLE"
        );

        let drained = tokio::time::timeout_at(grace, async {
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

/// Readiness follows whether the meeting place can be reached.
async fn follow_reachability(
    mut reachable: tokio::sync::watch::Receiver<bool>,
    reason: &'static str,
    health: Arc<Health>,
) {
    loop {
        let now = *reachable.borrow_and_update();
        health
            .set_reachable(if now { Ok(()) } else { Err(reason) })
            .await;
        if reachable.changed().await.is_err() {
            return;
        }
    }
}

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
