//! Configuration: every flag can also come from an environment variable, so
//! the same binary runs from a shell, a systemd unit or a container spec.

use std::{fmt, path::PathBuf, str::FromStr, time::Duration};

use clap::{Parser, ValueEnum};

/// The Redis engine's flags, which its module owns.
pub use crate::pairing::RedisArgs;
use crate::pairing::{EngineChoice, EngineLimits, RedisError};

pub(crate) mod values;

pub use crate::proto::PAYLOAD_CEILING;
pub(crate) use values::{
    duration, duration_problem, group_size, origin, payload_size, positive_duration, window_size,
};

const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:50051";
const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:3030";
/// What a caller that sets no deadline of its own waits: the old service's
/// 10 s, which its callers rely on.
const DEFAULT_WAIT: &str = "10s";
/// The longest wait a caller may ask for: long enough for a CI job waiting
/// on another job's queue and start-up, which takes minutes; short enough
/// that a client's mistake (a deadline of days) does not hold a place
/// against --max-waiters for longer than a working session.
const DEFAULT_MAX_WAIT: &str = "1h";
const DEFAULT_MAX_PAYLOAD: &str = "64KiB";
const DEFAULT_SHUTDOWN_GRACE: &str = "5s";
const DEFAULT_MAX_WAITERS: usize = 200_000;
const DEFAULT_MAX_PARTIES: u32 = 64;
const DEFAULT_MAX_GROUP_BYTES: &str = "1MiB";
const DEFAULT_ATTEMPT_GRACE: &str = "5s";

/// The largest `--max-parties` accepted.
pub const PARTIES_CEILING: u32 = 10_000;
const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
const DEFAULT_HEADER_TIMEOUT: &str = "30s";
const DEFAULT_TCP_KEEPALIVE: &str = "30s";
const DEFAULT_HTTP2_MAX_STREAMS: u32 = 32_768;
const DEFAULT_HTTP2_CONNECTION_WINDOW: &str = "64MiB";
const DEFAULT_HTTP2_STREAM_WINDOW: &str = "1MiB";
const DEFAULT_HTTP2_KEEPALIVE_INTERVAL: &str = "20s";
const DEFAULT_HTTP2_KEEPALIVE_TIMEOUT: &str = "20s";

/// The rendezvous server's settings.
#[derive(Debug, Clone, Parser)]
#[command(version, about, long_about = None)]
pub struct Config {
    /// Address for gRPC (HTTP/2; TLS with --tls-cert): rendezvous.v1.Sync, health, reflection.
    #[arg(long, env = "RENDEZVOUS_GRPC_ADDR", value_name = "ADDR", default_value = DEFAULT_GRPC_ADDR)]
    pub grpc_addr: ListenAddr,

    /// Address for HTTP/1.1 and HTTP/2: POST /wait-for-second-party/{id}, /healthz, /readyz, /metrics.
    #[arg(long, env = "RENDEZVOUS_HTTP_ADDR", value_name = "ADDR", default_value = DEFAULT_HTTP_ADDR)]
    pub http_addr: ListenAddr,

    /// How long a caller that sets no deadline of its own waits for its
    /// partner (no grpc-timeout; HTTP without ?wait=, as the legacy
    /// endpoint's callers). Never more than --max-wait.
    #[arg(long, env = "RENDEZVOUS_DEFAULT_WAIT", value_name = "DURATION", default_value = DEFAULT_WAIT, value_parser = positive_duration)]
    pub default_wait: Duration,

    /// The longest a caller may wait for its partner (250ms, 10s, 5m, 1h,
    /// ...): a longer gRPC deadline or HTTP ?wait= is cut to it, and its
    /// DEADLINE_EXCEEDED says so.
    #[arg(long, env = "RENDEZVOUS_MAX_WAIT", value_name = "DURATION", default_value = DEFAULT_MAX_WAIT, value_parser = positive_duration)]
    pub max_wait: Duration,

    /// The largest payload a caller may send (512B, 64KiB, 1MiB, ...; at most 16MiB).
    #[arg(long, env = "RENDEZVOUS_MAX_PAYLOAD", value_name = "SIZE", default_value = DEFAULT_MAX_PAYLOAD, value_parser = payload_size)]
    pub max_payload: usize,

    /// The largest group a WaitForParties caller may ask for (2 to 10000).
    /// Every member of a group that is still forming counts against
    /// --max-waiters.
    #[arg(long, env = "RENDEZVOUS_MAX_PARTIES", value_name = "N", default_value_t = DEFAULT_MAX_PARTIES, value_parser = clap::value_parser!(u32).range(2..=PARTIES_CEILING as i64))]
    pub max_parties: u32,

