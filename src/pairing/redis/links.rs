//! The replica's two connections to Redis, whichever kind of deployment
//! serves it: how they are made (and made again, after a Sentinel failover),
//! and the few commands whose routing differs between one primary and a
//! cluster.
//!
//! - **One primary** (`redis://`): two [`ConnectionManager`]s, which
//!   reconnect to the same address by themselves.
//! - **Sentinel** (`redis+sentinel://`): the same two, to the primary the
//!   Sentinels name, once it has said `ROLE` master itself. When the replica
//!   loses Redis it asks the Sentinels again, so that it follows a failover.
//! - **Cluster** (`redis+cluster://`): two cluster connections, which follow
//!   `MOVED`, `ASK` and topology changes by themselves, and re-subscribe
//!   shard channels on the node that serves them now.

use std::{sync::Arc, time::Duration};

use redis::{
    Client, Cmd, ConnectionAddr, IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo,
    RedisFuture, TlsMode, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::{ClusterClient, ClusterClientBuilder},
    cluster_async::ClusterConnection,
    cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo},
    sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType},
};

use super::config::{Access, Deployment, RedisConfig, RedisError, redact};

/// Where pushes (messages, and news of a dropped connection) go.
pub(super) type Pushes = Arc<dyn Fn(PushInfo) + Send + Sync>;

