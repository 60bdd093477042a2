//! How the Redis engine is configured: its flags, the three kinds of
//! deployment its URL can name, and the errors a bad configuration gets at
//! start-up.

use std::{fmt, path::PathBuf, time::Duration};

use percent_encoding::percent_decode_str;

use crate::config::values::positive_duration;
use crate::pairing::EngineLimits;

const DEFAULT_KEY_PREFIX: &str = "rendezvous:";
const DEFAULT_TIMEOUT: &str = "500ms";
/// Sentinel's own default port, for a Sentinel address written without one.
const SENTINEL_PORT: u16 = 26379;
const REDIS_PORT: u16 = 6379;

/// Where replicas meet. Without `--redis-url`, this process is the meeting
/// place, and callers meet only callers that reached the same process.
#[derive(Clone, clap::Args)]
pub struct RedisArgs {
    /// Meet callers of other replicas through Redis. One primary:
    /// redis://HOST:PORT/DB. Under Sentinel:
    /// redis+sentinel://HOST:PORT,HOST:PORT/MASTER_NAME, the Sentinels'
    /// addresses. A cluster: redis+cluster://HOST:PORT,HOST:PORT, some of its
    /// nodes. rediss, rediss+sentinel and rediss+cluster use TLS. Each takes
    /// an optional USER:PASSWORD@ before the first host, for the data nodes.
    #[arg(
        long = "redis-url",
        env = "RENDEZVOUS_REDIS_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub url: Option<String>,

    /// Read the data nodes' password from this file (one line), instead of
    /// putting it in the URL.
    #[arg(
        long = "redis-password-file",
        env = "RENDEZVOUS_REDIS_PASSWORD_FILE",
        value_name = "FILE",
        requires = "url"
    )]
    pub password_file: Option<PathBuf>,

    /// Read the Sentinels' own password (their requirepass) from this file,
    /// with a redis+sentinel:// URL.
    #[arg(
        long = "redis-sentinel-password-file",
        env = "RENDEZVOUS_REDIS_SENTINEL_PASSWORD_FILE",
        value_name = "FILE",
        requires = "url"
    )]
    pub sentinel_password_file: Option<PathBuf>,

    /// What every Redis key and channel of this service starts with.
    #[arg(long = "redis-key-prefix", env = "RENDEZVOUS_REDIS_KEY_PREFIX", value_name = "PREFIX", default_value = DEFAULT_KEY_PREFIX)]
    pub key_prefix: String,

    /// How long Redis may take to answer this replica's probe (every 250ms).
    /// Past it twice in a row, Redis counts as unreachable: waiting and new
    /// callers are answered UNAVAILABLE, and readiness goes down until it
    /// answers again.
    /// A command may take ten times as long, queued behind a burst.
    #[arg(long = "redis-timeout", env = "RENDEZVOUS_REDIS_TIMEOUT", value_name = "DURATION", default_value = DEFAULT_TIMEOUT, value_parser = positive_duration)]
    pub timeout: Duration,
}

impl Default for RedisArgs {
    fn default() -> Self {
        Self {
            url: None,
            password_file: None,
            sentinel_password_file: None,
            key_prefix: DEFAULT_KEY_PREFIX.into(),
            timeout: positive_duration(DEFAULT_TIMEOUT).expect("valid default"),
        }
    }
}

// The URL can hold a password: never print it.
impl fmt::Debug for RedisArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisArgs")
            .field("url", &self.url.as_deref().map(redact))
            .field("password_file", &self.password_file)
            .field("sentinel_password_file", &self.sentinel_password_file)
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisArgs {
    /// The engine's settings, with the password files read: `None` without
    /// `--redis-url`.
    pub fn engine_config(&self, limits: EngineLimits) -> Result<Option<RedisConfig>, RedisError> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let read = |flag, path: &Option<PathBuf>| path.as_deref().map(|p| read_secret(flag, p));
        Ok(Some(RedisConfig {
            url: url.clone(),
            password: read("--redis-password-file", &self.password_file).transpose()?,
            sentinel_password: read(
                "--redis-sentinel-password-file",
                &self.sentinel_password_file,
            )
            .transpose()?,
            key_prefix: self.key_prefix.clone(),
            timeout: self.timeout,
            limits,
        }))
    }
}

