//! Parser for the IDX format of MNIST, Fashion-MNIST, KMNIST and friends.
//!
//! An IDX file is a big-endian header (magic number, then one `u32` per
//! dimension) followed by the raw `u8` body. The files are usually shipped
//! gzip-compressed; gzip is recognised by its magic bytes rather than by the
//! file name, so a renamed or already-decompressed file loads just the same.
//!
//! Input is never trusted: the header is validated (magic number, dimensions,
//! a size limit) before anything is allocated, the body must be exactly as
//! long as the header says, and every failure is a [`DataError`] naming the
//! file, never a panic.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use crate::error::{DataError, Result};

/// Largest body accepted, 4 GiB. Far above any IDX data set (MNIST's
/// training images are 47 MB), low enough that a corrupt header cannot ask
/// for an absurd allocation.
pub const MAX_BODY_BYTES: u64 = 4 << 30;

/// The two IDX layouts the loader reads: both hold unsigned bytes, and differ
/// in their number of dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdxKind {
    /// One dimension: the sample count.
    Labels,
    /// Three dimensions: sample count, rows, columns.
    Images,
}

impl IdxKind {
    /// The magic number: two zero bytes, the element type (0x08 = u8), and
    /// the number of dimensions.
    pub const fn magic(self) -> u32 {
        match self {
            IdxKind::Labels => 0x0000_0801,
            IdxKind::Images => 0x0000_0803,
        }
    }

    /// Number of dimensions the header lists.
    pub const fn ndims(self) -> usize {
        match self {
            IdxKind::Labels => 1,
            IdxKind::Images => 3,
        }
    }

    /// Header length in bytes: the magic number plus one `u32` per dimension.
    pub const fn header_len(self) -> usize {
        4 + 4 * self.ndims()
    }
}

impl fmt::Display for IdxKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdxKind::Labels => "IDX labels",
            IdxKind::Images => "IDX images",
        })
    }
}

/// The contents of an IDX images file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images, the header's first dimension.
    pub count: usize,
    /// Height of each image in pixels.
    pub rows: usize,
    /// Width of each image in pixels.
    pub cols: usize,
    /// `count * rows * cols` bytes, image after image, each row-major.
    pub pixels: Vec<u8>,
}

/// Parses an IDX images file (gzip or raw) from any reader.
///
/// `source` names the stream in error messages; pass the file path, or
/// something like `"<stdin>"` when there is none.
pub fn read_images<R: Read>(reader: R, source: &Path) -> Result<IdxImages> {
    let ([count, rows, cols], pixels) = parse::<3, _>(reader, source, IdxKind::Images)?;
    if rows == 0 || cols == 0 {
        return Err(DataError::ZeroSizedImages {
            path: source.to_path_buf(),
            rows,
            cols,
        });
    }
    Ok(IdxImages {
        count,
        rows,
        cols,
        pixels,
    })
}

/// Parses an IDX labels file (gzip or raw) from any reader.
///
/// `source` names the stream in error messages.
pub fn read_labels<R: Read>(reader: R, source: &Path) -> Result<Vec<u8>> {
    let (_count, labels) = parse::<1, _>(reader, source, IdxKind::Labels)?;
    Ok(labels)
}

/// Opens and parses an IDX images file; every error names `path`.
pub fn read_images_file(path: &Path) -> Result<IdxImages> {
    read_images(open(path)?, path)
}

/// Opens and parses an IDX labels file; every error names `path`.
pub fn read_labels_file(path: &Path) -> Result<Vec<u8>> {
    read_labels(open(path)?, path)
}

fn open(path: &Path) -> Result<BufReader<File>> {
    let file = File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(BufReader::new(file))
}

