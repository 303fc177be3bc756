//! The image file being written, with its position tracked.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub struct Output {
    file: BufWriter<File>,
    pos: u64,
    path: PathBuf,
}

impl Output {
    pub fn create(path: &Path) -> Result<Self> {
        let file =
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self {
            file: BufWriter::with_capacity(1 << 20, file),
            pos: 0,
            path: path.to_path_buf(),
        })
    }

    pub fn pos(&self) -> u64 {
        self.pos
    }

    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Goes back to `pos` (a duplicate's blocks are dropped); later writes overwrite.
    pub fn rewind(&mut self, pos: u64) -> Result<()> {
        self.file
            .seek(SeekFrom::Start(pos))
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.pos = pos;
        Ok(())
    }

    /// Writes `bytes` at `pos` (the superblock), then truncates the file to `len`.
    pub fn finish(mut self, pos: u64, bytes: &[u8], len: u64) -> Result<()> {
        let at = || format!("writing {}", self.path.display());
        self.file.seek(SeekFrom::Start(pos)).with_context(at)?;
        self.file.write_all(bytes).with_context(at)?;
        let file = self
            .file
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(at)?;
        file.set_len(len).with_context(at)?;
        Ok(())
    }
}
