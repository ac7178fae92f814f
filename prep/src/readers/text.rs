//! Line-oriented files: `.jsonl` and `.txt` (by line, paragraph or whole file), compressed or not.

use std::io::Read;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use super::{compressed, Body, Chunk, ReadOptions, TxtUnit, CHUNK_BYTES};
use crate::discover::{Compression, Format, InputFile};
use crate::records::Reason;

pub fn read(
    file: &InputFile,
    source: usize,
    options: &ReadOptions,
    consumed: &Arc<AtomicU64>,
    emit: &mut dyn FnMut(Chunk) -> bool,
) {
    let mut reader = match compressed::open(file, consumed) {
        Ok(r) => r,
        Err(e) => {
            emit(Chunk {
                source,
                first_line: 0,
                body: Body::Skip {
                    line: 0,
                    reason: Reason::UnreadableFile,
                    detail: e.to_string(),
                    count: 1,
                },
            });
            return;
        }
    };
    let stream_error = if file.compression == Compression::None {
        Reason::UnreadableFile
    } else {
        Reason::TruncatedCompressed
    };
    let mut split = Splitter {
        reader: &mut *reader,
        source,
        line: 1,
        stream_error,
        emit,
    };
    match (file.format, options.txt_unit) {
        (Format::Jsonl, _) => split.records(last_line_end, Body::JsonLines),
        (_, TxtUnit::Line) => split.records(last_line_end, Body::TextLines),
        (_, TxtUnit::Paragraph) => split.records(last_blank_line_end, Body::Paragraphs),
        (_, TxtUnit::File) => split.pieces(),
    }
}

struct Splitter<'a> {
    reader: &'a mut dyn Read,
    source: usize,
    /// Line number of the first byte not yet emitted.
    line: u64,
    stream_error: Reason,
    emit: &'a mut dyn FnMut(Chunk) -> bool,
}

fn newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

impl Splitter<'_> {
    fn send(&mut self, bytes: Vec<u8>, make: fn(Vec<u8>) -> Body) -> bool {
        let first_line = self.line;
        self.line += newlines(&bytes);
        (self.emit)(Chunk {
            source: self.source,
            first_line,
            body: make(bytes),
        })
    }

    fn fail(&mut self, line: u64, error: std::io::Error) {
        (self.emit)(Chunk {
            source: self.source,
            first_line: line,
            body: Body::Skip {
                line,
                reason: self.stream_error,
                detail: format!("{error}; the rest of the file is skipped"),
                count: 1,
            },
        });
    }

    /// Emits chunks of whole records; `cut` finds the end of the last whole record in a buffer.
    fn records(&mut self, cut: fn(&[u8]) -> Option<usize>, make: fn(Vec<u8>) -> Body) {
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK_BYTES * 2);
        loop {
            match compressed::fill(self.reader, &mut buf, CHUNK_BYTES) {
                Ok(0) => {
                    if !buf.is_empty() {
                        self.send(buf, make);
                    }
                    return;
                }
                Ok(_) => {
                    if buf.len() >= CHUNK_BYTES {
                        if let Some(end) = cut(&buf) {
                            let rest = buf.split_off(end);
                            if !self.send(std::mem::replace(&mut buf, rest), make) {
                                return;
                            }
                        }
                    }
                }
                Err(e) => {
                    // Keep every whole record read before the failure, lose the partial one.
                    if let Some(end) = cut(&buf) {
                        buf.truncate(end);
                        let at = self.line + newlines(&buf);
                        if self.send(buf, make) {
                            self.fail(at, e);
                        }
                    } else {
                        let at = self.line;
                        self.fail(at, e);
                    }
                    return;
                }
            }
        }
    }

    /// `--txt-unit file`: the whole file is one document, handed out in pieces of about
    /// [`CHUNK_BYTES`] cut where tokenization cannot change (see [`safe_cut`]).
    fn pieces(&mut self) {
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK_BYTES * 2);
        let mut first = true;
        loop {
            let (eof, error) = match compressed::fill(self.reader, &mut buf, CHUNK_BYTES) {
                Ok(0) => (true, None),
                Ok(_) => (false, None),
                Err(e) => (true, Some(e)),
            };
            let end = if eof {
                Some(buf.len())
            } else if buf.len() >= CHUNK_BYTES {
                safe_cut(&buf)
            } else {
                None
            };
            let Some(end) = end else { continue };
            let rest = buf.split_off(end);
            let piece = std::mem::replace(&mut buf, rest);
            let first_line = self.line;
            let text = match String::from_utf8(piece) {
                Ok(text) => text,
                Err(bad) => {
                    let valid = bad.utf8_error().valid_up_to();
                    let bytes = bad.into_bytes();
                    let at = first_line + newlines(&bytes[..valid]);
                    let detail = format!("invalid UTF-8 at byte {} of this piece", valid);
                    if !first {
                        // Earlier pieces are already packed: end the document before the bad byte.
                        let text =
                            String::from_utf8(bytes[..valid].to_vec()).expect("valid prefix");
                        (self.emit)(Chunk {
                            source: self.source,
                            first_line,
                            body: Body::Piece {
                                text,
                                first: false,
                                last: true,
                            },
                        });
                    }
                    let detail = if first {
                        format!("{detail}; the document is skipped")
                    } else {
                        format!("{detail}; the document ends before it")
                    };
                    (self.emit)(Chunk {
                        source: self.source,
                        first_line: at,
                        body: Body::Skip {
                            line: at,
                            reason: Reason::InvalidUtf8,
                            detail,
                            count: 1,
                        },
                    });
                    return;
                }
            };
            self.line += newlines(text.as_bytes());
            let last = eof;
            if error.is_some() && first && text.is_empty() {
                // Nothing was read before the failure: no document.
            } else if !(self.emit)(Chunk {
                source: self.source,
                first_line,
                body: Body::Piece { text, first, last },
            }) {
                return;
            }
            first = false;
            if let Some(e) = error {
                let at = self.line;
                self.fail(at, e);
                return;
            }
            if eof {
                return;
            }
        }
    }
}