/// A password file's first line, without its line ending.
fn read_secret(flag: &'static str, path: &std::path::Path) -> Result<String, RedisError> {
    let text = std::fs::read_to_string(path).map_err(|source| RedisError::PasswordFile {
        flag,
        path: path.to_owned(),
        source,
    })?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// How the Redis engine connects, from the flags.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://`, `redis+sentinel://` or `redis+cluster://`, or the same
    /// with `rediss` (TLS), with a password or not.
    pub url: String,
    /// The data nodes' password, overriding the URL's (from
    /// `--redis-password-file`).
    pub password: Option<String>,
    /// The Sentinels' password (`--redis-sentinel-password-file`).
    pub sentinel_password: Option<String>,
    /// What every key and channel starts with, so that several services (or
    /// tests) can share one Redis.
    pub key_prefix: String,
    /// How long a command may take before Redis counts as unreachable.
    pub timeout: Duration,
    /// The limits the replica holds its callers to.
    pub limits: EngineLimits,
}

// The URL and the passwords are secrets: never print them.
impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// What `--redis-url` names: one primary, a primary that Sentinels watch, or
/// a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Deployment {
    /// One primary, by a URL that redis-rs reads as it is.
    Single { url: String },
    /// The primary that `sentinels` know as `master`.
    Sentinel {
        sentinels: Vec<(String, u16)>,
        master: String,
        access: Access,
    },
    /// A Redis Cluster, found through any of `seeds`.
    Cluster {
        seeds: Vec<(String, u16)>,
        access: Access,
    },
}

/// How to reach the data nodes of a Sentinel or cluster deployment.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Access {
    pub(super) tls: bool,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Access")
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Deployment {
    /// Reads `--redis-url`; `password` (from a file) overrides the URL's.
    pub(super) fn parse(url: &str, password: Option<&str>) -> Result<Self, RedisError> {
        let bad = |reason: &str| RedisError::BadUrl {
            url: redact(url),
            reason: reason.into(),
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(bad(SCHEMES));
        };
        let (tls, mode) = match scheme {
            "redis" | "rediss" => {
                return Ok(Self::Single { url: url.into() });
            }
            "redis+sentinel" => (false, "sentinel"),
            "rediss+sentinel" => (true, "sentinel"),
            "redis+cluster" => (false, "cluster"),
            "rediss+cluster" => (true, "cluster"),
            _ => return Err(bad(SCHEMES)),
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let decode = |part: &str| {
            percent_decode_str(part)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| bad("its user or password is not valid percent-encoded UTF-8"))
        };
        let (mut username, mut from_url) = (None, None);
        if let Some(userinfo) = userinfo {
            let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            username = Some(decode(user)?).filter(|u| !u.is_empty());
            from_url = Some(decode(pass)?).filter(|p| !p.is_empty());
        }
        let access = Access {
            tls,
            username,
            password: password.map(str::to_owned).or(from_url),
        };
        let default_port = match mode {
            "sentinel" => SENTINEL_PORT,
            _ => REDIS_PORT,
        };
        let nodes = hosts
            .split(',')
            .map(|node| host_port(node, default_port).map_err(|reason| bad(&reason)))
            .collect::<Result<Vec<_>, _>>()?;
        if mode == "cluster" {
            if !path.is_empty() {
                return Err(bad(
                    "a cluster has no database or master name: write redis+cluster://HOST:PORT,HOST:PORT",
                ));
            }
            return Ok(Self::Cluster {
                seeds: nodes,
                access,
            });
        }
        let master = decode(path)?;
        if master.is_empty() || master.contains('/') {
            return Err(bad(
                "name the master after the Sentinels: redis+sentinel://HOST:PORT,HOST:PORT/MASTER_NAME",
            ));
        }
        Ok(Self::Sentinel {
            sentinels: nodes,
            master,
            access,
        })
    }

    /// Which kind, for logs.
    pub(super) fn mode(&self) -> &'static str {
        match self {
            Self::Single { .. } => "single",
            Self::Sentinel { .. } => "sentinel",
            Self::Cluster { .. } => "cluster",
        }
    }

    pub(super) fn tls(&self) -> bool {
        match self {
            Self::Single { url } => url.starts_with("rediss://"),
            Self::Sentinel { access, .. } | Self::Cluster { access, .. } => access.tls,
        }
    }
}

