//! Full verification of a dataset: the index, the tokenizer digest, every shard header, size
//! and payload checksum. Stops at the first problem and names the file.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::checksum::{sha256_hex, PayloadHasher};
use crate::header::{ShardHeader, HEADER_BYTES};
use crate::index::Index;
use crate::reader::check_header_against_index;
use crate::FormatError;

#[derive(Debug, Clone, PartialEq)]
pub struct VerifyReport {
    pub shards: usize,
    pub blocks: u64,
    pub payload_bytes: u64,
}

pub fn verify_dataset(dir: &Path) -> Result<VerifyReport, FormatError> {
    let index = Index::read(dir)?;
    let tok_path = dir.join(&index.tokenizer.file);
    let tok = std::fs::read(&tok_path).map_err(|e| FormatError::io(&tok_path, e))?;
    let digest = sha256_hex(&tok);
    if digest != index.tokenizer.sha256 {
        return Err(FormatError::Mismatch {
            path: tok_path,
            reason: format!(
                "sha256 is {digest}, index.json says {}",
                index.tokenizer.sha256
            ),
        });
    }
    let mut report = VerifyReport {
        shards: 0,
        blocks: 0,
        payload_bytes: 0,
    };
    for (_, split) in index.splits.iter() {
        for entry in &split.shards {
            let path = dir.join(&entry.file);
            let mut file = File::open(&path).map_err(|e| FormatError::io(&path, e))?;
            let len = file
                .metadata()
                .map_err(|e| FormatError::io(&path, e))?
                .len();
            // Sizes below come from the file: decode refuses values that overflow, and the
            // arithmetic stays checked anyway.
            let head_len = len.min(HEADER_BYTES as u64) as usize;
            let mut head = vec![0u8; head_len];
            file.read_exact(&mut head)
                .map_err(|e| FormatError::io(&path, e))?;
            let header = ShardHeader::decode(&head).map_err(|reason| FormatError::BadHeader {
                path: path.clone(),
                reason,
            })?;
            check_header_against_index(&path, &header, Some((&index, entry)))?;
            let want = header.checked_file_bytes();
            if want != Some(len) {
                return Err(FormatError::Mismatch {
                    path,
                    reason: format!(
                        "file is {len} bytes, header promises {}",
                        want.map_or("more than 2^64".to_string(), |w| w.to_string())
                    ),
                });
            }
            // Skip any padding beyond the bytes already read, then hash the payload.
            let mut skip = header.header_bytes.saturating_sub(head_len as u64);
            let mut buf = vec![0u8; 1 << 20];
            while skip > 0 {
                let n = skip.min(buf.len() as u64) as usize;
                file.read_exact(&mut buf[..n])
                    .map_err(|e| FormatError::io(&path, e))?;
                skip -= n as u64;
            }
            let mut hasher = PayloadHasher::new();
            let mut left = header.payload_bytes();
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                file.read_exact(&mut buf[..n])
                    .map_err(|e| FormatError::io(&path, e))?;
                hasher.update(&buf[..n]);
                left -= n as u64;
            }
            if hasher.finish() != header.payload_checksum {
                return Err(FormatError::Mismatch {
                    path,
                    reason: "payload checksum mismatch: the shard's tokens are corrupt".into(),
                });
            }
            report.shards += 1;
            report.blocks = report.blocks.saturating_add(header.blocks);
            report.payload_bytes = report.payload_bytes.saturating_add(header.payload_bytes());
        }
    }
    Ok(report)
}
