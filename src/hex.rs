//! Lowercase hex for the 16-byte values the service writes and reads: trace
//! ids (W3C Trace Context), and the id hashes in Redis keys. One place, and
//! one write per value: `{:02x}` sixteen times goes through the formatting
//! machinery sixteen times, on every traced log line and every Redis key.

/// 16 bytes as 32 lowercase hex digits.
pub(crate) struct Hex16([u8; 32]);

impl Hex16 {
    pub(crate) fn new(bytes: &[u8; 16]) -> Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 32];
        for (pair, &byte) in text.chunks_exact_mut(2).zip(bytes) {
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0xf)];
        }
        Self(text)
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

/// `N` bytes from `2N` lowercase hex digits; `None` for anything else.
pub(crate) fn decode<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    let digit = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    let mut bytes = [0; N];
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_as_format_does_and_decodes_back() {
        let bytes: [u8; 16] = std::array::from_fn(|i| ((i as u8) * 17) ^ 0xa5);
        let formatted: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(Hex16::new(&bytes).as_str(), formatted);
        assert_eq!(decode::<16>(formatted.as_bytes()), Some(bytes));
        assert_eq!(decode::<1>(b"0A"), None);
        assert_eq!(decode::<1>(b"g0"), None);
    }
}
