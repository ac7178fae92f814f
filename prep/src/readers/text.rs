//! Line-oriented files: `.jsonl` and `.txt` (by line, paragraph or whole file), compressed or not.

use std::io::Read;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use super::{compressed, ReadOptions, TxtUnit, CHUNK_BYTES};
use crate::chunk::{Body, Chunk, Reason};
use crate::discover::{Compression, Format, InputFile};

/// Longest record (a line, a paragraph or a JSON line) that is read whole. A longer one is
/// skipped and counted (`record_too_large`) without being held in memory.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

/// The UTF-8 byte order mark some editors put at the start of a file; it is not text.
const BOM: &[u8] = b"\xEF\xBB\xBF";

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
        started: false,
        emit,
    };
    match (file.format, options.txt_unit) {
        (Format::Jsonl, _) => split.records(Unit::Lines, Body::JsonLines),
        (_, TxtUnit::Line) => split.records(Unit::Lines, Body::TextLines),
        (_, TxtUnit::Paragraph) => split.records(Unit::Paragraphs, Body::Paragraphs),
        (_, TxtUnit::File) => split.pieces(),
    }
}

/// What ends a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// Every newline.
    Lines,
    /// A blank line.
    Paragraphs,
}

struct Splitter<'a> {
    reader: &'a mut dyn Read,
    source: usize,
    /// Line number of the first byte not yet emitted.
    line: u64,
    stream_error: Reason,
    /// Whether the first bytes of the file were read (and a BOM stripped).
    started: bool,
    emit: &'a mut dyn FnMut(Chunk) -> bool,
}

fn newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

