//! Block compression with the image's codec and level, one context reused for every block.

use super::super::Compression;
use anyhow::{Result, anyhow, bail};
use backhand::FilesystemCompressor;
use backhand::compression::{CompressionAction, Compressor as Id, DefaultCompressor};
use std::io::Write;

/// Squashfs compressor ids (squashfs_fs.h).
pub fn id(c: Compression) -> u16 {
    match c {
        // `none` names gzip, like `mksquashfs -noI -noD -noF -noX`: the kernel knows no
        // "uncompressed" id, and every block is flagged as stored raw.
        Compression::Gzip | Compression::None => 1,
        Compression::Lzo => 3,
        Compression::Xz => 4,
        Compression::Lz4 => 5,
        Compression::Zstd => 6,
    }
}

/// The default level of each codec and its range; `None` for codecs without levels here.
fn levels(c: Compression) -> Option<(u32, std::ops::RangeInclusive<u32>)> {
    match c {
        // zstd 3 packs several times faster than mksquashfs's 15, for images ~10% larger.
        Compression::Zstd => Some((3, 1..=22)),
        Compression::Gzip => Some((9, 1..=9)),
        Compression::Xz => Some((6, 0..=9)),
        Compression::Lz4 | Compression::Lzo | Compression::None => None,
    }
}

pub struct Compressor {
    kind: Compression,
    level: u32,
    block_size: u32,
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

impl Compressor {
    pub fn new(kind: Compression, level: Option<u32>, block_size: u32) -> Result<Self> {
        let level = match (levels(kind), level) {
            (None, None) => 0,
            (None, Some(_)) => bail!("--level: {} has no compression levels", kind.name()),
            (Some((default, _)), None) => default,
            (Some((_, range)), Some(l)) if range.contains(&l) => l,
            (Some((_, range)), Some(l)) => bail!(
                "--level {l}: {} levels are {} to {}",
                kind.name(),
                range.start(),
                range.end()
            ),
        };
        let zstd = match kind {
            Compression::Zstd => Some(zstd::bulk::Compressor::new(level as i32)?),
            _ => None,
        };
        Ok(Self {
            kind,
            level,
            block_size,
            zstd,
        })
    }

    /// `data` compressed, or `None` when it is to be stored as is (`--compression none`, or
    /// compressing did not make it smaller).
    pub fn compress(&mut self, data: &[u8]) -> Result<Option<Vec<u8>>> {
        let out = match self.kind {
            Compression::None => return Ok(None),
            Compression::Zstd => match &mut self.zstd {
                Some(z) => z.compress(data)?,
                None => bail!("zstd compressor missing"),
            },
            Compression::Gzip => {
                let level = flate2::Compression::new(self.level);
                let mut z = flate2::write::ZlibEncoder::new(Vec::new(), level);
                z.write_all(data)?;
                z.finish()?
            }
            Compression::Xz => {
                // The kernel reads xz with CRC32 or no check, and a dictionary no larger
                // than the block size (its default without compression options).
                let mut opts = liblzma::stream::LzmaOptions::new_preset(self.level)?;
                opts.dict_size(self.block_size.max(8192));
                let mut filters = liblzma::stream::Filters::new();
                filters.lzma2(&opts);
                let stream = liblzma::stream::Stream::new_stream_encoder(
                    &filters,
                    liblzma::stream::Check::Crc32,
                )?;
                let mut z = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
                z.write_all(data)?;
                z.finish()?
            }
            Compression::Lz4 | Compression::Lzo => {
                let id = if self.kind == Compression::Lz4 {
                    Id::Lz4
                } else {
                    Id::Lzo
                };
                let options = (id == Id::Lz4).then_some(lz4_options());
                let fc = FilesystemCompressor::new(id, options)
                    .map_err(|_| anyhow!("cannot set up {}", self.kind.name()))?;
                DefaultCompressor
                    .compress(data, fc, self.block_size)
                    .map_err(|_| anyhow!("{} compression failed", self.kind.name()))?
            }
        };
        Ok((out.len() < data.len()).then_some(out))
    }

    /// The compression options block the image needs, if any: LZ4 images always carry one
    /// (version 1, the only format the kernel reads, no flags).
    pub fn options(&self) -> Option<Vec<u8>> {
        (self.kind == Compression::Lz4).then(|| {
            let mut v = 1u32.to_le_bytes().to_vec();
            v.extend(0u32.to_le_bytes());
            v
        })
    }
}

fn lz4_options() -> backhand::compression::CompressionOptions {
    backhand::compression::CompressionOptions::Lz4(backhand::compression::Lz4 {
        version: 1,
        flags: 0,
    })
}
