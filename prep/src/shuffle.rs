//! `--shuffle-docs`: a seeded permutation of whole documents with bounded memory.
//!
//! Every document gets a key, a hash of the seed and its position in input order. Documents are
//! spilled, in input order, to one of `buckets` temporary files chosen by the key; then each
//! bucket in turn is loaded, sorted by key, and packed. The result is the order of documents by
//! `(key mod buckets, key)`, a pseudo-random permutation that depends only on the inputs and the
//! seed. Buckets are sized so that one fits comfortably in memory.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use anyhow::{Context, Result};

/// Target size of one bucket on disk.
const BUCKET_BYTES: u64 = 64 << 20;
/// Most buckets: every bucket is an open file for the whole spill, and the usual limit on
/// open files is 1024. Beyond `MAX_BUCKETS × BUCKET_BYTES` of spill, buckets grow past
/// `BUCKET_BYTES` (and drain holds one of them in memory).
const MAX_BUCKETS: u64 = 256;
/// Name prefix of the spill directory in `--out` (`--force` removes leftovers of a killed run).
pub const SPILL_PREFIX: &str = ".prep-shuffle-";

pub struct Shuffler {
    seed: u64,
    dir: tempfile::TempDir,
    files: Vec<BufWriter<File>>,
    /// Key and bucket of the document being spilled (pieces of one document share them).
    open: Option<(u64, usize)>,
    ordinal: u64,
}

/// Record header: key u64, ordinal u64, opens u8 (the record starts its document), token count
/// u32 (all little-endian), then the tokens as u32.
const RECORD_HEADER: usize = 8 + 8 + 1 + 4;

impl Shuffler {
    /// `estimated_bytes`: roughly how many bytes of tokens will be spilled.
    pub fn new(out_dir: &Path, seed: u64, estimated_bytes: u64) -> Result<Shuffler> {
        let buckets = estimated_bytes.div_ceil(BUCKET_BYTES).clamp(1, MAX_BUCKETS) as usize;
        let dir = tempfile::Builder::new()
            .prefix(SPILL_PREFIX)
            .tempdir_in(out_dir)
            .with_context(|| format!("cannot create a spill directory in {}", out_dir.display()))?;
        let files = (0..buckets)
            .map(|b| {
                let path = dir.path().join(format!("bucket-{b:04}"));
                File::create(&path)
                    .map(|f| BufWriter::with_capacity(1 << 16, f))
                    .with_context(|| format!("cannot create {}", path.display()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Shuffler {
            seed,
            dir,
            files,
            open: None,
            ordinal: 0,
        })
    }

    /// Spills one document run (a whole document, or a piece of the open one).
    pub fn push(&mut self, tokens: &[u32], opens: bool, closes: bool) -> Result<()> {
        let (key, bucket) = match (opens, self.open) {
            (false, Some(open)) => open,
            _ => {
                let key =
                    xxhash_rust::xxh3::xxh3_64_with_seed(&self.ordinal.to_le_bytes(), self.seed);
                self.ordinal += 1;
                (key, (key % self.files.len() as u64) as usize)
            }
        };
        self.open = if closes { None } else { Some((key, bucket)) };
        let file = &mut self.files[bucket];
        let mut header = [0u8; RECORD_HEADER];
        header[0..8].copy_from_slice(&key.to_le_bytes());
        header[8..16].copy_from_slice(&(self.ordinal - 1).to_le_bytes());
        header[16] = opens as u8;
        header[17..21].copy_from_slice(&(tokens.len() as u32).to_le_bytes());
        let write = |file: &mut BufWriter<File>| -> std::io::Result<()> {
            file.write_all(&header)?;
            for t in tokens {
                file.write_all(&t.to_le_bytes())?;
            }
            Ok(())
        };
        write(file).with_context(|| {
            format!(
                "cannot write to the shuffle spill in {}",
                self.dir.path().display()
            )
        })
    }

    /// Reads the buckets back in order and calls `sink(tokens, opens)` for every document run in
    /// shuffled order, `opens` marking a document's first run. The spill directory is removed
    /// afterwards (and on any error).
    pub fn drain(self, sink: &mut dyn FnMut(&[u32], bool) -> Result<()>) -> Result<()> {
        let Shuffler { dir, files, .. } = self;
        let n = files.len();
        for f in files {
            f.into_inner()
                .map_err(|e| e.into_error())
                .context("cannot flush the shuffle spill")?;
        }
        for b in 0..n {
            let path = dir.path().join(format!("bucket-{b:04}"));
            let mut bytes = Vec::new();
            BufReader::new(File::open(&path)?)
                .read_to_end(&mut bytes)
                .with_context(|| format!("cannot read {}", path.display()))?;
            // (key, ordinal, record index) for a stable order; pieces of one document share
            // key and ordinal and keep their spill order.
            let mut records = Vec::new();
            let mut at = 0usize;
            while at < bytes.len() {
                let key = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
                let ordinal =
                    u64::from_le_bytes(bytes[at + 8..at + 16].try_into().expect("8 bytes"));
                let opens = bytes[at + 16] == 1;
                let len = u32::from_le_bytes(bytes[at + 17..at + 21].try_into().expect("4 bytes"))
                    as usize;
                let start = at + RECORD_HEADER;
                records.push((key, ordinal, records.len(), opens, start, len));
                at = start + 4 * len;
            }
            records.sort_by_key(|r| (r.0, r.1, r.2));
            for (_, _, _, opens, start, len) in records {
                let tokens: Vec<u32> = bytes[start..start + 4 * len]
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect();
                sink(&tokens, opens)?;
            }
        }
        drop(dir);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buckets_for(estimated_bytes: u64) -> usize {
        let out = tempfile::tempdir().unwrap();
        let shuffler = Shuffler::new(out.path(), 0, estimated_bytes).unwrap();
        let files = std::fs::read_dir(shuffler.dir.path()).unwrap().count();
        assert_eq!(files, shuffler.files.len());
        files
    }

    #[test]
    fn bucket_files_are_capped_for_file_descriptor_limits() {
        assert_eq!(buckets_for(0), 1);
        assert_eq!(buckets_for(3 * BUCKET_BYTES), 3);
        assert_eq!(buckets_for(1 << 50), MAX_BUCKETS as usize);
    }
}
