//! Writer → index → memory-mapped reader → verify, for both token widths.

use std::path::Path;

use ingot_formats::checksum::{format_payload_checksum, sha256_hex};
use ingot_formats::index::{Splits, Stats};
use ingot_formats::{
    verify_dataset, Dataset, Dtype, FormatError, Index, Shard, ShardEntry, ShardHeader, SplitIndex,
    SplitWriter, TokenizerRef, Tokens, FORMAT_NAME, FORMAT_VERSION, HEADER_BYTES,
};

/// Writes a dataset whose train stream is `train` and val stream is `val`.
fn write_dataset(
    dir: &Path,
    dtype: Dtype,
    vocab: u64,
    block: usize,
    shard_bytes: u64,
    train: &[u32],
    val: &[u32],
) -> Index {
    std::fs::write(dir.join("tokenizer.json"), b"{}").unwrap();
    let split_index = |name: &str, stream: &[u32]| {
        let mut w = SplitWriter::new(dir, name, dtype, block, shard_bytes);
        // Push in uneven pieces to exercise block assembly across calls.
        for piece in stream.chunks(7) {
            w.push(piece).unwrap();
        }
        let done = w.finish().unwrap();
        SplitIndex {
            blocks: done.blocks,
            tokens: done.blocks * block as u64,
            documents: 0,
            tokens_dropped: done.tokens_dropped,
            shards: done.shards,
        }
    };
    let index = Index {
        format: FORMAT_NAME.into(),
        version: FORMAT_VERSION,
        dtype,
        block_size: block as u64,
        header_bytes: HEADER_BYTES as u64,
        vocab_size: vocab,
        bos_id: None,
        eos_id: Some(0),
        tokenizer: TokenizerRef {
            file: "tokenizer.json".into(),
            sha256: sha256_hex(b"{}"),
        },
        splits: Splits {
            train: split_index("train", train),
            val: split_index("val", val),
        },
        stats: Stats::default(),
        prep: serde_json::json!({}),
    };
    index.write_atomic(dir).unwrap();
    index
}

fn round_trip(dtype: Dtype, vocab: u64) {
    let dir = tempfile::tempdir().unwrap();
    let block = 16;
    let train: Vec<u32> = (0..1000u64).map(|i| ((i * 7919) % vocab) as u32).collect();
    let val: Vec<u32> = (0..40u64).map(|i| (vocab - 1 - i) as u32).collect();
    // 3 blocks per shard: 62 train blocks -> 21 shards.
    let index = write_dataset(
        dir.path(),
        dtype,
        vocab,
        block,
        (3 * block * dtype.bytes()) as u64,
        &train,
        &val,
    );
    assert_eq!(index.splits.train.blocks, 1000 / 16);
    assert_eq!(index.splits.train.tokens_dropped, 1000 % 16);
    assert_eq!(index.splits.train.shards.len(), 21);
    assert_eq!(index.splits.val.blocks, 2);

    let ds = Dataset::open(dir.path()).unwrap();
    for b in 0..index.splits.train.blocks {
        let got = ds.block("train", b).unwrap();
        let want = &train[b as usize * block..(b as usize + 1) * block];
        assert_eq!(got.to_vec(), want);
        match (dtype, got) {
            (Dtype::U16, Tokens::U16(_)) | (Dtype::U32, Tokens::U32(_)) => {}
            _ => panic!("block came back with the wrong width"),
        }
    }
    assert!(ds.block("train", index.splits.train.blocks).is_none());
    assert_eq!(ds.block("val", 1).unwrap().to_vec(), &val[16..32]);

    // The payload is readable the way numpy's memmap reads it: raw LE at header_bytes.
    let raw = std::fs::read(dir.path().join("train-00000.bin")).unwrap();
    let first = &raw[HEADER_BYTES..HEADER_BYTES + dtype.bytes()];
    let first = match dtype {
        Dtype::U16 => u16::from_le_bytes([first[0], first[1]]) as u32,
        Dtype::U32 => u32::from_le_bytes(first.try_into().unwrap()),
    };
    assert_eq!(first, train[0]);

    let report = verify_dataset(dir.path()).unwrap();
    assert_eq!(report.shards, 21 + 1);
    assert_eq!(report.blocks, 62 + 2);
}