    /// The most bytes of payloads one group of more than two may hold: every
    /// member is answered with all of them, and gRPC clients refuse answers
    /// over 4MiB unless told otherwise. A caller whose payload would go over
    /// is refused (RESOURCE_EXHAUSTED, or HTTP 413). Pairs are held to
    /// --max-payload alone.
    #[arg(long, env = "RENDEZVOUS_MAX_GROUP_BYTES", value_name = "SIZE", default_value = DEFAULT_MAX_GROUP_BYTES, value_parser = group_size)]
    pub max_group_bytes: usize,

    /// How long a call with an attempt key keeps its place after its caller
    /// went away, so that a retry with the same key takes it back; and how
    /// long its answer is kept for such a retry. Never past the caller's
    /// deadline while it waits. 0s turns attempt keys off: they are then
    /// accepted, and ignored.
    #[arg(long, env = "RENDEZVOUS_ATTEMPT_GRACE", value_name = "DURATION", default_value = DEFAULT_ATTEMPT_GRACE, value_parser = humantime::parse_duration)]
    pub attempt_grace: Duration,

    /// Log line format. RUST_LOG filters what is logged (default: info).
    #[arg(long, env = "RENDEZVOUS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// How long shutdown waits for open connections to finish after parked
    /// callers were answered UNAVAILABLE, before closing them anyway.
    #[arg(long, env = "RENDEZVOUS_SHUTDOWN_GRACE", value_name = "DURATION", default_value = DEFAULT_SHUTDOWN_GRACE, value_parser = duration)]
    pub shutdown_grace: Duration,

    /// The most callers that may wait at once in this process (per replica
    /// with --redis-url), over both protocols. Past it, a caller that would
    /// have to wait is refused (RESOURCE_EXHAUSTED, or HTTP 503 with
    /// Retry-After); one that completes a pair is always let in. From 65536
    /// up, a caller may be refused up to 0.4% early.
    #[arg(long, env = "RENDEZVOUS_MAX_WAITERS", value_name = "N", default_value_t = DEFAULT_MAX_WAITERS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_waiters: usize,

    /// Require bearer tokens: a file with one `TOKEN [NAMESPACE]` per line.
    /// Callers meet only within their token's namespace. Reloaded on SIGHUP.
    /// Health, reflection, /healthz, /readyz and /metrics stay open to probes.
    #[arg(long, env = "RENDEZVOUS_AUTH_TOKEN_FILE", value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,

    /// Serve TLS on both listeners with this PEM certificate chain (leaf
    /// first). Needs --tls-key. Reloaded on SIGHUP.
    #[arg(
        long,
        env = "RENDEZVOUS_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key for --tls-cert. Reloaded on SIGHUP.
    #[arg(
        long,
        env = "RENDEZVOUS_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Require client certificates (mTLS) on both listeners, chaining to
    /// these PEM CA certificates. Needs --tls-cert.
    #[arg(
        long,
        env = "RENDEZVOUS_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// The most connections open at once, over both listeners. Past it, new
    /// connections are closed at once (HTTP ones with a 503 that says why).
    #[arg(long, env = "RENDEZVOUS_MAX_CONNECTIONS", value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,

    /// How long a client may take to send a whole HTTP/1.1 request head, its
    /// first bytes on a new HTTP connection, or (HTTP/2) its whole preface
    /// (slowloris). The connection is closed after that.
    #[arg(long, env = "RENDEZVOUS_HEADER_TIMEOUT", value_name = "DURATION", default_value = DEFAULT_HEADER_TIMEOUT, value_parser = positive_duration)]
    pub header_timeout: Duration,

    /// TCP keepalive on every connection: idle time before the first probe,
    /// and between probes (three are sent). Finds peers whose network vanished
    /// without a FIN or RST, over HTTP/1.1 as well as HTTP/2.
    #[arg(long, env = "RENDEZVOUS_TCP_KEEPALIVE", value_name = "DURATION", default_value = DEFAULT_TCP_KEEPALIVE, value_parser = positive_duration)]
    pub tcp_keepalive: Duration,

