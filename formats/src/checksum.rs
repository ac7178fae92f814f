//! Checksums used by the format: XXH3-64 over shard payloads (fast enough to verify a dataset at
//! disk speed) and SHA-256 over the copied tokenizer (the digest people compare by eye).

use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::Xxh3;

/// The prefix of every payload checksum string in `index.json`.
pub const PAYLOAD_CHECKSUM_PREFIX: &str = "xxh3_64:";

/// Streaming XXH3-64 over a shard payload.
#[derive(Default, Clone)]
pub struct PayloadHasher(Xxh3);

impl PayloadHasher {
    pub fn new() -> Self {
        Self(Xxh3::new())
    }
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn finish(&self) -> u64 {
        self.0.digest()
    }
}

/// XXH3-64 of a whole byte slice.
pub fn payload_checksum(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// The checksum as written in `index.json`: `xxh3_64:` and 16 lowercase hex digits.
pub fn format_payload_checksum(value: u64) -> String {
    format!("{PAYLOAD_CHECKSUM_PREFIX}{value:016x}")
}

/// Parses a checksum string written by [`format_payload_checksum`].
pub fn parse_payload_checksum(text: &str) -> Option<u64> {
    let hex = text.strip_prefix(PAYLOAD_CHECKSUM_PREFIX)?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Lowercase hex SHA-256 of a byte slice.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_strings_round_trip() {
        let value = payload_checksum(b"ingot");
        let text = format_payload_checksum(value);
        assert_eq!(text.len(), PAYLOAD_CHECKSUM_PREFIX.len() + 16);
        assert_eq!(parse_payload_checksum(&text), Some(value));
        assert_eq!(parse_payload_checksum("crc32:00"), None);
        assert_eq!(parse_payload_checksum("xxh3_64:zz"), None);
    }

    #[test]
    fn streaming_matches_one_shot() {
        let mut h = PayloadHasher::new();
        h.update(b"hello ");
        h.update(b"world");
        assert_eq!(h.finish(), payload_checksum(b"hello world"));
    }

    #[test]
    fn sha256_of_empty_is_the_known_digest() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
