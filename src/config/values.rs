//! The value parsers of the flags: what a duration, a size or an origin
//! may be, and the words for what is wrong with one. A leaf: it imports
//! nothing from the crate but the wire's limits ([`crate::proto`]), so that every module's flags (the server's, the
//! Redis engine's, the clients') can use it without reaching back into the
//! aggregate configuration.

use std::time::Duration;

use crate::proto::PAYLOAD_CEILING;

/// An origin as browsers send it (`scheme://host[:port]`, nothing after),
/// or `*`.
pub(crate) fn origin(value: &str) -> Result<String, String> {
    if value == "*" {
        return Ok(value.into());
    }
    let hint = "use SCHEME://HOST[:PORT], such as https://app.example.com, or *";
    let uri: http::Uri = value.parse().map_err(|e| format!("{e}; {hint}"))?;
    // Nothing but a scheme and an authority: without a scheme, the value
    // would have to start with "://", which is no URI at all.
    let bare = value
        == format!(
            "{}://{}",
            uri.scheme_str().unwrap_or(""),
            uri.authority().map_or("", |a| a.as_str())
        );
    match bare {
        true => Ok(value.into()),
        false => Err(format!("{value:?} is not an origin; {hint}")),
    }
}

/// A duration that may be zero (a grace period that can be skipped).
pub(crate) fn duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value).map_err(|e| {
        format!(
            "{}; use a duration such as 250ms, 10s or 1m",
            duration_problem(&e)
        )
    })
}

/// A duration greater than zero.
pub(crate) fn positive_duration(value: &str) -> Result<Duration, String> {
    match duration(value)? {
        d if d.is_zero() => Err("must be greater than zero".into()),
        d => Ok(d),
    }
}

/// What is wrong with a duration, in words: humantime's own messages
/// ("expected number at 0") point at a character offset, which means
/// nothing to someone who typed `?wait=abc`.
pub(crate) fn duration_problem(error: &humantime::DurationError) -> String {
    use humantime::DurationError as E;
    match error {
        E::Empty => "it is empty".into(),
        E::NumberExpected(0) => "it does not start with a number".into(),
        E::NumberExpected(_) => "a unit must be followed by a number or end it".into(),
        E::InvalidCharacter(_) => "it has a character that is not a digit or a unit".into(),
        E::UnknownUnit { unit, .. } if unit.is_empty() => "the number has no unit".into(),
        E::UnknownUnit { unit, .. } => format!("{unit:?} is not a unit"),
        E::NumberOverflow => "it is too long".into(),
    }
}

pub(crate) fn payload_size(value: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = value
        .parse()
        .map_err(|e| format!("{e}; use a size such as 512B, 64KiB or 1MiB"))?;
    match usize::try_from(size.as_u64()) {
        Ok(n) if n <= PAYLOAD_CEILING => Ok(n),
        _ => Err(format!(
            "{size} is over the ceiling of {}",
            mebibytes(PAYLOAD_CEILING)
        )),
    }
}

/// The most `--max-group-bytes` may be: what one answer to every member
/// could reasonably carry.
pub(crate) const GROUP_BYTES_CEILING: usize = 256 << 20;

/// A size of whole mebibytes as the flags take it: `16MiB`.
fn mebibytes(bytes: usize) -> String {
    format!("{}MiB", bytes >> 20)
}

/// A group's payload budget: at least a byte, at most
/// [`GROUP_BYTES_CEILING`].
pub(crate) fn group_size(value: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = value
        .parse()
        .map_err(|e| format!("{e}; use a size such as 256KiB or 1MiB"))?;
    match usize::try_from(size.as_u64()) {
        Ok(0) => Err("a group needs room for at least one byte".into()),
        Ok(n) if n <= GROUP_BYTES_CEILING => Ok(n),
        _ => Err(format!(
            "{size} is over the ceiling of {}",
            mebibytes(GROUP_BYTES_CEILING)
        )),
    }
}

pub(crate) fn window_size(value: &str) -> Result<u32, String> {
    let size: bytesize::ByteSize = value
        .parse()
        .map_err(|e| format!("{e}; use a size such as 1MiB or 16MiB"))?;
    match u32::try_from(size.as_u64()) {
        // HTTP/2 windows are 31-bit; below 64KiB is below the protocol default.
        Ok(n) if (65_535..=(1 << 30)).contains(&n) => Ok(n),
        _ => Err(format!("{size} is outside 64KiB to 1GiB")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_over_their_ceilings_name_the_ceiling() {
        assert_eq!(payload_size("16MiB"), Ok(PAYLOAD_CEILING));
        let over = payload_size("17MiB").unwrap_err();
        assert!(over.ends_with(" is over the ceiling of 16MiB"), "{over}");
        assert_eq!(group_size("256MiB"), Ok(GROUP_BYTES_CEILING));
        assert_eq!(
            group_size("0B"),
            Err("a group needs room for at least one byte".into())
        );
        let over = group_size("257MiB").unwrap_err();
        assert!(over.ends_with(" is over the ceiling of 256MiB"), "{over}");
    }
}