    /// Send an HTTP/2 connection GOAWAY once it is this old (give or take
    /// 10%, so that clients do not all reconnect at once), so that
    /// long-lived connections spread over replicas added since. Calls in
    /// flight finish; the client's next call opens a new connection. Off by
    /// default, as in gRPC.
    #[arg(long, env = "RENDEZVOUS_MAX_CONNECTION_AGE", value_name = "DURATION", value_parser = positive_duration)]
    pub max_connection_age: Option<Duration>,

    /// How long calls in flight on a connection past --max-connection-age may
    /// take to finish before the connection is closed anyway. Default:
    /// --max-wait plus 1s, so that a call that arrived just before the
    /// GOAWAY may still wait its longest.
    #[arg(
        long,
        env = "RENDEZVOUS_MAX_CONNECTION_AGE_GRACE",
        value_name = "DURATION",
        value_parser = duration,
        requires = "max_connection_age"
    )]
    pub max_connection_age_grace: Option<Duration>,

    /// Let web pages from these origins call over gRPC-Web (CORS):
    /// comma-separated, such as https://app.example.com, or * for any.
    /// None by default: gRPC-Web from outside a browser needs none.
    #[arg(long, env = "RENDEZVOUS_CORS_ALLOW_ORIGIN", value_name = "ORIGINS", value_delimiter = ',', value_parser = origin)]
    pub cors_allow_origin: Vec<String>,

    /// HTTP/2 settings, for both listeners.
    #[command(flatten)]
    pub http2: Http2Config,

    /// Redis, for several replicas to share.
    #[command(flatten)]
    pub redis: RedisArgs,
}

/// Where a listener binds: `HOST:PORT`, with an IP address (`[::1]` in
/// brackets) or a host name such as `localhost`, resolved when it binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddr {
    host: String,
    port: u16,
}

