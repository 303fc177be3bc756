//! Decompression through backhand's codecs, with the output length checked.
//!
//! Every caller knows how large the output must be (a metadata block at most 8 KiB, a data
//! block exactly its expected length), so a bomb is stopped at that size: the output buffer is
//! allocated at the limit, and backhand's gzip and xz decoders stop growing at 4 MiB.
//!
//! zstd, the usual codec of software images, is decoded here with one decompression context
//! per thread: creating one per block cost about 4% of the daemon's time reading a tree.

use crate::error::{Error, Result};
use backhand::compression::{CompressionAction, Compressor, DefaultCompressor};

#[derive(Debug, Clone, Copy)]
pub(crate) struct Codec(Compressor);

impl Codec {
    pub fn from_id(id: u16) -> Result<Self> {
        let compressor = match id {
            1 => Compressor::Gzip,
            3 => Compressor::Lzo,
            4 => Compressor::Xz,
            5 => Compressor::Lz4,
            6 => Compressor::Zstd,
            2 => return Err(Error::Unsupported("lzma compression (legacy)".into())),
            other => return Err(Error::corrupt(format!("unknown compressor id {other}"))),
        };
        Ok(Self(compressor))
    }

    pub fn name(&self) -> &'static str {
        match self.0 {
            Compressor::Gzip => "gzip",
            Compressor::Lzo => "lzo",
            Compressor::Xz => "xz",
            Compressor::Lz4 => "lz4",
            Compressor::Zstd => "zstd",
            _ => "other",
        }
    }

    /// Decompresses `data`, which must expand to at most `max` bytes.
    pub fn decompress(&self, data: &[u8], max: usize) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(max);
        // The codecs are third-party code fed with untrusted bytes: a panic in one of them
        // becomes an error for this block, not a dead daemon.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match self.0 {
            Compressor::Zstd => zstd_decompress(data, &mut out),
            other => DefaultCompressor.decompress(data, &mut out, other),
        }));
        match result {
            Ok(Ok(())) if out.len() <= max => {
                // The buffer was sized for a whole block; a fragment, a file's tail or a
                // metadata block is smaller, and the cache weighs entries by length: give the
                // rest back, or the cache would hold several times its budget.
                if out.capacity() > out.len() + out.len() / 8 {
                    out.shrink_to_fit();
                }
                Ok(out)
            }
            Ok(Ok(())) => Err(Error::corrupt(format!(
                "block decompresses to more than {max} bytes"
            ))),
            Ok(Err(e)) => Err(Error::corrupt(format!(
                "{} decompression failed: {e}",
                self.name()
            ))),
            Err(_) => Err(Error::corrupt(format!("{} decoder panicked", self.name()))),
        }
    }
}

/// One zstd block into `out`, at most its capacity (a larger output is an error).
fn zstd_decompress(
    data: &[u8],
    out: &mut Vec<u8>,
) -> std::result::Result<(), backhand::BackhandError> {
    thread_local! {
        static CONTEXT: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    CONTEXT.with_borrow_mut(|context| {
        let decompressor = match context {
            Some(d) => d,
            None => context.insert(zstd::bulk::Decompressor::new()?),
        };
        decompressor.decompress_to_buffer(data, out)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Regression: a small block kept a whole block-size buffer, which the byte-weighted cache
    /// did not count, so the daemon's memory ran far past its budget.
    #[test]
    fn a_small_block_keeps_no_block_sized_buffer() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&data).unwrap();
        let out = Codec::from_id(1)
            .unwrap()
            .decompress(&z.finish().unwrap(), 1 << 20)
            .unwrap();
        assert_eq!(out, data);
        assert!(out.capacity() <= 1125, "capacity {}", out.capacity());
    }
}