/// Reads header and body, returning the `N` dimensions and the body.
/// `N` must be `kind.ndims()`; making it a constant lets callers destructure
/// the dimensions without a fallible conversion.
fn parse<const N: usize, R: Read>(
    reader: R,
    source: &Path,
    kind: IdxKind,
) -> Result<([usize; N], Vec<u8>)> {
    debug_assert_eq!(N, kind.ndims());
    let mut input = Input::open(reader, source)?;
    let path = || source.to_path_buf();

    let header_len = kind.header_len();
    let mut header = vec![0u8; header_len];
    let found = input.fill(&mut header)?;
    if found == 0 && !input.gzip {
        // `Input::open` already saw zero bytes; say "empty" rather than
        // "truncated header" because that is what the user will see on disk.
        return Err(DataError::Empty { path: path(), kind });
    }
    // Check the magic number as soon as it is there: a wrong file type is a
    // more useful diagnosis than "too short".
    if found >= 4 {
        let magic = be_u32(&header[0..4]);
        if magic != kind.magic() {
            return Err(DataError::WrongMagic {
                path: path(),
                kind,
                found: magic,
            });
        }
    }
    if found < header_len {
        return Err(DataError::TruncatedHeader {
            path: path(),
            kind,
            expected: header_len,
            found,
        });
    }

    let raw_dims: Vec<u32> = header[4..].chunks_exact(4).map(be_u32).collect();
    let body_len = checked_body_len(&raw_dims).ok_or_else(|| DataError::TooLarge {
        path: path(),
        dims: raw_dims.clone(),
        bytes: raw_dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(u64::from(d))),
    })?;
    let mut dims = [0usize; N];
    for (dim, &raw) in dims.iter_mut().zip(&raw_dims) {
        // Cannot fail once the product fits in usize, unless a dimension is
        // zero and another is huge on a 16-bit target; report it all the same.
        *dim = usize::try_from(raw).map_err(|_| DataError::TooLarge {
            path: path(),
            dims: raw_dims.clone(),
            bytes: Some(body_len),
        })?;
    }

    let body = input.read_body(body_len, kind)?;
    input.expect_end(body_len, kind)?;
    tracing::debug!(
        path = %source.display(),
        gzip = input.gzip,
        ?dims,
        "read IDX file"
    );
    Ok((dims, body))
}

/// The body length the dimensions imply, if it is within [`MAX_BODY_BYTES`]
/// and addressable on this platform.
fn checked_body_len(dims: &[u32]) -> Option<u64> {
    let bytes = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(u64::from(d)))?;
    (bytes <= MAX_BODY_BYTES && usize::try_from(bytes).is_ok()).then_some(bytes)
}

fn be_u32(bytes: &[u8]) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[..4]);
    u32::from_be_bytes(word)
}

/// A byte stream that is either raw or gzip-decompressed, which tracks how
/// far it got so that errors can say where the data ran out.
struct Input<'a> {
    reader: Box<dyn Read + 'a>,
    source: &'a Path,
    gzip: bool,
    /// Decompressed bytes delivered so far.
    offset: u64,
}