/// One connection, to a primary or to a cluster.
#[derive(Clone)]
pub(super) enum Conn {
    Managed(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Managed(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Managed(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Managed(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// Subscribes `channel`: a shard channel in a cluster, where a classic
    /// one would be broadcast to every node.
    pub(super) async fn subscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Self::Managed(c) => c.subscribe(channel).await,
            Self::Cluster(c) => c.ssubscribe(channel).await,
        }
    }

    /// PING on every primary: one of a cluster's may be the one that is
    /// down.
    pub(super) async fn ping(&mut self) -> redis::RedisResult<()> {
        let mut ping = redis::cmd("PING");
        match self {
            Self::Managed(c) => ping.exec_async(c).await,
            Self::Cluster(c) => {
                ping.arg("rendezvous");
                let all_answered = every_primary(Some(ResponsePolicy::AllSucceeded));
                c.route_command(ping, all_answered).await.map(drop)
            }
        }
    }

    /// Whether every primary says the cluster serves all its slots
    /// (`cluster_state:ok`): while a cluster forms or fails over, a node may
    /// answer, and even deliver shard messages, while scripts get
    /// `CLUSTERDOWN`. Always so for one primary.
    pub(super) async fn cluster_ok(&mut self) -> redis::RedisResult<bool> {
        let Self::Cluster(c) = self else {
            return Ok(true);
        };
        let mut info = redis::cmd("CLUSTER");
        info.arg("INFO");
        // No policy: each primary's answer, by node.
        let answers = c.route_command(info, every_primary(None)).await?;
        let texts: Vec<String> = match answers {
            Value::Map(answers) => answers
                .into_iter()
                .map(|(_, text)| redis::from_redis_value::<String>(text))
                .collect::<Result<_, _>>()
                .map_err(redis::RedisError::from)?,
            text => vec![redis::from_redis_value::<String>(text).map_err(redis::RedisError::from)?],
        };
        Ok(!texts.is_empty() && texts.iter().all(|t| t.contains("cluster_state:ok")))
    }

    /// Whether this connection's node is a primary (`ROLE`), where only a
    /// Sentinel failover can turn it into a replica under the replica's feet.
    pub(super) async fn is_primary(&mut self) -> redis::RedisResult<bool> {
        match self {
            Self::Managed(c) => {
                let role: redis::Role = redis::cmd("ROLE").query_async(c).await?;
                Ok(matches!(role, redis::Role::Primary { .. }))
            }
            Self::Cluster(_) => Ok(true),
        }
    }
}

/// The callers' commands, and the subscription with the probe's PING: see
/// the engine's module docs for why they are apart.
#[derive(Clone)]
pub(super) struct Links {
    pub(super) commands: Conn,
    pub(super) subscriber: Conn,
    /// Where they lead, for logs: the primary's address, or the seeds.
    pub(super) place: String,
}

/// Makes [`Links`] for the deployment that `--redis-url` names.
// One per replica: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub(super) enum Connector {
    Single(Client),
    Sentinel {
        client: tokio::sync::Mutex<SentinelClient>,
        master: String,
        sentinels: String,
        /// Each Sentinel's address, to ask whether it knows the master at all.
        addresses: Vec<redis::ConnectionInfo>,
    },
    Cluster {
        seeds: Vec<(String, u16)>,
        access: Access,
        timeout: Duration,
        place: String,
    },
}

impl Connector {
    /// Checks the configuration; connects nothing yet.
    pub(super) fn new(deployment: &Deployment, config: &RedisConfig) -> Result<Self, RedisError> {
        let bad_url = |reason: String| RedisError::BadUrl {
            url: redact(&config.url),
            reason,
        };
        if config.sentinel_password.is_some() && !matches!(deployment, Deployment::Sentinel { .. })
        {
            return Err(RedisError::SentinelPasswordWithoutSentinel);
        }
        if deployment.tls() {
            // rustls needs a process-wide provider; the server's TLS uses ring.
            let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        }
        match deployment {
            Deployment::Single { url } => {
                let mut info = url
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| bad_url(e.to_string()))?;
                let mut settings = info.redis_settings().clone();
                if let Some(password) = &config.password {
                    settings = settings.set_password(password);
                }
                info = info.set_redis_settings(settings.set_protocol(ProtocolVersion::RESP3));
                Ok(Self::Single(
                    Client::open(info).map_err(|e| bad_url(e.to_string()))?,
                ))
            }
            Deployment::Sentinel {
                sentinels,
                master,
                access,
            } => {
                let addresses: Vec<_> = sentinels
                    .iter()
                    .map(|(host, port)| address(host, *port, access.tls))
                    .collect();
                let mut infos = Vec::new();
                for address in &addresses {
                    let mut info = address
                        .clone()
                        .into_connection_info()
                        .map_err(|e| bad_url(e.to_string()))?;
                    if let Some(password) = &config.sentinel_password {
                        let settings = info.redis_settings().clone().set_password(password);
                        info = info.set_redis_settings(settings);
                    }
                    infos.push(info);
                }
                let mut builder =
                    SentinelClientBuilder::new(addresses, master, SentinelServerType::Master)
                        .map_err(|e| bad_url(e.to_string()))?
                        .set_client_to_redis_protocol(ProtocolVersion::RESP3);
                if access.tls {
                    builder = builder
                        .set_client_to_redis_tls_mode(TlsMode::Secure)
                        .set_client_to_sentinel_tls_mode(TlsMode::Secure);
                }
                if let Some(username) = &access.username {
                    builder = builder.set_client_to_redis_username(username);
                }
                if let Some(password) = &access.password {
                    builder = builder.set_client_to_redis_password(password);
                }
                if let Some(password) = &config.sentinel_password {
                    builder = builder.set_client_to_sentinel_password(password);
                }
                Ok(Self::Sentinel {
                    client: tokio::sync::Mutex::new(
                        builder.build().map_err(|e| bad_url(e.to_string()))?,
                    ),
                    master: master.clone(),
                    sentinels: list(sentinels),
                    addresses: infos,
                })
            }
            Deployment::Cluster { seeds, access } => {
                let connector = Self::Cluster {
                    seeds: seeds.clone(),
                    access: access.clone(),
                    timeout: config.timeout,
                    place: list(seeds),
                };
                // Checked now, so that a bad setting fails at start-up.
                connector
                    .cluster_client(None)
                    .map_err(|e| bad_url(e.to_string()))?;
                Ok(connector)
            }
        }
    }

    /// A client for the cluster, which sends its pushes to `pushes`.
    fn cluster_client(&self, pushes: Option<&Pushes>) -> redis::RedisResult<ClusterClient> {
        let Self::Cluster {
            seeds,
            access,
            timeout,
            ..
        } = self
        else {
            unreachable!("only a cluster connector makes cluster clients")
        };
        let nodes = seeds
            .iter()
            .map(|(host, port)| address(host, *port, access.tls));
        let mut builder = ClusterClientBuilder::new(nodes)
            .use_protocol(ProtocolVersion::RESP3)
            .connection_timeout(*timeout)
            // A redirection or a node that is failing over is retried inside
            // the connection, briefly: the probe, not a long backoff,
            // decides that Redis is lost.
            .retries(3)
            .min_retry_wait(10)
            .max_retry_wait(200);
        builder = match pushes {
            None => builder.response_timeout(*timeout * super::COMMANDS_WAIT),
            Some(pushes) => builder
                .response_timeout(*timeout)
                .push_sender(sender(pushes)),
        };
        if access.tls {
            builder = builder.tls(TlsMode::Secure);
        }
        if let Some(username) = &access.username {
            builder = builder.username(username);
        }
        if let Some(password) = &access.password {
            builder = builder.password(password);
        }
        builder.build()
    }

