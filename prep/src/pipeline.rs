//! The parallel, ordered, bounded pipeline.
//!
//! ```text
//!  reader thread ──chunks──▶ worker pool (parse + tokenize) ──results──▶ caller, in input order
//!        ▲                                                                  │
//!        └───────────────────────── permits ◀───────────────────────────────┘
//! ```
//! One reader thread walks the files in order and cuts them into chunks, numbering each. Workers
//! turn chunks into token runs in any order; the calling thread puts results back in sequence
//! and hands them to the sink. A chunk may only be read once a permit is free, and a permit
//! comes back only when its chunk has reached the sink, so at most `window` chunks exist at any
//! time: memory is bounded whatever the corpus size, and the output is the same for any thread
//! count because nothing downstream of the workers sees their order. Each permit carries a token
//! buffer that goes round the loop, so steady state allocates no new token memory.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use anyhow::{anyhow, Result};

use crate::discover::InputFile;
use crate::readers::{read_file, Chunk, ReadOptions};
use crate::records::{self, Reason, Skip};
use crate::tokenizer::{Specials, Tokenizer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
}

/// Where one document (or piece) ends in [`Encoded::tokens`].
#[derive(Debug, Clone, PartialEq)]
pub struct DocRun {
    pub end: usize,
    /// Set when the run opens a document; continuation pieces inherit the open document's split.
    pub split: Option<Split>,
    pub closes: bool,
}

/// A tokenized chunk.
#[derive(Debug)]
pub struct Encoded {
    pub seq: u64,
    pub source: usize,
    /// Every document's ids back to back, BOS/EOS included.
    pub tokens: Vec<u32>,
    pub docs: Vec<DocRun>,
    pub skips: Vec<Skip>,
    /// UTF-8 bytes of document text in this chunk.
    pub text_bytes: u64,
}

/// Everything a worker needs, shared by all of them.
pub struct Encoder {
    pub tokenizer: Tokenizer,
    pub specials: Specials,
    pub read: ReadOptions,
    pub val_fraction: f64,
}

/// Documents are assigned to `val` from a hash of their first mebibyte of text, so the choice
/// depends on content alone (not position, seed or thread count) and long streamed documents
/// are decided from their first piece.
pub const VAL_HASH_BYTES: usize = 1 << 20;

pub fn choose_split(text: &str, val_fraction: f64) -> Split {
    if val_fraction <= 0.0 {
        return Split::Train;
    }
    let bytes = &text.as_bytes()[..text.len().min(VAL_HASH_BYTES)];
    let h = xxhash_rust::xxh3::xxh3_64(bytes);
    // Top 53 bits as a uniform number in [0, 1).
    let u = (h >> 11) as f64 / (1u64 << 53) as f64;
    if u < val_fraction {
        Split::Val
    } else {
        Split::Train
    }
}

impl Encoder {
    /// Tokenizes a chunk into `tokens` (a recycled buffer; its contents are discarded).
    pub fn encode(&self, seq: u64, chunk: &Chunk, mut tokens: Vec<u32>) -> Encoded {
        tokens.clear();
        let mut out = Encoded {
            seq,
            source: chunk.source,
            tokens,
            docs: Vec::new(),
            skips: Vec::new(),
            text_bytes: 0,
        };
        let mut scratch = Vec::new();
        let mut failures = Vec::new();
        records::for_each(
            chunk,
            &self.read.text_path,
            |doc| {
                let start = out.tokens.len();
                if doc.first {
                    out.tokens.extend(self.specials.bos);
                }
                if let Err(e) = self
                    .tokenizer
                    .encode_into(&doc.text, &mut scratch, &mut out.tokens)
                {
                    out.tokens.truncate(start);
                    failures.push(Skip {
                        line: doc.line,
                        reason: Reason::TokenizerError,
                        detail: e.to_string(),
                        count: 1,
                    });
                    return;
                }
                if doc.last {
                    out.tokens.extend(self.specials.eos);
                }
                out.text_bytes += doc.text.len() as u64;
                let split = doc
                    .first
                    .then(|| choose_split(&doc.text, self.val_fraction));
                out.docs.push(DocRun {
                    end: out.tokens.len(),
                    split,
                    closes: doc.last,
                });
            },
            |skip| out.skips.push(skip),
        );
        out.skips.extend(failures);
        out.skips.sort_by_key(|s| s.line);
        out
    }
}

/// Runs the pipeline over `files`, calling `sink` with every chunk's result in input order.
/// `consumed` counts input bytes read from disk (for progress). Stops at the first sink error.
pub fn run(
    files: &[InputFile],
    encoder: Arc<Encoder>,
    threads: usize,
    consumed: Arc<AtomicU64>,
    sink: &mut dyn FnMut(&Encoded) -> Result<()>,
) -> Result<()> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("prep-worker-{i}"))
        .build()
        .map_err(|e| anyhow!("cannot start {threads} worker threads: {e}"))?;
    let window = 2 * threads + 2;
    let (permit_tx, permit_rx) = mpsc::sync_channel::<Vec<u32>>(window);
    for _ in 0..window {
        permit_tx
            .send(Vec::new())
            .expect("the channel has room for every permit");
    }
    let (result_tx, result_rx) = mpsc::channel::<Result<Encoded, String>>();
    let stop = Arc::new(AtomicBool::new(false));

    std::thread::scope(|scope| {
        let reader = {
            let stop = Arc::clone(&stop);
            let encoder = Arc::clone(&encoder);
            let read = encoder.read.clone();
            let pool = &pool;
            scope.spawn(move || {
                let mut seq = 0u64;
                for (source, file) in files.iter().enumerate() {
                    read_file(file, source, &read, &consumed, &mut |chunk| {
                        if stop.load(Ordering::Relaxed) {
                            return false;
                        }
                        let Ok(buffer) = permit_rx.recv() else {
                            return false;
                        };
                        let tx = result_tx.clone();
                        let encoder = Arc::clone(&encoder);
                        let this = seq;
                        seq += 1;
                        pool.spawn(move || {
                            // A panic inside the tokenizer must not abort the process or hang
                            // the pipeline: it becomes an error for this chunk.
                            let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                                encoder.encode(this, &chunk, buffer)
                            }))
                            .map_err(|_| {
                                format!(
                                    "the tokenizer panicked on chunk {this} of input file #{}",
                                    chunk.source + 1
                                )
                            });
                            let _ = tx.send(result);
                        });
                        true
                    });
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
                // result_tx drops here; the channel closes when the last worker finishes.
            })
        };

        let mut next = 0u64;
        let mut waiting: BTreeMap<u64, Encoded> = BTreeMap::new();
        let mut outcome = Ok(());
        'receive: for result in result_rx.iter() {
            let encoded = match result {
                Ok(e) => e,
                Err(msg) => {
                    outcome = Err(anyhow!(msg));
                    break;
                }
            };
            waiting.insert(encoded.seq, encoded);
            while let Some(encoded) = waiting.remove(&next) {
                next += 1;
                if let Err(e) = sink(&encoded) {
                    outcome = Err(e);
                    break 'receive;
                }
                // The permit goes back with the chunk's token buffer. The reader may already
                // have finished and dropped its end.
                let _ = permit_tx.try_send(encoded.tokens);
            }
        }
        if outcome.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        // Unblocks a reader waiting for a permit.
        drop(permit_tx);
        drop(result_rx);
        let _ = reader.join();
        outcome
    })
}