const SCHEMES: &str = "use redis:// or rediss:// (TLS) for one primary, redis+sentinel:// or \
                       rediss+sentinel:// for Sentinel, redis+cluster:// or rediss+cluster:// \
                       for a cluster";

/// `HOST:PORT`, `HOST`, or `[IPV6]:PORT`.
fn host_port(node: &str, default_port: u16) -> Result<(String, u16), String> {
    let node = node.trim();
    let (host, port) = match node.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("{node:?} has no closing ']'"))?;
            (host, after.strip_prefix(':'))
        }
        None => match node.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (node, None),
        },
    };
    if host.is_empty() {
        return Err(format!("{node:?} has no host: write HOST:PORT"));
    }
    let port = match port {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{node:?} has no valid port (1 to 65535)"))?,
        None => default_port,
    };
    Ok((host.to_owned(), port))
}

/// A URL with its password (or lone user part) replaced by `***`, for logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".into();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.into();
    };
    let user = match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        None => "***".into(),
    };
    format!("{scheme}://{user}@{}", &rest[at + 1..])
}

/// Why the Redis engine could not be set up, or could not find its Redis at
/// start-up in a way that waiting will not fix.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The URL is not a Redis URL.
    #[error("--redis-url {url} is not usable: {reason}")]
    BadUrl {
        /// The URL, its secrets redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The key prefix would break the hash tags that keep an id's keys in one
    /// cluster slot.
    #[error("--redis-key-prefix {0:?} must not contain '{{' or '}}'")]
    BadPrefix(String),
    /// A password file could not be read.
    #[error("cannot read {flag} {path}: {source}")]
    PasswordFile {
        /// The flag that named it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A Sentinel password without Sentinels.
    #[error("--redis-sentinel-password-file needs a redis+sentinel:// URL")]
    SentinelPasswordWithoutSentinel,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact("redis://:hunter2@db:6379/0"),
            "redis://:***@db:6379/0"
        );
        assert_eq!(
            redact("rediss://app:hunter2@db:6380"),
            "rediss://app:***@db:6380"
        );
        assert_eq!(redact("redis://hunter2@db"), "redis://***@db");
        assert_eq!(redact("redis://db:6379"), "redis://db:6379");
        assert_eq!(
            redact("redis+sentinel://:hunter2@s1:26379,s2/main"),
            "redis+sentinel://:***@s1:26379,s2/main"
        );
        assert_eq!(redact("not a url hunter2"), "***");
    }

    fn access(tls: bool, username: Option<&str>, password: Option<&str>) -> Access {
        Access {
            tls,
            username: username.map(Into::into),
            password: password.map(Into::into),
        }
    }

    #[test]
    fn each_scheme_names_its_deployment() {
        assert_eq!(
            Deployment::parse("redis://db:6379/2", None).unwrap(),
            Deployment::Single {
                url: "redis://db:6379/2".into()
            }
        );
        assert_eq!(
            Deployment::parse("redis+sentinel://s1:26380,s2,[::1]:5000/my%2Dmaster", None).unwrap(),
            Deployment::Sentinel {
                sentinels: vec![
                    ("s1".into(), 26380),
                    ("s2".into(), 26379),
                    ("::1".into(), 5000)
                ],
                master: "my-master".into(),
                access: access(false, None, None),
            }
        );
        assert_eq!(
            Deployment::parse("rediss+cluster://app:p%40ss@n1:7000,n2", None).unwrap(),
            Deployment::Cluster {
                seeds: vec![("n1".into(), 7000), ("n2".into(), 6379)],
                access: access(true, Some("app"), Some("p@ss")),
            }
        );
        // A password from a file wins over the URL's.
        assert_eq!(
            Deployment::parse("redis+cluster://:inurl@n1:7000", Some("fromfile")).unwrap(),
            Deployment::Cluster {
                seeds: vec![("n1".into(), 7000)],
                access: access(false, None, Some("fromfile")),
            }
        );
    }

    #[test]
    fn each_deployment_says_its_mode_and_whether_it_uses_tls() {
        let parsed = |url| Deployment::parse(url, None).unwrap();
        for (url, mode, tls) in [
            ("redis://db", "single", false),
            ("rediss://db", "single", true),
            ("redis+sentinel://s1/main", "sentinel", false),
            ("rediss+sentinel://s1/main", "sentinel", true),
            ("redis+cluster://n1", "cluster", false),
            ("rediss+cluster://n1", "cluster", true),
        ] {
            assert_eq!(
                (parsed(url).mode(), parsed(url).tls()),
                (mode, tls),
                "{url}"
            );
        }
    }

    /// Flags and settings are printed in logs and panics: never a secret.
    #[test]
    fn debug_shows_no_secret() {
        let args = RedisArgs {
            url: Some("redis+cluster://app:hunter2@n1".into()),
            ..RedisArgs::default()
        };
        let shown = format!("{args:?}");
        assert!(
            shown.contains(r#"url: Some("redis+cluster://app:***@n1")"#),
            "{shown}"
        );
        assert!(shown.contains(r#"key_prefix: "rendezvous:""#), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let Deployment::Cluster { access, .. } =
            Deployment::parse("redis+cluster://app:hunter2@n1", None).unwrap()
        else {
            unreachable!()
        };
        assert_eq!(
            format!("{access:?}"),
            r#"Access { tls: false, username: Some("app"), password: Some("***") }"#
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong_with_the_secret_hidden() {
        let reason = |url: &str| match Deployment::parse(url, None).unwrap_err() {
            RedisError::BadUrl { url, reason } => {
                assert!(!url.contains("hunter2"), "{url}");
                reason
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(reason("http://u:hunter2@db"), SCHEMES);
        assert_eq!(reason("db:6379"), SCHEMES);
        assert!(
            reason("redis+sentinel://:hunter2@s1:26379").starts_with("name the master"),
            "a missing master name"
        );
        assert!(reason("redis+sentinel://s1/a/b").starts_with("name the master"));
        assert!(reason("redis+cluster://n1:7000/0").starts_with("a cluster has no database"));
        assert_eq!(
            reason("redis+cluster://n1:7000,:7001"),
            "\":7001\" has no host: write HOST:PORT"
        );
        assert_eq!(
            reason("redis+cluster://n1:0"),
            "\"n1:0\" has no valid port (1 to 65535)"
        );
        assert_eq!(
            reason("redis+cluster://n1:x"),
            "\"n1:x\" has no valid port (1 to 65535)"
        );
        assert_eq!(
            reason("redis+cluster://[::1:7000"),
            "\"[::1:7000\" has no closing ']'"
        );
    }

    #[test]
    fn password_files_are_read_to_their_first_line() {
        let dir = std::env::temp_dir().join(format!("rendezvous-secret-{}", std::process::id()));
        std::fs::write(&dir, "hunter2\nignored\n").unwrap();
        let args = RedisArgs {
            url: Some("redis+sentinel://s1/main".into()),
            password_file: Some(dir.clone()),
            sentinel_password_file: Some(dir.clone()),
            ..RedisArgs::default()
        };
        let config = args.engine_config(EngineLimits::NONE).unwrap().unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(config.password.as_deref(), Some("hunter2"));
        assert_eq!(config.sentinel_password.as_deref(), Some("hunter2"));
        let error = args.engine_config(EngineLimits::NONE).unwrap_err();
        assert!(
            error.to_string().starts_with(&format!(
                "cannot read --redis-password-file {}: ",
                dir.display()
            )),
            "{error}"
        );
        assert!(
            RedisArgs::default()
                .engine_config(EngineLimits::NONE)
                .unwrap()
                .is_none()
        );
    }
}
