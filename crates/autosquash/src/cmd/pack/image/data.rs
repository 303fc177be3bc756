//! File data: full blocks compressed one by one (all-zero blocks stored as sparse, nothing
//! written), files smaller than a block packed into shared fragment blocks, and a file whose
//! bytes were already stored pointing at the earlier copy instead.

use super::compress::Compressor;
use super::output::Output;
use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::io::Read;
use std::path::Path;

/// Bit 24 of a block or fragment size word: stored raw.
pub const RAW: u32 = 1 << 24;

/// Where a file's bytes are.
#[derive(Clone, Debug, Default)]
pub struct DataLoc {
    pub start: u64,
    /// Size words of the blocks (0: sparse).
    pub words: Vec<u32>,
    /// Fragment index and offset of a file smaller than a block.
    pub fragment: Option<(u32, u32)>,
    /// Bytes in sparse blocks.
    pub sparse: u64,
}

pub struct DataWriter {
    block_size: usize,
    frag: Vec<u8>,
    /// Fragment table entries: start and size word.
    pub fragments: Vec<(u64, u32)>,
    /// (size, keyed hash of the bytes) of every file stored. The key is random per run, so
    /// no input can be crafted to collide; the read-back check compares every file's bytes
    /// with its source anyway.
    seen: HashMap<(u64, u64), DataLoc>,
    hasher: RandomState,
    buf: Vec<u8>,
}

impl DataWriter {
    pub fn new(block_size: u32) -> Self {
        Self {
            block_size: block_size as usize,
            frag: Vec::new(),
            fragments: Vec::new(),
            seen: HashMap::new(),
            hasher: RandomState::new(),
            buf: vec![0; block_size as usize],
        }
    }

    /// Stores `size` bytes read from `src` (the file `name`, checked not to have changed
    /// size since it was scanned).
    pub fn file(
        &mut self,
        out: &mut Output,
        c: &mut Compressor,
        src: &mut dyn Read,
        size: u64,
        name: &Path,
        bar: &ProgressBar,
    ) -> Result<DataLoc> {
        if size == 0 {
            return Ok(DataLoc::default());
        }
        let bs = self.block_size as u64;
        let mut hash = self.hasher.build_hasher();
        let start = out.pos();
        let mut loc = DataLoc {
            start,
            ..DataLoc::default()
        };
        let mut left = size;
        let whole = size < bs;
        while left > 0 {
            let n = left.min(bs) as usize;
            let block = &mut self.buf[..n];
            read_exact(src, block, name)?;
            hash.write(block);
            left -= n as u64;
            bar.inc(n as u64);
            if whole {
                break;
            }
            if n == self.block_size && block.iter().all(|&b| b == 0) {
                loc.words.push(0);
                loc.sparse += n as u64;
                continue;
            }
            let word = match c.compress(block)? {
                Some(packed) => {
                    out.write(&packed)?;
                    packed.len() as u32
                }
                None => {
                    out.write(block)?;
                    n as u32 | RAW
                }
            };
            loc.words.push(word);
        }
        // One byte more means the file grew since it was scanned.
        if read_some(src, &mut [0u8], name)? > 0 {
            bail!("{}: changed while packing (it grew)", name.display());
        }
        let key = (size, hash.finish());
        if let Some(earlier) = self.seen.get(&key) {
            out.rewind(start)?;
            return Ok(earlier.clone());
        }
        if whole {
            let n = size as usize;
            if self.frag.len() + n > self.block_size {
                self.flush_fragment(out, c)?;
            }
            loc.fragment = Some((self.fragments.len() as u32, self.frag.len() as u32));
            self.frag.extend_from_slice(&self.buf[..n]);
        }
        self.seen.insert(key, loc.clone());
        Ok(loc)
    }

    /// Writes the fragment block being filled, if any.
    pub fn flush_fragment(&mut self, out: &mut Output, c: &mut Compressor) -> Result<()> {
        if self.frag.is_empty() {
            return Ok(());
        }
        let start = out.pos();
        let word = match c.compress(&self.frag)? {
            Some(packed) => {
                out.write(&packed)?;
                packed.len() as u32
            }
            None => {
                out.write(&self.frag)?;
                self.frag.len() as u32 | RAW
            }
        };
        self.fragments.push((start, word));
        self.frag.clear();
        Ok(())
    }
}

fn read_some(src: &mut dyn Read, buf: &mut [u8], name: &Path) -> Result<usize> {
    loop {
        match src.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", name.display())),
        }
    }
}

fn read_exact(src: &mut dyn Read, mut buf: &mut [u8], name: &Path) -> Result<()> {
    while !buf.is_empty() {
        let n = read_some(src, buf, name)?;
        if n == 0 {
            bail!("{}: changed while packing (it shrank)", name.display());
        }
        buf = &mut buf[n..];
    }
    Ok(())
}