#[test]
fn uint16_round_trip() {
    round_trip(Dtype::U16, 65_536);
}

#[test]
fn uint32_round_trip() {
    round_trip(Dtype::U32, 128_256);
}

#[test]
fn uint16_writer_refuses_an_id_that_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = SplitWriter::new(dir.path(), "train", Dtype::U16, 2, 1 << 20);
    let err = w.push(&[1, 70_000]).unwrap_err();
    assert!(
        err.to_string().contains("does not fit dtype uint16"),
        "{err}"
    );
}

fn small_dataset() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let stream: Vec<u32> = (0..256).collect();
    write_dataset(
        dir.path(),
        Dtype::U16,
        300,
        8,
        1 << 20,
        &stream,
        &stream[..16],
    );
    dir
}

#[test]
fn verify_names_a_shard_with_a_flipped_payload_byte() {
    let dir = small_dataset();
    let path = dir.path().join("train-00000.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[HEADER_BYTES + 100] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    let err = verify_dataset(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("train-00000.bin") && msg.contains("checksum"),
        "{msg}"
    );
}

#[test]
fn verify_names_a_shard_with_a_flipped_header_byte() {
    let dir = small_dataset();
    let path = dir.path().join("val-00000.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[20] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let msg = verify_dataset(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("val-00000.bin") && msg.contains("header"),
        "{msg}"
    );
}

#[test]
fn verify_catches_a_flipped_byte_in_the_index() {
    let dir = small_dataset();
    let path = dir.path().join("index.json");
    let text = std::fs::read_to_string(&path).unwrap();
    // Change one hex digit of the first shard checksum.
    let at = text.find("xxh3_64:").unwrap() + "xxh3_64:".len();
    let mut bytes = text.into_bytes();
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    std::fs::write(&path, bytes).unwrap();
    let msg = verify_dataset(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("train-00000.bin") && msg.contains("checksum"),
        "{msg}"
    );
}

#[test]
fn verify_catches_a_truncated_shard_and_a_changed_tokenizer() {
    let dir = small_dataset();
    let path = dir.path().join("train-00000.bin");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 2]).unwrap();
    let msg = verify_dataset(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("train-00000.bin") && msg.contains("bytes"),
        "{msg}"
    );
    assert!(Dataset::open(dir.path()).is_err());

    let dir = small_dataset();
    std::fs::write(dir.path().join("tokenizer.json"), b"{ }").unwrap();
    let msg = verify_dataset(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("tokenizer.json") && msg.contains("sha256"),
        "{msg}"
    );
}

#[test]
fn a_directory_without_index_is_refused() {
    let dir = small_dataset();
    std::fs::remove_file(dir.path().join("index.json")).unwrap();
    assert!(matches!(
        Dataset::open(dir.path()),
        Err(FormatError::MissingIndex { .. })
    ));
    assert!(matches!(
        verify_dataset(dir.path()),
        Err(FormatError::MissingIndex { .. })
    ));
}

#[test]
fn an_index_of_another_version_is_refused() {
    let dir = small_dataset();
    let path = dir.path().join("index.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"version\": 1,", "\"version\": 2,");
    std::fs::write(&path, text).unwrap();
    let msg = Dataset::open(dir.path()).err().unwrap().to_string();
    assert!(msg.contains("version 2"), "{msg}");
}

/// Rewrites a dataset's index.json through `edit`, without validating it.
fn edit_index(dir: &Path, edit: impl FnOnce(&mut Index)) {
    let path = dir.join("index.json");
    let mut index: Index = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut index);
    std::fs::write(&path, serde_json::to_string_pretty(&index).unwrap()).unwrap();
}

/// verify and open must both refuse the dataset with an error (no panic, no "ok") naming `what`.
fn assert_refused(dir: &Path, what: &str) {
    let verify = verify_dataset(dir).unwrap_err().to_string();
    assert!(verify.contains(what), "{verify}");
    let open = Dataset::open(dir).err().unwrap().to_string();
    assert!(open.contains(what), "{open}");
}

