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

use std::any::Any;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use anyhow::{anyhow, Result};
use ingot_tokenizer::{Specials, Tokenizer};

use crate::chunk::{Body, Chunk, Reason, Skip};
use crate::discover::{Format, InputFile};
use crate::readers::{read_file, ReadOptions};
use crate::records;

/// Where one document (or piece) ends in [`Encoded::tokens`].
#[derive(Debug, Clone, PartialEq)]
pub struct DocRun {
    pub end: usize,
    /// The run starts a document (a whole one, or its first piece).
    pub opens: bool,
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
                let text_start = out.tokens.len();
                match self
                    .tokenizer
                    .encode_into(&doc.text, &mut scratch, &mut out.tokens)
                {
                    Ok(()) => out.text_bytes += doc.text.len() as u64,
                    Err(e) if doc.first && doc.last => {
                        // A whole document: it is skipped, nothing of it is packed.
                        out.tokens.truncate(start);
                        failures.push(Skip {
                            line: doc.line,
                            reason: Reason::TokenizerError,
                            detail: format!("{e}; the document is skipped"),
                            count: 1,
                        });
                        return;
                    }
                    Err(e) => {
                        // A piece of a longer document: the packer needs the run to open or
                        // close the document, so only this piece's text is left out.
                        out.tokens.truncate(text_start);
                        failures.push(Skip {
                            line: doc.line,
                            reason: Reason::TokenizerError,
                            detail: format!("{e}; this piece of the document is left out"),
                            count: 1,
                        });
                    }
                }
                if doc.last {
                    out.tokens.extend(self.specials.eos);
                }
                out.docs.push(DocRun {
                    end: out.tokens.len(),
                    opens: doc.first,
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

thread_local! {
    /// Set while this thread runs code whose panics [`catch_quietly`] catches and reports as one
    /// line of its own; the hook from [`install_panic_hook`] then prints nothing for them.
    static CATCHING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic into `Err(message)`. With [`install_panic_hook`] in place the
/// default panic message is not printed, so stderr keeps one line per problem.
pub fn catch_quietly<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    let was = CATCHING.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(was));
    result.map_err(|payload| panic_message(payload.as_ref()))
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

/// Installs a panic hook that stays silent for panics inside [`catch_quietly`] (they are
/// reported as skips or errors) and prints every other panic as the default hook does.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !CATCHING.with(|c| c.get()) {
            default(info);
        }
    }));
}

/// Reads one file with `read`, handing its chunks to `dispatch`. A panic in `read` (the parquet
/// crate panics on some corrupt files) ends the file, not the run: what was handed out stays, a
/// document cut short is closed (so it gets its EOS and the next file starts afresh), and the
/// rest of the file is one counted skip.
fn read_guarded(
    file: &InputFile,
    source: usize,
    read: impl FnOnce(&mut dyn FnMut(Chunk) -> bool),
    dispatch: &mut dyn FnMut(Chunk) -> bool,
) {
    // Whether the last piece handed out left its document open.
    let mut open_piece = false;
    let read = catch_quietly(|| {
        read(&mut |chunk: Chunk| {
            if let Body::Piece { last, .. } = &chunk.body {
                open_piece = !*last;
            }
            dispatch(chunk)
        })
    });
    let Err(msg) = read else { return };
    let close = Chunk {
        source,
        first_line: 0,
        body: Body::Piece {
            text: String::new(),
            first: false,
            last: true,
        },
    };
    if open_piece && !dispatch(close) {
        return;
    }
    let reason = match file.format {
        Format::Parquet => Reason::CorruptParquet,
        Format::Txt | Format::Jsonl => Reason::UnreadableFile,
    };
    dispatch(Chunk {
        source,
        first_line: 0,
        body: Body::Skip {
            line: 0,
            reason,
            detail: format!("reader failed: {msg}; the rest of the file is skipped"),
            count: 1,
        },
    });
}

/// Runs the pipeline over `files`, calling `sink` with every chunk's result in input order.
/// `consumed` counts input bytes read from disk (for progress). Stops at the first sink error.
///
/// A panic inside a reader (the parquet crate panics on some corrupt files) ends that file
/// with a counted skip and the run goes on with the next file.
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
    let window = threads.saturating_mul(2).saturating_add(2);
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
            let options = encoder.read.clone();
            let pool = &pool;
            scope.spawn(move || {
                let mut seq = 0u64;
                let mut dispatch = |chunk: Chunk| -> bool {
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
                        let result = catch_quietly(|| encoder.encode(this, &chunk, buffer))
                            .map_err(|msg| {
                                format!(
                                    "the tokenizer panicked on chunk {this} of input file #{}: {msg}",
                                    chunk.source + 1
                                )
                            });
                        let _ = tx.send(result);
                    });
                    true
                };
                for (source, file) in files.iter().enumerate() {
                    read_guarded(
                        file,
                        source,
                        |emit| read_file(file, source, &options, &consumed, emit),
                        &mut dispatch,
                    );
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
                // result_tx drops here; the channel closes when the last worker finishes.
                seq
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
        let joined = reader.join();
        if outcome.is_ok() {
            // A dataset must never be finished from a partial stream: every chunk the reader
            // numbered has to have reached the sink.
            match joined {
                Err(payload) => {
                    outcome = Err(anyhow!(
                        "the reader thread failed: {}",
                        panic_message(payload.as_ref())
                    ))
                }
                Ok(sent) if next != sent || !waiting.is_empty() => {
                    outcome = Err(anyhow!(
                        "internal error: only {next} of {sent} chunks reached the output"
                    ))
                }
                Ok(_) => {}
            }
        }
        outcome
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::Compression;

    fn file(format: Format) -> InputFile {
        InputFile {
            path: "x".into(),
            name: "x".into(),
            format,
            compression: Compression::None,
            size: 0,
        }
    }

    /// `(first, last)` of pieces and the reason of skips, in order.
    fn read_panicking(format: Format, piece: Option<(bool, bool)>) -> Vec<String> {
        let mut got = Vec::new();
        read_guarded(
            &file(format),
            0,
            |emit| {
                if let Some((first, last)) = piece {
                    let text = "some text".into();
                    let body = Body::Piece { text, first, last };
                    emit(Chunk {
                        source: 0,
                        first_line: 1,
                        body,
                    });
                }
                panic!("injected failure");
            },
            &mut |chunk| {
                got.push(match chunk.body {
                    Body::Piece { text, first, last } => format!("piece {first} {last} {text:?}"),
                    Body::Skip { reason, detail, .. } => format!("skip {} {detail}", reason.key()),
                    other => format!("{other:?}"),
                });
                true
            },
        );
        got
    }

    #[test]
    fn a_reader_panic_ends_its_file_with_a_counted_skip() {
        let skip = "reader failed: injected failure; the rest of the file is skipped";
        assert_eq!(
            read_panicking(Format::Parquet, None),
            [format!("skip corrupt_parquet {skip}")]
        );
        // A document left open by the panic is closed, so the next file starts afresh.
        assert_eq!(
            read_panicking(Format::Txt, Some((true, false))),
            [
                "piece true false \"some text\"".to_string(),
                "piece false true \"\"".to_string(),
                format!("skip unreadable_file {skip}")
            ]
        );
        assert_eq!(
            read_panicking(Format::Jsonl, Some((true, true))),
            [
                "piece true true \"some text\"".to_string(),
                format!("skip unreadable_file {skip}")
            ]
        );
    }
}