impl Splitter<'_> {
    /// Reads about [`CHUNK_BYTES`] more into `buf`; a BOM at the very start of the file is
    /// dropped. Returns the bytes read from the stream (0 at its end).
    fn fill(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        let n = compressed::fill(self.reader, buf, CHUNK_BYTES)?;
        if !self.started {
            self.started = true;
            if buf.starts_with(BOM) {
                buf.drain(..BOM.len());
            }
        }
        Ok(n)
    }

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

    /// Emits chunks of whole records. Each byte is searched for a record end once: a buffer
    /// without one (a file with no blank line in paragraph mode) grows without rescanning, and
    /// a record longer than [`MAX_RECORD_BYTES`] is skipped and read past.
    fn records(&mut self, unit: Unit, make: fn(Vec<u8>) -> Body) {
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK_BYTES * 2);
        // Bytes at the start of `buf` already searched without finding a record end.
        let mut searched = 0usize;
        // Set while the rest of a record that is too large is being read past.
        let mut discarding = false;
        loop {
            match self.fill(&mut buf) {
                // At the end of a record that is too large, nothing is left to emit.
                Ok(0) if discarding => return,
                Ok(0) => {
                    if !buf.is_empty() {
                        self.send(buf, make);
                    }
                    return;
                }
                Ok(_) if discarding => {
                    match first_record_end(&buf, searched, unit) {
                        Some(end) => {
                            // The long record ends here; what follows is read as usual.
                            self.line += newlines(&buf[..end]);
                            buf.drain(..end);
                            discarding = false;
                            searched = 0;
                        }
                        None => searched = self.drop_record_bytes(&mut buf, unit),
                    }
                }
                Ok(_) => {
                    if buf.len() > MAX_RECORD_BYTES {
                        // Every read that brought a record end emitted the records before it,
                        // so only the record at the start of `buf` can be this long.
                        let end = first_record_end(&buf, searched, unit);
                        if end.is_none_or(|end| end > MAX_RECORD_BYTES) {
                            if !self.too_large() {
                                return;
                            }
                            match end {
                                Some(end) => {
                                    self.line += newlines(&buf[..end]);
                                    buf.drain(..end);
                                    searched = 0;
                                }
                                None => {
                                    discarding = true;
                                    searched = self.drop_record_bytes(&mut buf, unit);
                                    continue;
                                }
                            }
                        }
                    }
                    if buf.len() >= CHUNK_BYTES {
                        if let Some(end) = last_record_end(&buf, searched, unit) {
                            let rest = buf.split_off(end);
                            if !self.send(std::mem::replace(&mut buf, rest), make) {
                                return;
                            }
                        }
                        searched = buf.len();
                    }
                }
                Err(e) => {
                    if discarding {
                        let at = self.line + newlines(&buf);
                        self.fail(at, e);
                        return;
                    }
                    // Keep every whole record read before the failure, lose the partial one.
                    if let Some(end) = last_record_end(&buf, 0, unit) {
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

    /// Reports the record starting at the current line as too large to read.
    fn too_large(&mut self) -> bool {
        let line = self.line;
        (self.emit)(Chunk {
            source: self.source,
            first_line: line,
            body: Body::Skip {
                line,
                reason: Reason::RecordTooLarge,
                detail: format!(
                    "record longer than {} MiB, the most one line, paragraph or JSON line may hold",
                    MAX_RECORD_BYTES >> 20
                ),
                count: 1,
            },
        })
    }

    /// Forgets the bytes of a record being skipped (counting their lines), keeping only what
    /// is needed to recognise its end: the newline before a trailing blank line so far.
    /// Returns how much of what is kept was searched.
    fn drop_record_bytes(&mut self, buf: &mut Vec<u8>, unit: Unit) -> usize {
        let keep = match buf.iter().rposition(|&b| b == b'\n') {
            Some(i)
                if unit == Unit::Paragraphs && buf[i + 1..].iter().all(|&b| is_blank_byte(b)) =>
            {
                Some(i)
            }
            _ => None,
        };
        let dropped = keep.unwrap_or(buf.len());
        self.line += newlines(&buf[..dropped]);
        buf.clear();
        if keep.is_some() {
            buf.push(b'\n');
        }
        buf.len()
    }

    /// `--txt-unit file`: the whole file is one document, handed out in pieces of about
    /// [`CHUNK_BYTES`] cut where tokenization cannot change (see [`safe_cut`]).
    fn pieces(&mut self) {
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK_BYTES * 2);
        let mut first = true;
        // Bytes at the start of `buf` already searched for a cut.
        let mut searched = 0usize;
        loop {
            let (eof, error) = match self.fill(&mut buf) {
                Ok(0) => (true, None),
                Ok(_) => (false, None),
                Err(e) => (true, Some(e)),
            };
            let end = if eof {
                Some(buf.len())
            } else if buf.len() >= CHUNK_BYTES {
                let cut = safe_cut(&buf, searched);
                searched = buf.len() - cut.unwrap_or(0);
                cut
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

fn is_blank_byte(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r')
}

/// Whether the newline at `e` ends a blank line that follows another line (a paragraph
/// boundary). Looks back only over the blank line itself.
fn ends_blank_line(buf: &[u8], e: usize) -> bool {
    let start = buf[..e]
        .iter()
        .rposition(|&b| !is_blank_byte(b))
        .map_or(0, |i| i + 1);
    start > 0 && buf[start - 1] == b'\n'
}

/// Ends of records (the position just past their newline) whose newline lies at or after
/// `from`: every line end, or for paragraphs the end of every blank line. Only `buf[from..]`
/// is scanned, so a buffer that grows without a record end is not searched again and again.
fn record_ends(buf: &[u8], from: usize, unit: Unit) -> impl DoubleEndedIterator<Item = usize> + '_ {
    buf[from..]
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'\n')
        .map(move |(i, _)| from + i)
        .filter(move |&e| unit == Unit::Lines || ends_blank_line(buf, e))
        .map(|e| e + 1)
}

fn first_record_end(buf: &[u8], from: usize, unit: Unit) -> Option<usize> {
    record_ends(buf, from, unit).next()
}

fn last_record_end(buf: &[u8], from: usize, unit: Unit) -> Option<usize> {
    record_ends(buf, from, unit).next_back()
}

/// Where a long document may be cut into separately tokenized pieces: just after a newline that
/// sits between two non-whitespace bytes (or after the `\r\n` of such a line end). Byte-level
/// BPE pre-tokenizers (GPT-2, Llama 3 and their kin) always end a pre-token at such a newline,
/// so the ids are the same as for the whole text. If a piece grows to 8× the chunk size
/// without one, any newline will do, and at 32× any character boundary (or, in a buffer that
/// holds no character start at all, its end: the piece is then refused as invalid UTF-8).
///
/// `from`: the buffer's first `from` bytes were searched by an earlier call (that found no
/// cut in them), so only later cuts are looked for. A cut is never at 0: a piece holds at least
/// one byte.
fn safe_cut(buf: &[u8], from: usize) -> Option<usize> {
    let n = buf.len();
    let ws = |b: u8| b.is_ascii_whitespace();
    // A newline at `i` is judged with the byte after it, so the last byte of an earlier search
    // is looked at again.
    let lo = from.saturating_sub(1).max(1);
    let strict = (lo..n.saturating_sub(1)).rev().find(|&i| {
        buf[i] == b'\n'
            && !ws(buf[i + 1])
            && (!ws(buf[i - 1]) || (buf[i - 1] == b'\r' && i >= 2 && !ws(buf[i - 2])))
    });
    if let Some(i) = strict {
        return Some(i + 1);
    }
    if n >= 8 * CHUNK_BYTES {
        // An earlier search below 8× did not look for plain newlines.
        let lo = if from >= 8 * CHUNK_BYTES { from } else { 0 };
        if let Some(i) = buf[lo.min(n)..].iter().rposition(|&b| b == b'\n') {
            return Some(lo + i + 1);
        }
    }
    if n >= 32 * CHUNK_BYTES {
        // Back up to the start of a UTF-8 character.
        let mut i = n - 1;
        while i > 0 && (buf[i] & 0xC0) == 0x80 {
            i -= 1;
        }
        return Some(if i >= 1 { i } else { n });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a [`Splitter`] over `bytes` and returns what it emits.
    fn split(bytes: &[u8], run: impl FnOnce(&mut Splitter)) -> Vec<Chunk> {
        let mut chunks = Vec::new();
        let mut reader = std::io::Cursor::new(bytes);
        let mut emit = |c: Chunk| {
            chunks.push(c);
            true
        };
        let mut splitter = Splitter {
            reader: &mut reader,
            source: 0,
            line: 1,
            stream_error: Reason::UnreadableFile,
            started: false,
            emit: &mut emit,
        };
        run(&mut splitter);
        chunks
    }

    /// `(first line, bytes)` of every data chunk, and `(line, reason)` of every skip, in order.
    type Parts<'a> = (Vec<(u64, &'a [u8])>, Vec<(u64, Reason)>);

    fn parts(chunks: &[Chunk]) -> Parts<'_> {
        let mut data = Vec::new();
        let mut skips = Vec::new();
        for c in chunks {
            match &c.body {
                Body::TextLines(b) | Body::Paragraphs(b) | Body::JsonLines(b) => {
                    data.push((c.first_line, b.as_slice()))
                }
                Body::Piece { text, .. } => data.push((c.first_line, text.as_bytes())),
                Body::Skip { line, reason, .. } => skips.push((*line, *reason)),
                Body::Rows(_) => unreachable!(),
            }
        }
        (data, skips)
    }

    #[test]
    fn blank_line_cut() {
        assert_eq!(
            last_record_end(b"a\nb\n\nc\nd", 0, Unit::Paragraphs),
            Some(5)
        );
        assert_eq!(
            last_record_end(b"a\n  \t\nc\n", 0, Unit::Paragraphs),
            Some(6)
        );
        assert_eq!(last_record_end(b"a\nb\nc", 0, Unit::Paragraphs), None);
        assert_eq!(last_record_end(b"\n\nb", 0, Unit::Paragraphs), Some(2));
    }

    #[test]
    fn record_ends_are_searched_only_from_the_new_bytes() {
        // The blank line ends at 3, before `from`: it was searched already.
        assert_eq!(last_record_end(b"a\n\nbb\ncc\n", 4, Unit::Paragraphs), None);
        assert_eq!(last_record_end(b"a\n\nbb\ncc\n", 4, Unit::Lines), Some(9));
        assert_eq!(last_record_end(b"a\nbb", 2, Unit::Lines), None);
        // A blank line that starts before `from` and ends after it is found.
        assert_eq!(last_record_end(b"a\n   \nb", 4, Unit::Paragraphs), Some(6));
    }

    #[test]
    fn safe_cut_between_words() {
        assert_eq!(safe_cut(b"one\ntwo \nthree\n", 0), Some(4));
        assert_eq!(safe_cut(b"one \n two", 0), None);
    }

    #[test]
    fn safe_cut_after_crlf() {
        assert_eq!(safe_cut(b"one\r\ntwo", 0), Some(5));
        assert_eq!(safe_cut(b"one \r\ntwo", 0), None);
        assert_eq!(safe_cut(b"one\r\n two", 0), None);
    }

    #[test]
    fn safe_cut_searches_from() {
        assert_eq!(safe_cut(b"one\ntwo three", 8), None);
        // The newline at 3 could not be judged before byte 4 arrived.
        assert_eq!(safe_cut(b"one\ntwo", 4), Some(4));
        // A newline at the very start is no cut: the piece would be empty.
        assert_eq!(safe_cut(b"\ntwo", 0), None);
    }

    #[test]
    fn safe_cut_cuts_a_buffer_without_character_starts() {
        let buf = vec![0x80u8; 32 * CHUNK_BYTES];
        assert_eq!(safe_cut(&buf, 0), Some(buf.len()));
        let mut text = vec![b'a'; 32 * CHUNK_BYTES];
        text.extend_from_slice("é".as_bytes());
        assert_eq!(safe_cut(&text, 0), Some(32 * CHUNK_BYTES));
    }

    #[test]
    fn a_bom_at_the_start_is_not_text() {
        let chunks = split(b"\xEF\xBB\xBFhello\n\xEF\xBB\xBFkept\n", |s| {
            s.records(Unit::Lines, Body::TextLines)
        });
        let (data, _) = parts(&chunks);
        assert_eq!(data, vec![(1, &b"hello\n\xEF\xBB\xBFkept\n"[..])]);
        let chunks = split(b"\xEF\xBB\xBFwhole", |s| s.pieces());
        assert_eq!(parts(&chunks).0, vec![(1, &b"whole"[..])]);
    }

    /// Over the cap by a little (the end arrives in the read that passes the cap) and by
    /// several reads (the rest of the record is read past without being kept).
    const OVER: [usize; 2] = [10, 3 * CHUNK_BYTES + 5];

    #[test]
    fn a_line_too_large_is_skipped_and_the_next_kept() {
        for over in OVER {
            let mut bytes = b"first\n".to_vec();
            bytes.resize(bytes.len() + MAX_RECORD_BYTES + over, b'x');
            bytes.extend_from_slice(b"\nnext\nlast\n");
            let chunks = split(&bytes, |s| s.records(Unit::Lines, Body::TextLines));
            let (data, skips) = parts(&chunks);
            assert_eq!(skips, vec![(2, Reason::RecordTooLarge)], "{over}");
            assert_eq!(data, vec![(1, &b"first\n"[..]), (3, &b"next\nlast\n"[..])]);
        }
    }

    #[test]
    fn a_paragraph_too_large_is_skipped_and_the_next_kept() {
        for over in OVER {
            let line = [b'y'; 99];
            let lines = (MAX_RECORD_BYTES + over) / 100 + 1;
            let mut bytes = b"p1\n\n".to_vec();
            for _ in 0..lines {
                bytes.extend_from_slice(&line);
                bytes.push(b'\n');
            }
            bytes.extend_from_slice(b" \t\np3\n");
            let chunks = split(&bytes, |s| s.records(Unit::Paragraphs, Body::Paragraphs));
            let (data, skips) = parts(&chunks);
            assert_eq!(skips, vec![(3, Reason::RecordTooLarge)], "{over}");
            let after = 3 + lines as u64 + 1;
            assert_eq!(data, vec![(1, &b"p1\n\n"[..]), (after, &b"p3\n"[..])]);
        }
    }

    #[test]
    fn a_skipped_record_keeps_only_what_finds_its_end() {
        let mut bytes: &[u8] = b"";
        let mut emit = |_: Chunk| true;
        let mut s = Splitter {
            reader: &mut bytes,
            source: 0,
            line: 1,
            stream_error: Reason::UnreadableFile,
            started: true,
            emit: &mut emit,
        };
        // A blank line may be under way: its newline is kept, its line not yet counted.
        let mut buf = b"a\nb\n \t".to_vec();
        assert_eq!(s.drop_record_bytes(&mut buf, Unit::Paragraphs), 1);
        assert_eq!((buf.as_slice(), s.line), (&b"\n"[..], 2));
        let mut buf = b"a\nb".to_vec();
        assert_eq!(s.drop_record_bytes(&mut buf, Unit::Paragraphs), 0);
        assert_eq!((buf.len(), s.line), (0, 3));
        let mut buf = b"abc \t".to_vec();
        assert_eq!(s.drop_record_bytes(&mut buf, Unit::Lines), 0);
        assert_eq!(s.line, 3);
    }

    #[test]
    fn paragraphs_without_blank_lines_for_megabytes_come_out_whole() {
        let mut bytes = Vec::new();
        while bytes.len() < 5 * CHUNK_BYTES {
            bytes.extend_from_slice(b"a line of one long paragraph\n");
        }
        bytes.extend_from_slice(b"\nnext paragraph\n");
        let chunks = split(&bytes, |s| s.records(Unit::Paragraphs, Body::Paragraphs));
        let (data, skips) = parts(&chunks);
        assert!(skips.is_empty());
        let joined: Vec<u8> = data.iter().flat_map(|(_, d)| d.iter().copied()).collect();
        assert_eq!(joined, bytes);
        // Every chunk but the last ends at the paragraph boundary.
        for (_, d) in &data[..data.len() - 1] {
            assert!(d.ends_with(b"\n\n"), "{}", d.len());
        }
    }
}