impl ListenAddr {
    /// The host and port, as `tokio::net::TcpListener::bind` resolves them.
    pub fn to_host_port(&self) -> (&str, u16) {
        (&self.host, self.port)
    }
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let hint = "use HOST:PORT, such as 127.0.0.1:50051, localhost:50051 or [::]:50051";
        let (host, port) = value
            .rsplit_once(':')
            .ok_or_else(|| format!("{value:?} has no port; {hint}"))?;
        let port = port
            .parse()
            .map_err(|_| format!("{port:?} is not a port (0 to 65535); {hint}"))?;
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(ipv6) => ipv6,
            None if host.contains(':') => {
                return Err(format!("an IPv6 address goes in brackets; {hint}"));
            }
            None => host,
        };
        if host.is_empty() {
            return Err(format!("{value:?} has no host; {hint}"));
        }
        Ok(Self {
            host: host.into(),
            port,
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host.contains(':') {
            true => write!(f, "[{}]:{}", self.host, self.port),
            false => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// HTTP/2 settings. Callers park tens of thousands of calls on one or a few
/// connections, so the defaults are sized for that, not for hyper's 200
/// streams per connection.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Http2Config {
    /// Most calls one HTTP/2 connection may have open at once. Further calls
    /// wait in the client until one finishes (or are refused, from a client
    /// that does not wait).
    #[arg(long = "http2-max-streams", env = "RENDEZVOUS_HTTP2_MAX_STREAMS", value_name = "N", default_value_t = DEFAULT_HTTP2_MAX_STREAMS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: u32,

    /// HTTP/2 connection flow-control window (64KiB to 1GiB): credit, not
    /// memory. Too small, and a burst of thousands of calls on one connection
    /// is refused (GOAWAY ENHANCE_YOUR_CALM).
    #[arg(long = "http2-connection-window", env = "RENDEZVOUS_HTTP2_CONNECTION_WINDOW", value_name = "SIZE", default_value = DEFAULT_HTTP2_CONNECTION_WINDOW, value_parser = window_size)]
    pub connection_window: u32,

    /// HTTP/2 per-call flow-control window (64KiB to 1GiB).
    #[arg(long = "http2-stream-window", env = "RENDEZVOUS_HTTP2_STREAM_WINDOW", value_name = "SIZE", default_value = DEFAULT_HTTP2_STREAM_WINDOW, value_parser = window_size)]
    pub stream_window: u32,

    /// How long a connection may be silent before the server PINGs it. A live
    /// client answers at once, however long its calls are parked; a peer that
    /// vanished does not, and its connection (and its callers) are dropped.
    #[arg(long = "http2-keepalive-interval", env = "RENDEZVOUS_HTTP2_KEEPALIVE_INTERVAL", value_name = "DURATION", default_value = DEFAULT_HTTP2_KEEPALIVE_INTERVAL, value_parser = positive_duration)]
    pub keepalive_interval: Duration,

    /// How long to wait for a PING's answer before closing the connection.
    #[arg(long = "http2-keepalive-timeout", env = "RENDEZVOUS_HTTP2_KEEPALIVE_TIMEOUT", value_name = "DURATION", default_value = DEFAULT_HTTP2_KEEPALIVE_TIMEOUT, value_parser = positive_duration)]
    pub keepalive_timeout: Duration,
}

/// When a connection is asked to go (`--max-connection-age`), and how long
/// its calls in flight then have to finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionAge {
    /// The age, before jitter.
    pub age: Duration,
    /// From the GOAWAY to closing the connection anyway.
    pub grace: Duration,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    Text,
    /// One JSON object per line, for a log pipeline.
    Json,
}

impl Default for Config {
    /// The documented defaults, without reading flags or the environment.
    fn default() -> Self {
        Self {
            grpc_addr: DEFAULT_GRPC_ADDR.parse().expect("valid default"),
            http_addr: DEFAULT_HTTP_ADDR.parse().expect("valid default"),
            default_wait: positive_duration(DEFAULT_WAIT).expect("valid default"),
            max_wait: positive_duration(DEFAULT_MAX_WAIT).expect("valid default"),
            max_payload: payload_size(DEFAULT_MAX_PAYLOAD).expect("valid default"),
            log_format: LogFormat::Text,
            shutdown_grace: duration(DEFAULT_SHUTDOWN_GRACE).expect("valid default"),
            max_waiters: DEFAULT_MAX_WAITERS,
            max_parties: DEFAULT_MAX_PARTIES,
            attempt_grace: humantime::parse_duration(DEFAULT_ATTEMPT_GRACE).expect("valid default"),
            max_group_bytes: group_size(DEFAULT_MAX_GROUP_BYTES).expect("valid default"),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            auth_token_file: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            header_timeout: positive_duration(DEFAULT_HEADER_TIMEOUT).expect("valid default"),
            tcp_keepalive: positive_duration(DEFAULT_TCP_KEEPALIVE).expect("valid default"),
            cors_allow_origin: Vec::new(),
            max_connection_age: None,
            max_connection_age_grace: None,
            http2: Http2Config::default(),
            redis: RedisArgs::default(),
        }
    }
}

impl Default for Http2Config {
    fn default() -> Self {
        Self {
            max_concurrent_streams: DEFAULT_HTTP2_MAX_STREAMS,
            connection_window: window_size(DEFAULT_HTTP2_CONNECTION_WINDOW).expect("valid default"),
            stream_window: window_size(DEFAULT_HTTP2_STREAM_WINDOW).expect("valid default"),
            keepalive_interval: positive_duration(DEFAULT_HTTP2_KEEPALIVE_INTERVAL)
                .expect("valid default"),
            keepalive_timeout: positive_duration(DEFAULT_HTTP2_KEEPALIVE_TIMEOUT)
                .expect("valid default"),
        }
    }
}

impl Config {
    /// The engine these flags choose, holding its callers to `limits`: Redis
    /// with `--redis-url`, this process otherwise.
    pub fn engine(&self, limits: EngineLimits) -> Result<EngineChoice, RedisError> {
        Ok(match self.redis.engine_config(limits)? {
            None => EngineChoice::Local(limits),
            Some(config) => EngineChoice::Redis(config),
        })
    }

    /// How long a caller without a deadline of its own waits: `--default-wait`,
    /// cut to `--max-wait` (so that `--max-wait` alone still bounds every
    /// wait, as it did before `--default-wait` existed).
    pub fn default_wait(&self) -> Duration {
        self.default_wait.min(self.max_wait)
    }

    /// `--max-connection-age` and its grace, if connections age at all.
    pub fn connection_age(&self) -> Option<ConnectionAge> {
        Some(ConnectionAge {
            age: self.max_connection_age?,
            grace: self
                .max_connection_age_grace
                .unwrap_or(self.max_wait + Duration::from_secs(1)),
        })
    }

    /// The TLS files, if TLS is on (clap makes sure cert and key come
    /// together).
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--help` and the README's table take their text from doc comments
    /// and prose, which cannot name a constant: the ceilings they state
    /// must be the constants' own.
    #[test]
    fn the_ceilings_in_help_and_readme_are_the_constants() {
        use clap::Args;
        let payload = format!("at most {}MiB", PAYLOAD_CEILING >> 20);
        let parties = format!("2 to {PARTIES_CEILING}");
        let serve = Config::augment_args(clap::Command::new("serve"));
        let help = |flag: &str| {
            let arg = serve.get_arguments().find(|arg| arg.get_id() == flag);
            arg.and_then(|arg| arg.get_help()).unwrap().to_string()
        };
        assert!(
            help("max_payload").contains(&payload),
            "{}",
            help("max_payload")
        );
        assert!(
            help("max_parties").contains(&parties),
            "{}",
            help("max_parties")
        );
        let readme = include_str!("../README.md");
        let row = |flag: &str| {
            let start = format!("| `{flag}` |");
            readme
                .lines()
                .find(|line| line.starts_with(&start))
                .unwrap()
        };
        assert!(row("--max-payload").contains(&format!("at most `{}MiB`", PAYLOAD_CEILING >> 20)));
        assert!(row("--max-parties").contains(&parties));
    }

    #[test]
    fn defaults_match_the_docs() {
        let c = Config::default();
        assert_eq!(c.grpc_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:3030");
        assert_eq!(c.default_wait, Duration::from_secs(10));
        assert_eq!(c.max_wait, Duration::from_secs(3600));
        assert_eq!(c.default_wait(), Duration::from_secs(10));
        assert_eq!(c.max_payload, 65536);
        assert_eq!(c.shutdown_grace, Duration::from_secs(5));
        assert_eq!(c.max_waiters, 200_000);
        assert_eq!(c.max_parties, 64);
        assert_eq!(c.max_group_bytes, 1 << 20);
        assert_eq!(c.max_connections, 16_384);
        assert_eq!(c.header_timeout, Duration::from_secs(30));
        assert_eq!(c.tcp_keepalive, Duration::from_secs(30));
        assert_eq!(c.http2.max_concurrent_streams, 32_768);
        assert_eq!(c.http2.connection_window, 64 << 20);
        assert_eq!(c.http2.stream_window, 1 << 20);
        assert_eq!(c.http2.keepalive_interval, Duration::from_secs(20));
        assert_eq!(c.http2.keepalive_timeout, Duration::from_secs(20));
        assert_eq!(c.redis.url, None);
        assert_eq!(c.redis.key_prefix, "rendezvous:");
        assert_eq!(c.redis.timeout, Duration::from_millis(500));
        assert_eq!(c.connection_age(), None);
    }

    #[test]
    fn the_connection_age_grace_defaults_to_the_longest_wait_and_a_second() {
        let age = |args: &[&str]| {
            let args = ["rendezvous"].iter().chain(args);
            Config::try_parse_from(args).unwrap().connection_age()
        };
        assert_eq!(
            age(&["--max-connection-age=5m", "--max-wait=1m"]),
            Some(ConnectionAge {
                age: Duration::from_secs(300),
                grace: Duration::from_secs(61),
            })
        );
        assert_eq!(
            age(&["--max-connection-age=5m", "--max-connection-age-grace=0s"]),
            Some(ConnectionAge {
                age: Duration::from_secs(300),
                grace: Duration::ZERO,
            })
        );
    }

    #[test]
    fn debug_never_shows_the_redis_password() {
        let c =
            Config::try_parse_from(["rendezvous", "--redis-url=redis://:hunter2@db:6379"]).unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("redis://:***@db:6379"), "{debug}");
    }

    /// Every flag has its environment variable, named after it, so that a
    /// container spec can set anything a command line can.
    #[test]
    fn every_flag_has_an_environment_variable_named_after_it() {
        use clap::CommandFactory;
        let command = Config::command();
        let mut flags = 0;
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if ["help", "version"].contains(&long) {
                continue;
            }
            let expected = format!("RENDEZVOUS_{}", long.to_uppercase().replace('-', "_"));
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            assert_eq!(env.as_deref(), Some(expected.as_str()), "--{long}");
            flags += 1;
        }
        assert_eq!(flags, 31);
    }

    #[test]
    fn listen_addresses_take_host_names() {
        let addr = |text: &str| text.parse::<ListenAddr>();
        assert_eq!(
            addr("localhost:50051").unwrap().to_host_port(),
            ("localhost", 50051)
        );
        assert_eq!(addr("0.0.0.0:0").unwrap().to_host_port(), ("0.0.0.0", 0));
        assert_eq!(addr("[::1]:3030").unwrap().to_host_port(), ("::1", 3030));
        assert_eq!(addr("[::1]:3030").unwrap().to_string(), "[::1]:3030");
        assert_eq!(addr("localhost:1").unwrap().to_string(), "localhost:1");
        let hint = "use HOST:PORT, such as 127.0.0.1:50051, localhost:50051 or [::]:50051";
        assert_eq!(
            addr("localhost").unwrap_err(),
            format!("\"localhost\" has no port; {hint}")
        );
        assert_eq!(
            addr("localhost:http").unwrap_err(),
            format!("\"http\" is not a port (0 to 65535); {hint}")
        );
        assert_eq!(
            addr("localhost:65536").unwrap_err(),
            format!("\"65536\" is not a port (0 to 65535); {hint}")
        );
        assert_eq!(
            addr(":80").unwrap_err(),
            format!("\":80\" has no host; {hint}")
        );
        assert_eq!(
            addr("::1:80").unwrap_err(),
            format!("an IPv6 address goes in brackets; {hint}")
        );
    }

    #[test]
    fn duration_errors_are_in_words() {
        let problem = |text| duration_problem(&humantime::parse_duration(text).unwrap_err());
        assert_eq!(problem(""), "it is empty");
        assert_eq!(problem("abc"), "it does not start with a number");
        assert_eq!(problem("5"), "the number has no unit");
        assert_eq!(problem("5 parsecs"), "\"parsecs\" is not a unit");
        assert_eq!(
            problem("5s!"),
            "it has a character that is not a digit or a unit"
        );
        assert_eq!(problem("99999999999999999999s"), "it is too long");
        assert_eq!(
            positive_duration("soon").unwrap_err(),
            "it does not start with a number; use a duration such as 250ms, 10s or 1m"
        );
        assert_eq!(duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn flags_parse_and_bad_values_are_refused() {
        let c = Config::try_parse_from([
            "rendezvous",
            "--max-wait=1m",
            "--max-payload=1MiB",
            "--log-format=json",
        ])
        .unwrap();
        assert_eq!(c.max_wait, Duration::from_secs(60));
        assert_eq!(c.default_wait(), Duration::from_secs(10));
        // --max-wait alone still bounds every wait, as it did before
        // --default-wait.
        let waits = |args: &[&str]| {
            let c = Config::try_parse_from(args).unwrap();
            (c.default_wait(), c.max_wait)
        };
        let secs = Duration::from_secs;
        assert_eq!(waits(&["rendezvous", "--max-wait=2s"]), (secs(2), secs(2)));
        assert_eq!(
            waits(&["rendezvous", "--default-wait=30s", "--max-wait=1m"]),
            (secs(30), secs(60))
        );
        assert_eq!(
            waits(&["rendezvous", "--default-wait=2m", "--max-wait=1m"]),
            (secs(60), secs(60))
        );
        let cors = Config::try_parse_from([
            "rendezvous",
            "--cors-allow-origin=https://a.example,http://localhost:8080",
        ])
        .unwrap();
        assert_eq!(
            cors.cors_allow_origin,
            ["https://a.example", "http://localhost:8080"]
        );
        assert_eq!(c.max_payload, 1 << 20);
        assert_eq!(c.log_format, LogFormat::Json);

        for bad in [
            &["rendezvous", "--max-wait=0s"][..],
            &["rendezvous", "--default-wait=0s"],
            &["rendezvous", "--max-wait=soon"],
            &["rendezvous", "--max-payload=1GiB"],
            &["rendezvous", "--max-payload=lots"],
            &["rendezvous", "--log-format=xml"],
            &["rendezvous", "--grpc-addr=localhost"],
            &["rendezvous", "--http-addr=:3030"],
            &["rendezvous", "--http2-max-streams=0"],
            &["rendezvous", "--max-waiters=0"],
            &["rendezvous", "--tls-cert=cert.pem"],
            &["rendezvous", "--tls-key=key.pem"],
            &["rendezvous", "--tls-client-ca=ca.pem"],
            &["rendezvous", "--http2-connection-window=1KiB"],
            &["rendezvous", "--http2-keepalive-interval=0s"],
            &["rendezvous", "--redis-password-file=pw"],
            &["rendezvous", "--redis-timeout=0s"],
            &["rendezvous", "--cors-allow-origin=app.example.com"],
            &["rendezvous", "--cors-allow-origin=https://app.example.com/"],
            &["rendezvous", "--cors-allow-origin=app.example.com:443"],
            &["rendezvous", "--cors-allow-origin=https://a.example,"],
            &["rendezvous", "--max-connection-age=0s"],
            &["rendezvous", "--max-connection-age-grace=1s"],
        ] {
            assert!(Config::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }
}
