//! Parquet: one string column (`--text-field`, dotted for nested struct fields), read row group
//! by row group with the Apache `parquet` crate's column reader — no Arrow, no row objects.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parquet::basic::Type as PhysicalType;
use parquet::column::reader::ColumnReader;
use parquet::file::reader::{FileReader, SerializedFileReader};

use super::{ReadOptions, CHUNK_BYTES};
use crate::chunk::{Body, Chunk, Reason};
use crate::discover::InputFile;

/// Rows read per call into the column reader. Small, because a batch is held in memory
/// whole: 1024 rows of long documents are already many chunks' worth.
const BATCH_ROWS: usize = 1024;

pub fn read(
    file: &InputFile,
    source: usize,
    options: &ReadOptions,
    consumed: &Arc<AtomicU64>,
    emit: &mut dyn FnMut(Chunk) -> bool,
) {
    let skip = |line: u64, reason: Reason, detail: String, count: u64| Chunk {
        source,
        first_line: line,
        body: Body::Skip {
            line,
            reason,
            detail,
            count,
        },
    };
    let handle = match File::open(&file.path) {
        Ok(f) => f,
        Err(e) => {
            emit(skip(0, Reason::UnreadableFile, e.to_string(), 1));
            return;
        }
    };
    let reader = match SerializedFileReader::new(handle) {
        Ok(r) => r,
        Err(e) => {
            emit(skip(0, Reason::CorruptParquet, e.to_string(), 1));
            return;
        }
    };
    let meta = reader.metadata();
    let total_rows = meta.file_metadata().num_rows().max(0) as u64;
    let wanted = options.text_path.join(".");
    let schema = meta.file_metadata().schema_descr();
    let Some(column) =
        (0..schema.num_columns()).find(|&i| schema.column(i).path().string() == wanted)
    else {
        let names: Vec<String> = (0..schema.num_columns())
            .map(|i| schema.column(i).path().string())
            .collect();
        emit(skip(
            1,
            Reason::MissingTextField,
            format!("no column {wanted:?} (columns: {})", names.join(", ")),
            total_rows.max(1),
        ));
        return;
    };
    let descr = schema.column(column);
    if descr.physical_type() != PhysicalType::BYTE_ARRAY || descr.max_rep_level() > 0 {
        emit(skip(
            1,
            Reason::NonStringTextField,
            format!("column {wanted:?} is not a plain string column"),
            total_rows.max(1),
        ));
        return;
    }
    let max_def = descr.max_def_level();
    let mut row: u64 = 1;
    let mut rows: Vec<(u64, Option<Vec<u8>>)> = Vec::new();
    let mut bytes_in_chunk = 0usize;
    let mut defs: Vec<i16> = Vec::new();
    let mut values = Vec::new();
    for group in 0..meta.num_row_groups() {
        let result = (|| -> parquet::errors::Result<bool> {
            let rg = reader.get_row_group(group)?;
            let ColumnReader::ByteArrayColumnReader(mut col) = rg.get_column_reader(column)? else {
                return Err(parquet::errors::ParquetError::General(
                    "not a byte-array column".into(),
                ));
            };
            loop {
                defs.clear();
                values.clear();
                let (records, _, _) =
                    col.read_records(BATCH_ROWS, Some(&mut defs), None, &mut values)?;
                if records == 0 {
                    return Ok(true);
                }
                let mut next_value = values.drain(..);
                for r in 0..records {
                    let present = max_def == 0 || defs.get(r).copied() == Some(max_def);
                    let value = if present {
                        next_value.next().map(|v| v.data().to_vec())
                    } else {
                        None
                    };
                    bytes_in_chunk += value.as_ref().map_or(0, |v| v.len());
                    rows.push((row, value));
                    row += 1;
                    // A chunk goes out as soon as it is full, not at the end of the batch,
                    // so chunks stay about CHUNK_BYTES however long the rows are.
                    if bytes_in_chunk >= CHUNK_BYTES {
                        let first_line = rows[0].0;
                        bytes_in_chunk = 0;
                        if !emit(Chunk {
                            source,
                            first_line,
                            body: Body::Rows(std::mem::take(&mut rows)),
                        }) {
                            return Ok(false);
                        }
                    }
                }
            }
        })();
        consumed.fetch_add(
            meta.row_group(group).compressed_size().max(0) as u64,
            Ordering::Relaxed,
        );
        match result {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                if !rows.is_empty() {
                    let first_line = rows[0].0;
                    emit(Chunk {
                        source,
                        first_line,
                        body: Body::Rows(std::mem::take(&mut rows)),
                    });
                }
                let lost = total_rows.saturating_sub(row - 1).max(1);
                emit(skip(
                    row,
                    Reason::CorruptParquet,
                    format!("{e}; the rest of the file is skipped"),
                    lost,
                ));
                return;
            }
        }
    }
    if !rows.is_empty() {
        let first_line = rows[0].0;
        emit(Chunk {
            source,
            first_line,
            body: Body::Rows(rows),
        });
    }
}