    /// Connects both links, or says why not in words for the log and for
    /// callers. `timeout` bounds each step.
    pub(super) async fn connect(
        &self,
        pushes: &Pushes,
        timeout: Duration,
    ) -> Result<Links, Problem> {
        let within = |what: String| {
            move |_| {
                Problem::passing(format!(
                    "{what} did not answer within {}",
                    humantime::format_duration(timeout)
                ))
            }
        };
        match self {
            Self::Single(client) => {
                let (commands, subscriber) =
                    managed(client.clone(), pushes, timeout).map_err(Problem::passing)?;
                Ok(Links {
                    commands,
                    subscriber,
                    place: redact(&client.get_connection_info().addr().to_string()),
                })
            }
            Self::Sentinel {
                client,
                master,
                sentinels,
                addresses,
            } => {
                let found = tokio::time::timeout(timeout * 2, async {
                    client.lock().await.async_get_client().await
                })
                .await
                .map_err(within(format!("the Sentinels {sentinels}")))?;
                let found = match found {
                    Ok(found) => found,
                    Err(error) => {
                        return Err(sentinel_problem(
                            &error, master, sentinels, addresses, timeout,
                        )
                        .await);
                    }
                };
                let place = found.get_connection_info().addr().to_string();
                let (mut commands, subscriber) =
                    managed(found, pushes, timeout).map_err(Problem::passing)?;
                // The Sentinels may name a primary that has just been turned
                // into a replica: check with the node itself.
                let primary = tokio::time::timeout(timeout, commands.is_primary())
                    .await
                    .map_err(within(format!("the primary {place}")))?
                    .map_err(|e| {
                        Problem::passing(format!("cannot reach the primary {place}: {e}"))
                    })?;
                if !primary {
                    return Err(Problem::passing(format!(
                        "the Sentinels name {place} as {master:?}'s primary, but it is a replica \
                         (a failover under way?)"
                    )));
                }
                Ok(Links {
                    commands,
                    subscriber,
                    place,
                })
            }
            Self::Cluster { place, .. } => {
                let clients = self
                    .cluster_client(None)
                    .and_then(|commands| Ok((commands, self.cluster_client(Some(pushes))?)))
                    .map_err(|e| Problem::passing(e.to_string()))?;
                let both = tokio::time::timeout(timeout * 2, async {
                    Ok::<_, redis::RedisError>((
                        clients.0.get_async_connection().await?,
                        clients.1.get_async_connection().await?,
                    ))
                })
                .await
                .map_err(within(format!("the cluster at {place}")))?
                .map_err(|error| cluster_problem(&error, place))?;
                Ok(Links {
                    commands: Conn::Cluster(both.0),
                    subscriber: Conn::Cluster(both.1),
                    place: place.clone(),
                })
            }
        }
    }

    /// Whether a lost Redis is found again by making the links again:
    /// Sentinel moves the primary to another address, and a cluster
    /// connection whose node died can keep routing to it (a fresh one asks
    /// the seeds for the slots). One primary's managers reconnect by
    /// themselves.
    pub(super) fn remakes_links(&self) -> bool {
        !matches!(self, Self::Single(_))
    }

    /// Whether a `ROLE` check belongs in the probe: only under Sentinel can
    /// a failover turn the primary into a replica under a replica's feet.
    pub(super) fn checks_role(&self) -> bool {
        matches!(self, Self::Sentinel { .. })
    }

    /// Whether channels are shard channels, one per bucket: only in a
    /// cluster, where a classic channel's receiver count covers one node.
    pub(super) fn sharded(&self) -> bool {
        matches!(self, Self::Cluster { .. })
    }
}

