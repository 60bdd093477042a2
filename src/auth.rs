//! Bearer tokens with namespaces: who may call, and whose meetings a caller
//! can reach.
//!
//! `--auth-token-file` holds one token per line, optionally followed by a
//! namespace name. Two callers meet only if they send the same id under the
//! same namespace, so tenants cannot reach (or squat on) each other's
//! meetings even when their ids collide. Tokens are compared in constant time,
//! by their SHA-256 digests, and never logged.

use std::{fmt, path::PathBuf, sync::Arc};

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// The namespace of a line that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Why a caller was refused. The messages go to callers, and never contain
/// the token they sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization` header at all.
    #[error("missing credentials: send the header `authorization: Bearer <token>`")]
    Missing,
    /// A header that is not `Bearer <token>`.
    #[error("malformed credentials: the authorization header must be `Bearer <token>`")]
    Malformed,
    /// A well-formed token that is not in the token file.
    #[error("the bearer token is not valid")]
    Unknown,
}

/// Why a token file could not be used. The old tokens stay in force when a
/// reload fails.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The configured path.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A line is not `TOKEN [NAMESPACE]`.
    #[error("{path}, line {line}: {problem}")]
    Line {
        /// The configured path.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with it (never the token itself).
        problem: &'static str,
    },
}

/// The tokens in force: digests and the namespace each one opens.
pub struct Tokens {
    entries: Vec<([u8; 32], Arc<str>)>,
}

// Never prints digests, let alone tokens.
impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tokens({} entries)", self.entries.len())
    }
}

impl Tokens {
    /// Parses a token file: `TOKEN [NAMESPACE]` per line; blank lines and
    /// lines starting with `#` are skipped.
    pub fn parse(text: &str, path: &std::path::Path) -> Result<Self, TokenFileError> {
        let mut entries = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let problem = |problem| TokenFileError::Line {
                path: path.to_owned(),
                line: number + 1,
                problem,
            };
            let mut words = line.split_whitespace();
            let token = words.next().expect("a non-empty line has a word");
            let namespace = words.next().unwrap_or(DEFAULT_NAMESPACE);
            if words.next().is_some() {
                return Err(problem("expected `TOKEN [NAMESPACE]`, found more words"));
            }
            if token.len() < 16 {
                return Err(problem("the token is shorter than 16 characters"));
            }
            // Anything else could never arrive: headers carry visible ASCII
            // only. Found by the auth fuzz target: such a token loaded, and
            // every call that sent it was refused as malformed.
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(problem(
                    "the token has characters an HTTP header cannot carry; use visible ASCII",
                ));
            }
            if namespace.len() > 64
                || !namespace
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(problem(
                    "a namespace is 1 to 64 of the characters A-Z, a-z, 0-9, '.', '_' and '-'",
                ));
            }
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            // A token listed twice would open whichever namespace came last.
            // Found by the auth fuzz target.
            if !seen.insert(digest) {
                return Err(problem(
                    "this token is already listed on an earlier line; a token opens one namespace",
                ));
            }
            entries.push((digest, Arc::from(namespace)));
        }
        if entries.is_empty() {
            return Err(TokenFileError::Line {
                path: path.to_owned(),
                line: 0,
                problem: "the file holds no tokens, so nobody could call",
            });
        }
        Ok(Self { entries })
    }

    /// The namespace opened by the credentials in an `authorization` header.
    ///
    /// Every entry is compared, whatever matches, so the time taken does not
    /// depend on which token (if any) was sent.
    pub fn namespace_of(&self, header: Option<&HeaderValue>) -> Result<Arc<str>, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        // RFC 7235: the scheme is case-insensitive.
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Malformed)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = subtle::Choice::from(0);
        let mut index = 0u64;
        for (i, (known, _)) in self.entries.iter().enumerate() {
            let matches = known.ct_eq(&digest);
            index = u64::conditional_select(&index, &(i as u64), matches);
            found |= matches;
        }
        if bool::from(found) {
            Ok(self.entries[index as usize].1.clone())
        } else {
            Err(AuthError::Unknown)
        }
    }
}

/// The token file and the tokens loaded from it, reloadable while serving.
#[derive(Debug)]
pub struct Auth {
    path: PathBuf,
    tokens: ArcSwap<Tokens>,
}

impl Auth {
    /// Loads `path`, failing (so the server does not start) if it is unusable.
    pub fn load(path: PathBuf) -> Result<Self, TokenFileError> {
        let tokens = read(&path)?;
        Ok(Self {
            path,
            tokens: ArcSwap::from_pointee(tokens),
        })
    }

    /// Reads the file again. On any error the tokens in force are kept.
    pub fn reload(&self) -> Result<usize, TokenFileError> {
        let tokens = read(&self.path)?;
        let count = tokens.entries.len();
        self.tokens.store(Arc::new(tokens));
        Ok(count)
    }