#[test]
fn forged_block_counts_that_overflow_are_refused() {
    // Header and index agree on 2^62 blocks: blocks × block_size overflows a u64.
    let dir = small_dataset();
    let path = dir.path().join("train-00000.bin");
    let bytes = std::fs::read(&path).unwrap();
    let mut header = ShardHeader::decode(&bytes).unwrap();
    header.blocks = 1 << 62;
    let mut forged = header.encode();
    forged.extend_from_slice(&bytes[HEADER_BYTES..]);
    std::fs::write(&path, forged).unwrap();
    edit_index(dir.path(), |ix| {
        ix.splits.train.shards[0].blocks = 1 << 62;
        ix.splits.train.blocks = 1 << 62;
    });
    assert_refused(dir.path(), "fit in a file");
}

#[test]
fn forged_header_bytes_below_a_page_are_refused() {
    // A 64-byte header, the payload right after it, and an index that agrees.
    let dir = small_dataset();
    let path = dir.path().join("train-00000.bin");
    let bytes = std::fs::read(&path).unwrap();
    let mut header = ShardHeader::decode(&bytes).unwrap();
    header.header_bytes = 64;
    let mut forged = header.encode()[..64].to_vec();
    forged.extend_from_slice(&bytes[HEADER_BYTES..]);
    std::fs::write(&path, forged).unwrap();
    edit_index(dir.path(), |ix| ix.header_bytes = 64);
    assert_refused(dir.path(), "header_bytes is 64");

    // Only the shard says 64: the header itself is refused.
    edit_index(dir.path(), |ix| ix.header_bytes = HEADER_BYTES as u64);
    assert_refused(dir.path(), "header_bytes is 64");
}

#[test]
fn forged_empty_shards_are_refused() {
    // A val shard of 0 blocks: a header and nothing else, listed in the index.
    let dir = small_dataset();
    let path = dir.path().join("val-00001.bin");
    let header = ShardHeader::new(Dtype::U16, 8, 0, empty_checksum());
    std::fs::write(&path, header.encode()).unwrap();
    edit_index(dir.path(), |ix| {
        ix.splits.val.shards.push(ShardEntry {
            file: "val-00001.bin".into(),
            blocks: 0,
            checksum: format_payload_checksum(empty_checksum()),
        })
    });
    assert_refused(dir.path(), "0 blocks");
    // Opened without the index, the header alone is refused too.
    let msg = Shard::open(&path, None).err().unwrap().to_string();
    assert!(msg.contains("blocks is 0"), "{msg}");
}

/// XXH3-64 of an empty payload.
fn empty_checksum() -> u64 {
    ingot_formats::checksum::payload_checksum(&[])
}

#[test]
fn tokenizer_file_must_be_a_plain_name() {
    for name in ["../tokenizer.json", "/etc/passwd", ".hidden", ""] {
        let dir = small_dataset();
        edit_index(dir.path(), |ix| ix.tokenizer.file = name.into());
        assert_refused(dir.path(), "tokenizer file name");
    }
}

#[test]
fn a_missing_directory_is_named_as_missing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dataset");
    let msg = Dataset::open(&missing).err().unwrap().to_string();
    assert!(msg.contains("no such directory"), "{msg}");
    assert!(!msg.contains("interrupted"), "{msg}");
}

#[test]
fn finish_keeps_every_file_listed_for_cleanup() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = SplitWriter::new(dir.path(), "val", Dtype::U16, 4, 8);
    w.push(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]).unwrap();
    let done = w.finish().unwrap();
    assert_eq!(done.blocks, 2);
    let listed: Vec<_> = w.created_files().to_vec();
    for shard in &done.shards {
        assert!(listed.contains(&dir.path().join(&shard.file)), "{listed:?}");
    }
    for f in listed.iter().filter(|f| f.exists()) {
        std::fs::remove_file(f).unwrap();
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
