//! From a [`Chunk`] of raw records to documents and counted skips. This is the part of reading
//! that runs on the worker threads.

pub mod jsonl;

use std::borrow::Cow;

use crate::chunk::{Body, Chunk, Reason, Skip};
use jsonl::Field;

/// A document's text, or a piece of one.
pub struct Doc<'a> {
    pub text: Cow<'a, str>,
    pub line: u64,
    /// This opens a document (BOS goes before it).
    pub first: bool,
    /// This closes a document (EOS goes after it).
    pub last: bool,
}

fn whole(text: Cow<'_, str>, line: u64) -> Doc<'_> {
    Doc {
        text,
        line,
        first: true,
        last: true,
    }
}

fn is_empty(text: &str) -> bool {
    text.trim().is_empty()
}

/// Calls `doc` for every document of the chunk and `skip` for every record that is not one.
pub fn for_each(
    chunk: &Chunk,
    text_path: &[String],
    mut doc: impl FnMut(Doc<'_>),
    mut skip: impl FnMut(Skip),
) {
    let mut skip_at = |line: u64, reason: Reason, detail: String| {
        skip(Skip {
            line,
            reason,
            detail,
            count: 1,
        })
    };
    match &chunk.body {
        Body::JsonLines(bytes) => {
            for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
                let line = chunk.first_line + i as u64;
                let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
                if raw.iter().all(|b| b.is_ascii_whitespace()) {
                    continue; // blank lines separate nothing and hold nothing
                }
                match jsonl::extract(raw, text_path) {
                    Ok(Field::Text(text)) if is_empty(&text) => {
                        skip_at(line, Reason::EmptyText, "empty text".into())
                    }
                    Ok(Field::Text(text)) => doc(whole(text, line)),
                    Ok(Field::NotString(kind)) => skip_at(
                        line,
                        Reason::NonStringTextField,
                        format!("field {:?} is a {kind}, not a string", text_path.join(".")),
                    ),
                    Ok(Field::Missing) => skip_at(
                        line,
                        Reason::MissingTextField,
                        format!(
                            "no field {:?} (choose another with --text-field)",
                            text_path.join(".")
                        ),
                    ),
                    Err(e) => skip_at(line, Reason::MalformedJson, format!("malformed JSON: {e}")),
                }
            }
        }
        Body::TextLines(bytes) => {
            for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
                let line = chunk.first_line + i as u64;
                let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
                match std::str::from_utf8(raw) {
                    Ok(text) if is_empty(text) => {}
                    Ok(text) => doc(whole(Cow::Borrowed(text), line)),
                    Err(e) => skip_at(
                        line,
                        Reason::InvalidUtf8,
                        format!("invalid UTF-8 at byte {}", e.valid_up_to()),
                    ),
                }
            }
        }
        Body::Paragraphs(bytes) => {
            // A paragraph runs from its first non-blank line to the line before the next blank one.
            let mut start: Option<(usize, u64)> = None;
            let mut pos = 0usize;
            let mut line = chunk.first_line;
            let mut flush = |from: usize, to: usize, at: u64| {
                let raw = &bytes[from..to];
                let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
                match std::str::from_utf8(raw) {
                    Ok(text) => doc(whole(Cow::Borrowed(text), at)),
                    Err(e) => skip_at(
                        at,
                        Reason::InvalidUtf8,
                        format!("invalid UTF-8 at byte {} of the paragraph", e.valid_up_to()),
                    ),
                }
            };
            while pos < bytes.len() {
                let end = bytes[pos..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(bytes.len(), |i| pos + i);
                let blank = bytes[pos..end]
                    .iter()
                    .all(|b| matches!(b, b' ' | b'\t' | b'\r'));
                match (blank, start) {
                    (true, Some((from, at))) => {
                        flush(from, pos.saturating_sub(1), at);
                        start = None;
                    }
                    (false, None) => start = Some((pos, line)),
                    _ => {}
                }
                pos = end + 1;
                line += 1;
            }
            if let Some((from, at)) = start {
                let to = if bytes.last() == Some(&b'\n') {
                    bytes.len() - 1
                } else {
                    bytes.len()
                };
                flush(from, to, at);
            }
        }
        Body::Piece { text, first, last } => {
            if *first && *last && is_empty(text) {
                skip_at(chunk.first_line, Reason::EmptyText, "empty file".into());
            } else {
                doc(Doc {
                    text: Cow::Borrowed(text),
                    line: chunk.first_line,
                    first: *first,
                    last: *last,
                });
            }
        }
        Body::Rows(rows) => {
            for (row, value) in rows {
                match value {
                    None => skip_at(
                        *row,
                        Reason::MissingTextField,
                        format!("{:?} is null", text_path.join(".")),
                    ),
                    Some(bytes) => match std::str::from_utf8(bytes) {
                        Ok(text) if is_empty(text) => {
                            skip_at(*row, Reason::EmptyText, "empty text".into())
                        }
                        Ok(text) => doc(whole(Cow::Borrowed(text), *row)),
                        Err(e) => skip_at(
                            *row,
                            Reason::InvalidUtf8,
                            format!("invalid UTF-8 at byte {}", e.valid_up_to()),
                        ),
                    },
                }
            }
        }
        Body::Skip {
            line,
            reason,
            detail,
            count,
        } => skip(Skip {
            line: *line,
            reason: *reason,
            detail: detail.clone(),
            count: *count,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Found = (Vec<(String, u64)>, Vec<(u64, Reason)>);

    fn docs_of(body: Body) -> Found {
        let chunk = Chunk {
            source: 0,
            first_line: 10,
            body,
        };
        let mut docs = Vec::new();
        let mut skips = Vec::new();
        for_each(
            &chunk,
            &["text".to_string()],
            |d| docs.push((d.text.into_owned(), d.line)),
            |s| skips.push((s.line, s.reason)),
        );
        (docs, skips)
    }

    #[test]
    fn paragraphs_are_split_on_blank_lines_with_line_numbers() {
        let (docs, skips) = docs_of(Body::Paragraphs(b"a\nb\n\n  \nc\r\n\nd".to_vec()));
        assert_eq!(
            docs,
            vec![("a\nb".into(), 10), ("c".into(), 14), ("d".into(), 16)]
        );
        assert!(skips.is_empty());
    }

    #[test]
    fn json_lines_report_each_problem_on_its_line() {
        let body =
            b"{\"text\": \"ok\"}\n{bad\n\n{\"text\": 5}\n{\"other\": 1}\n{\"text\": \"  \"}\n"
                .to_vec();
        let (docs, skips) = docs_of(Body::JsonLines(body));
        assert_eq!(docs, vec![("ok".into(), 10)]);
        assert_eq!(
            skips,
            vec![
                (11, Reason::MalformedJson),
                (13, Reason::NonStringTextField),
                (14, Reason::MissingTextField),
                (15, Reason::EmptyText)
            ]
        );
    }

    #[test]
    fn text_lines_skip_invalid_utf8_and_ignore_blank_lines() {
        let (docs, skips) = docs_of(Body::TextLines(b"one\n\n\xff\xfe\ntwo".to_vec()));
        assert_eq!(docs, vec![("one".into(), 10), ("two".into(), 13)]);
        assert_eq!(skips, vec![(12, Reason::InvalidUtf8)]);
    }
}