/// End of the last complete line.
fn last_line_end(buf: &[u8]) -> Option<usize> {
    buf.iter().rposition(|&b| b == b'\n').map(|i| i + 1)
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r'))
}

/// End of the last blank line (a paragraph boundary).
fn last_blank_line_end(buf: &[u8]) -> Option<usize> {
    let mut end = buf.iter().rposition(|&b| b == b'\n')?;
    loop {
        let start = buf[..end]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        if is_blank(&buf[start..end]) && start > 0 {
            return Some(end + 1);
        }
        if start == 0 {
            return None;
        }
        end = start - 1;
    }
}

/// Where a long document may be cut into separately tokenized pieces: just after a newline that
/// sits between two non-whitespace bytes. Byte-level BPE pre-tokenizers (GPT-2, Llama 3 and
/// their kin) always end a pre-token at such a newline, so the ids are the same as for the
/// whole text. If a piece grows to 8× the chunk size without one, any newline will do, and at
/// 32× any character boundary.
fn safe_cut(buf: &[u8]) -> Option<usize> {
    let n = buf.len();
    let ws = |b: u8| b.is_ascii_whitespace();
    let strict = (1..n.saturating_sub(1))
        .rev()
        .find(|&i| buf[i] == b'\n' && !ws(buf[i - 1]) && !ws(buf[i + 1]));
    if let Some(i) = strict {
        return Some(i + 1);
    }
    if n >= 8 * CHUNK_BYTES {
        if let Some(end) = last_line_end(buf) {
            return Some(end);
        }
    }
    if n >= 32 * CHUNK_BYTES {
        // Back up to the start of a UTF-8 character.
        let mut i = n - 1;
        while i > 0 && (buf[i] & 0xC0) == 0x80 {
            i -= 1;
        }
        return (i > 0).then_some(i);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_line_cut() {
        assert_eq!(last_blank_line_end(b"a\nb\n\nc\nd"), Some(5));
        assert_eq!(last_blank_line_end(b"a\n  \t\nc\n"), Some(6));
        assert_eq!(last_blank_line_end(b"a\nb\nc"), None);
    }

    #[test]
    fn safe_cut_between_words() {
        assert_eq!(safe_cut(b"one\ntwo \nthree\n"), Some(4));
        assert_eq!(safe_cut(b"one \n two"), None);
    }
}