/// The two managed connections to one primary.
fn managed(client: Client, pushes: &Pushes, timeout: Duration) -> Result<(Conn, Conn), String> {
    // The probe retries on its own schedule; a long backoff inside the
    // managers would only hold calls up.
    let config = || {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(timeout)
    };
    let callers = config().set_response_timeout(Some(timeout * super::COMMANDS_WAIT));
    let commands = ConnectionManager::new_lazy_with_config(client.clone(), callers)
        .map_err(|e| e.to_string())?;
    let subscribing = config()
        .set_push_sender(sender(pushes))
        .set_automatic_resubscription()
        .set_response_timeout(Some(timeout));
    let subscriber =
        ConnectionManager::new_lazy_with_config(client, subscribing).map_err(|e| e.to_string())?;
    Ok((Conn::Managed(commands), Conn::Managed(subscriber)))
}

/// Hands a connection's pushes to `pushes`, which never refuses one.
fn sender(pushes: &Pushes) -> impl redis::aio::AsyncPushSender + Clone {
    let pushes = pushes.clone();
    move |push: PushInfo| -> Result<(), std::convert::Infallible> {
        pushes(push);
        Ok(())
    }
}

/// A command for every primary of a cluster, its answers combined by
/// `policy` (or each one returned, by node, with `None`).
fn every_primary(policy: Option<ResponsePolicy>) -> RoutingInfo {
    RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, policy))
}

fn address(host: &str, port: u16, tls: bool) -> ConnectionAddr {
    match tls {
        false => ConnectionAddr::Tcp(host.to_owned(), port),
        true => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: false,
            tls_params: None,
        },
    }
}

fn list(nodes: &[(String, u16)]) -> String {
    nodes
        .iter()
        .map(|(host, port)| match host.contains(':') {
            true => format!("[{host}]:{port}"),
            false => format!("{host}:{port}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Why the links could not be made: in words for the log and for callers,
/// and whether it is the configuration (nothing but a fix will help) rather
/// than something that passes (a node starting, a failover).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Problem {
    pub(super) reason: String,
    pub(super) misconfigured: bool,
}

impl Problem {
    pub(super) fn passing(reason: String) -> Self {
        Self {
            reason,
            misconfigured: false,
        }
    }

    fn misconfigured(reason: String) -> Self {
        Self {
            reason,
            misconfigured: true,
        }
    }
}

/// A Sentinel lookup's failure, in words that name what to fix. The
/// Sentinels say "not found" both for a name they do not know and for a
/// master that is down (a failover under way): asking one of them for the
/// name tells the two apart.
async fn sentinel_problem(
    error: &redis::RedisError,
    master: &str,
    sentinels: &str,
    addresses: &[redis::ConnectionInfo],
    timeout: Duration,
) -> Problem {
    if error.kind() != redis::ErrorKind::MasterNameNotFoundBySentinel {
        return Problem::passing(match error.is_io_error() || error.is_connection_refusal() {
            true => format!("no Sentinel of {sentinels} answered: {error}"),
            false => format!("the Sentinels {sentinels} failed: {error}"),
        });
    }
    for address in addresses {
        let ask = async {
            let mut connection = Client::open(address.clone())?
                .get_multiplexed_async_connection()
                .await?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(master)
                .query_async::<Option<(String, u16)>>(&mut connection)
                .await
        };
        match tokio::time::timeout(timeout, ask).await {
            Ok(Ok(None)) => {
                return Problem::misconfigured(format!(
                    "the Sentinels {sentinels} know no master named {master:?}: check the name \
                     after the last '/' in --redis-url"
                ));
            }
            Ok(Ok(Some((host, port)))) => {
                return Problem::passing(format!(
                    "the Sentinels' primary for {master:?}, {host}:{port}, is down or being \
                     replaced (a failover under way?)"
                ));
            }
            _ => continue,
        }
    }
    Problem::passing(format!("no Sentinel of {sentinels} answered"))
}

/// A cluster connection's failure, in words that name what to fix.
fn cluster_problem(error: &redis::RedisError, seeds: &str) -> Problem {
    let text = error.to_string();
    if text.contains("cluster support disabled") {
        return Problem::misconfigured(format!(
            "{seeds} is not a cluster (its cluster support is disabled): use redis:// for one \
             primary, or redis+sentinel:// under Sentinel"
        ));
    }
    Problem::passing(format!("cannot reach the cluster at {seeds}: {text}"))
}