    /// See [`Tokens::namespace_of`].
    pub fn namespace_of(&self, header: Option<&HeaderValue>) -> Result<Arc<str>, AuthError> {
        self.tokens.load().namespace_of(header)
    }

    /// The namespace opened by a request's `authorization` header, on
    /// either port.
    pub fn namespace_in(&self, headers: &HeaderMap) -> Result<Arc<str>, AuthError> {
        self.namespace_of(headers.get(AUTHORIZATION))
    }
}

fn read(path: &std::path::Path) -> Result<Tokens, TokenFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    Tokens::parse(&text, path)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn tokens(text: &str) -> Result<Tokens, TokenFileError> {
        Tokens::parse(text, Path::new("tokens"))
    }

    fn bearer(token: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
    }

    #[test]
    fn tokens_open_their_namespaces() {
        let t = tokens(
            "# comment\n\nalpha-token-0000000 alpha\nbeta-token-00000000 beta\nplain-token-0000000\n",
        )
        .unwrap();
        assert_eq!(
            &*t.namespace_of(Some(&bearer("alpha-token-0000000")))
                .unwrap(),
            "alpha"
        );
        assert_eq!(
            &*t.namespace_of(Some(&bearer("beta-token-00000000")))
                .unwrap(),
            "beta"
        );
        assert_eq!(
            &*t.namespace_of(Some(&bearer("plain-token-0000000")))
                .unwrap(),
            DEFAULT_NAMESPACE
        );
        assert_eq!(
            t.namespace_of(Some(&bearer("alpha-token-0000001"))),
            Err(AuthError::Unknown)
        );
        assert_eq!(t.namespace_of(None), Err(AuthError::Missing));
        let basic = HeaderValue::from_static("Basic YWxhZGRpbjpvcGVuc2VzYW1l");
        assert_eq!(t.namespace_of(Some(&basic)), Err(AuthError::Malformed));
        assert_eq!(format!("{t:?}"), "Tokens(3 entries)");
    }

    /// RFC 7235 makes the scheme case-insensitive; `BEARER x` used to be
    /// refused as malformed (the auth fuzz target's property showed it).
    #[test]
    fn the_scheme_is_case_insensitive() {
        let t = tokens("alpha-token-0000000 alpha\n").unwrap();
        for header in [
            "bearer alpha-token-0000000",
            "BEARER alpha-token-0000000",
            "BeArEr alpha-token-0000000",
        ] {
            let header = HeaderValue::from_static(header);
            assert_eq!(t.namespace_of(Some(&header)).as_deref(), Ok("alpha"));
        }
        for header in [
            "Bearer",
            "Bearer ",
            "Bearer\talpha-token-0000000",
            "Bearerx alpha-token-0000000",
        ] {
            let header = HeaderValue::from_static(header);
            assert_eq!(t.namespace_of(Some(&header)), Err(AuthError::Malformed));
        }
    }

    #[test]
    fn the_limits_are_inclusive() {
        let shortest = "t".repeat(16);
        let longest_namespace = "n".repeat(64);
        let t = tokens(&format!("{shortest} {longest_namespace}\n")).unwrap();
        assert_eq!(
            &*t.namespace_of(Some(&bearer(&shortest))).unwrap(),
            longest_namespace
        );
        assert_eq!(format!("{t:?}"), "Tokens(1 entries)");
        let error = tokens(&format!("{shortest} {longest_namespace}n\n"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("line 1: a namespace is 1 to 64"), "{error}");
        let error = tokens(&format!("{} ns\n", "t".repeat(15)))
            .unwrap_err()
            .to_string();
        assert!(error.contains("shorter than 16 characters"), "{error}");
    }

    #[test]
    fn bad_files_say_which_line_and_never_echo_the_token() {
        for (text, needle) in [
            ("short\n", "line 1: the token is shorter than 16 characters"),
            (
                "a-long-enough-token x y\n",
                "line 1: expected `TOKEN [NAMESPACE]`",
            ),
            (
                "\na-long-enough-token bad/name\n",
                "line 2: a namespace is 1 to 64",
            ),
            ("# nothing\n", "the file holds no tokens"),
            // Both found by the auth fuzz target.
            (
                "a-long-enough-token ns-a\n\na-long-enough-token ns-b\n",
                "line 3: this token is already listed on an earlier line",
            ),
            (
                "a-long-enough-token-é\n",
                "line 1: the token has characters an HTTP header cannot carry",
            ),
        ] {
            let error = tokens(text).unwrap_err().to_string();
            assert!(error.contains(needle), "{error}");
            assert!(!error.contains("a-long-enough-token"), "{error}");
        }
    }
}