impl<'a> Input<'a> {
    /// Sniffs the first two bytes for the gzip magic `1f 8b` and puts them
    /// back in front of the stream.
    fn open<R: Read + 'a>(mut reader: R, source: &'a Path) -> Result<Self> {
        let mut magic = [0u8; 2];
        let sniffed = read_up_to(&mut reader, &mut magic).map_err(|e| DataError::Io {
            path: source.to_path_buf(),
            source: e,
        })?;
        let gzip = magic[..sniffed] == [0x1f, 0x8b];
        let rejoined = io::Cursor::new(magic).take(sniffed as u64).chain(reader);
        let reader: Box<dyn Read + 'a> = if gzip {
            // Every member, not just the first: concatenated members are
            // one valid gzip stream (`gunzip` reads them all), and anything
            // else after the last member is an error, not silently ignored.
            Box::new(MultiGzDecoder::new(rejoined))
        } else {
            Box::new(rejoined)
        };
        Ok(Input {
            reader,
            source,
            gzip,
            offset: 0,
        })
    }

    /// Fills `buf` as far as the stream allows; returns the bytes read.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize> {
        let n = read_up_to(&mut self.reader, buf).map_err(|e| self.error(e, 0))?;
        self.offset += n as u64;
        Ok(n)
    }

    /// Reads exactly `len` bytes. The buffer grows with the data actually
    /// delivered, so a header that lies about the length of a short file
    /// costs no more memory than the file itself, plus at most
    /// `INITIAL_CAPACITY`. (It was 64 MiB, which the fuzzer flagged: a
    /// 12-byte input made a 64 MiB allocation. Growing a buffer from 1 MiB
    /// to MNIST's 47 MB takes six reallocations, a negligible cost next to
    /// decompressing it.)
    fn read_body(&mut self, len: u64, kind: IdxKind) -> Result<Vec<u8>> {
        const INITIAL_CAPACITY: u64 = 1 << 20;
        let capacity = usize::try_from(len.min(INITIAL_CAPACITY)).unwrap_or(0);
        let mut body = Vec::with_capacity(capacity);
        let result = (&mut self.reader).take(len).read_to_end(&mut body);
        let got = body.len() as u64;
        if let Err(e) = result {
            return Err(self.error(e, got));
        }
        self.offset += got;
        if got < len {
            return Err(DataError::TruncatedBody {
                path: self.source.to_path_buf(),
                kind,
                expected: len,
                found: got,
            });
        }
        Ok(body)
    }

    /// Insists that the stream ends here. For gzip this read also makes the
    /// decoder check the CRC and length in the gzip trailer, and reject any
    /// bytes after the last member that do not start another valid member.
    fn expect_end(&mut self, body_len: u64, kind: IdxKind) -> Result<()> {
        let mut probe = [0u8; 1];
        if self.fill(&mut probe)? > 0 {
            return Err(DataError::TrailingBytes {
                path: self.source.to_path_buf(),
                kind,
                expected: body_len,
            });
        }
        Ok(())
    }

    /// Read errors of a gzip stream mean the compressed data is cut off or
    /// corrupt; of a raw stream, that the OS failed.
    fn error(&self, source: io::Error, extra: u64) -> DataError {
        let path = self.source.to_path_buf();
        if self.gzip {
            DataError::Gzip {
                path,
                decompressed: self.offset + extra,
                source,
            }
        } else {
            DataError::Io { path, source }
        }
    }
}

/// Like `read_exact`, but a short stream is not an error: it returns how
/// many bytes it got, so the caller can report "found N of M bytes".
fn read_up_to<R: Read + ?Sized>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Encodes an IDX file, the inverse of the parser, for tests and tools that
/// write small synthetic data sets. The magic number is taken as given so
/// that tests can also write wrong ones.
pub fn encode(magic: u32, dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 4 * dims.len() + body.len());
    out.extend_from_slice(&magic.to_be_bytes());
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_raw_labels_from_a_slice() {
        let bytes = encode(IdxKind::Labels.magic(), &[3], &[1, 2, 3]);
        let labels = read_labels(&bytes[..], Path::new("mem")).expect("valid labels");
        assert_eq!(labels, vec![1, 2, 3]);
    }

    #[test]
    fn one_byte_at_a_time_reader_still_parses() {
        // Readers may return fewer bytes than asked; the parser must not
        // mistake that for the end of the stream.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() || buf.is_empty() {
                    return Ok(0);
                }
                buf[0] = self.0[0];
                self.0 = &self.0[1..];
                Ok(1)
            }
        }
        let bytes = encode(IdxKind::Images.magic(), &[2, 2, 3], &[7; 12]);
        let images = read_images(Trickle(&bytes), Path::new("mem")).expect("valid images");
        assert_eq!((images.count, images.rows, images.cols), (2, 2, 3));
        assert_eq!(images.pixels, vec![7; 12]);
    }

    #[test]
    fn body_limit_is_inclusive_and_overflow_is_caught() {
        assert_eq!(checked_body_len(&[1 << 16, 1 << 16]), Some(MAX_BODY_BYTES));
        assert_eq!(checked_body_len(&[(1 << 16) + 1, 1 << 16]), None);
        assert_eq!(checked_body_len(&[u32::MAX, u32::MAX, u32::MAX]), None);
    }
}
