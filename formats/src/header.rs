//! The shard header: 56 meaningful bytes, zero-padded to [`HEADER_BYTES`] so the payload starts
//! on a page boundary and can be memory-mapped as an aligned `&[u16]`/`&[u32]`.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `INGOTSHD` |
//! | 8 | 4 | format version (u32 LE) |
//! | 12 | 4 | bytes per token: 2 (uint16) or 4 (uint32) |
//! | 16 | 8 | block_size in tokens (u64 LE) |
//! | 24 | 8 | number of blocks (u64 LE) |
//! | 32 | 8 | XXH3-64 of the payload (u64 LE) |
//! | 40 | 8 | header_bytes: offset of the payload (u64 LE) |
//! | 48 | 8 | XXH3-64 of bytes 0..48 (u64 LE) |
//! | 56 | .. | zero up to header_bytes |

use crate::checksum::payload_checksum;
use crate::{Dtype, FORMAT_VERSION};

/// Offset of the payload in every shard file: one 4 KiB page.
pub const HEADER_BYTES: usize = 4096;
/// First eight bytes of every shard file.
pub const MAGIC: [u8; 8] = *b"INGOTSHD";
/// Bytes of the header that carry data; the rest is zero padding.
pub const HEADER_USED: usize = 56;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardHeader {
    pub version: u32,
    pub dtype: Dtype,
    pub block_size: u64,
    pub blocks: u64,
    pub payload_checksum: u64,
    pub header_bytes: u64,
}

impl ShardHeader {
    pub fn new(dtype: Dtype, block_size: u64, blocks: u64, payload_checksum: u64) -> Self {
        Self {
            version: FORMAT_VERSION,
            dtype,
            block_size,
            blocks,
            payload_checksum,
            header_bytes: HEADER_BYTES as u64,
        }
    }

    /// Payload length in bytes that this header promises, or `None` when it does not fit a u64
    /// (only a forged header can say so; [`ShardHeader::decode`] refuses one).
    pub fn checked_payload_bytes(&self) -> Option<u64> {
        self.blocks
            .checked_mul(self.block_size)?
            .checked_mul(self.dtype.bytes() as u64)
    }

    /// Payload length in bytes that this header promises. Exact for every header that
    /// [`ShardHeader::decode`] accepts; saturates (never panics) on a forged one.
    pub fn payload_bytes(&self) -> u64 {
        self.checked_payload_bytes().unwrap_or(u64::MAX)
    }

    /// Size of the whole shard file, header included, or `None` when it does not fit a u64.
    pub fn checked_file_bytes(&self) -> Option<u64> {
        self.checked_payload_bytes()?.checked_add(self.header_bytes)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; HEADER_BYTES];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&self.version.to_le_bytes());
        out[12..16].copy_from_slice(&self.dtype.code().to_le_bytes());
        out[16..24].copy_from_slice(&self.block_size.to_le_bytes());
        out[24..32].copy_from_slice(&self.blocks.to_le_bytes());
        out[32..40].copy_from_slice(&self.payload_checksum.to_le_bytes());
        out[40..48].copy_from_slice(&self.header_bytes.to_le_bytes());
        let own = payload_checksum(&out[0..48]);
        out[48..56].copy_from_slice(&own.to_le_bytes());
        out
    }

    /// Parses and checks a header. The error is a short reason; callers add the file name.
    pub fn decode(bytes: &[u8]) -> Result<ShardHeader, String> {
        if bytes.len() < HEADER_USED {
            return Err(format!(
                "file is {} bytes, shorter than a header",
                bytes.len()
            ));
        }
        if bytes[0..8] != MAGIC {
            return Err("wrong magic: not an ingot shard".into());
        }
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
        let stored_own = u64_at(48);
        if payload_checksum(&bytes[0..48]) != stored_own {
            return Err("header checksum mismatch: the header is corrupt".into());
        }
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(format!(
                "format version {version}, this build reads version {FORMAT_VERSION}"
            ));
        }
        let dtype = Dtype::from_code(u32_at(12))
            .ok_or_else(|| format!("unknown dtype code {}", u32_at(12)))?;
        let header = ShardHeader {
            version,
            dtype,
            block_size: u64_at(16),
            blocks: u64_at(24),
            payload_checksum: u64_at(32),
            header_bytes: u64_at(40),
        };
        if header.block_size == 0 {
            return Err("block_size is 0".into());
        }
        // Version 1 fixes the payload offset; any other value is corruption, and accepting it
        // would let a forged value reach size arithmetic.
        if header.header_bytes != HEADER_BYTES as u64 {
            return Err(format!(
                "header_bytes is {}, version {FORMAT_VERSION} shards have {HEADER_BYTES}",
                header.header_bytes
            ));
        }
        if header.blocks == 0 {
            return Err("blocks is 0; a shard holds at least one block".into());
        }
        if header.checked_file_bytes().is_none() {
            return Err(format!(
                "{} blocks of {} tokens do not fit in a file",
                header.blocks, header.block_size
            ));
        }
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_is_page_sized() {
        let h = ShardHeader::new(Dtype::U32, 1024, 7, 0xdead_beef);
        let bytes = h.encode();
        assert_eq!(bytes.len(), HEADER_BYTES);
        assert!(bytes[HEADER_USED..].iter().all(|&b| b == 0));
        assert_eq!(ShardHeader::decode(&bytes).unwrap(), h);
        assert_eq!(h.payload_bytes(), 7 * 1024 * 4);
    }

    #[test]
    fn any_flipped_header_byte_is_caught() {
        let bytes = ShardHeader::new(Dtype::U16, 8, 3, 42).encode();
        for i in 0..HEADER_USED {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(
                ShardHeader::decode(&bad).is_err(),
                "flip at byte {i} passed"
            );
        }
    }

    /// A header with a valid checksum but values no writer produces.
    fn forged(block_size: u64, blocks: u64, header_bytes: u64) -> Vec<u8> {
        let mut h = ShardHeader::new(Dtype::U32, block_size, blocks, 0);
        h.header_bytes = header_bytes;
        h.encode()
    }

    #[test]
    fn forged_sizes_are_refused_not_overflowed() {
        for (bytes, why) in [
            (forged(8, 1 << 62, 4096), "fit"),
            (forged(1 << 40, 1 << 30, 4096), "fit"),
            (forged(8, 0, 4096), "blocks is 0"),
            (forged(8, 3, 64), "header_bytes is 64"),
            (forged(8, 3, 1 << 40), "header_bytes"),
        ] {
            let err = ShardHeader::decode(&bytes).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        let mut h = ShardHeader::new(Dtype::U32, 8, 1 << 62, 0);
        assert_eq!(h.checked_payload_bytes(), None);
        assert_eq!(h.payload_bytes(), u64::MAX);
        h.blocks = 3;
        assert_eq!(h.checked_file_bytes(), Some(4096 + 96));
    }

    #[test]
    fn short_and_foreign_files_are_refused() {
        assert!(ShardHeader::decode(b"INGOT")
            .unwrap_err()
            .contains("shorter"));
        let mut bytes = ShardHeader::new(Dtype::U16, 8, 3, 42).encode();
        bytes[0] = b'X';
        assert!(ShardHeader::decode(&bytes).unwrap_err().contains("magic"));
    }
}
