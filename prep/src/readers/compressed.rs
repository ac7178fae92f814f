//! Opening a file as a byte stream, decompressing `.gz` and `.zst` on the fly, and counting the
//! bytes read from disk for the progress bar.

use std::fs::File;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::discover::{Compression, InputFile};

/// Counts bytes as they are read from the file on disk.
struct Counting<R> {
    inner: R,
    consumed: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

pub fn open(file: &InputFile, consumed: &Arc<AtomicU64>) -> io::Result<Box<dyn Read + Send>> {
    let raw = Counting {
        inner: File::open(&file.path)?,
        consumed: Arc::clone(consumed),
    };
    let raw = io::BufReader::with_capacity(1 << 16, raw);
    Ok(match file.compression {
        Compression::None => Box::new(raw),
        // Multi-member gzip (as `cat a.gz b.gz` or pigz produce) is one stream.
        Compression::Gz => Box::new(flate2::bufread::MultiGzDecoder::new(raw)),
        Compression::Zst => Box::new(zstd::stream::read::Decoder::with_buffer(raw)?),
    })
}

/// Fills `buf` from `reader` until it holds `want` more bytes or the stream ends. Returns the
/// number of bytes added; 0 means end of stream.
pub fn fill(reader: &mut dyn Read, buf: &mut Vec<u8>, want: usize) -> io::Result<usize> {
    let start = buf.len();
    buf.resize(start + want, 0);
    let mut got = 0;
    while got < want {
        match reader.read(&mut buf[start + got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                buf.truncate(start + got);
                return Err(e);
            }
        }
    }
    buf.truncate(start + got);
    Ok(got)
}
