//! How the Redis engine is configured, and the errors a bad configuration
//! gets at start-up.

use std::{fmt, time::Duration};

/// How the Redis engine connects, from the flags.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` (TLS), with a password or not.
    pub url: String,
    /// A password that overrides the URL's (from `--redis-password-file`).
    pub password: Option<String>,
    /// What every key and channel starts with, so that several services (or
    /// tests) can share one Redis.
    pub key_prefix: String,
    /// How long a command may take before Redis counts as unreachable.
    pub timeout: Duration,
    /// The most callers that may wait through this replica at once.
    pub capacity: usize,
    /// The most bytes of payloads a group of more than two may hold.
    pub max_group_bytes: usize,
}

// The URL and the password are secrets: never print them.
impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
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

/// Why the Redis engine could not be set up.
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
        assert_eq!(redact("not a url hunter2"), "***");
    }
}
