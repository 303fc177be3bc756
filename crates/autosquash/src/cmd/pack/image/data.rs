//! File data: full blocks compressed one by one (all-zero blocks stored as sparse, nothing
//! written), files smaller than a block packed into shared fragment blocks, and a file whose
//! bytes were already stored pointing at the earlier copy instead.
//!
//! Threads: the caller's thread reads the files in order and decides everything about them
//! (sparse blocks, fragments, duplicates); one worker per core compresses blocks; one writer
//! thread puts the results into the image in the order they were read, so the image is the
//! same whatever the timing. Only blocks go through the workers; the rest (where a file starts
//! and ends) goes to the writer directly, numbered in the same sequence. Memory is bounded by
//! the blocks in flight: the reader takes a credit per block and the writer hands it back once
//! the block is written. (Credits per item would let the start and end of the small files
//! that fill one fragment block take the whole window, and compression would run on one core.)

use super::compress::Compressor;
use super::output::Output;
use anyhow::{Context, Result, anyhow, bail};
use indicatif::ProgressBar;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::io::Read;
use std::path::Path;
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

/// Bit 24 of a block or fragment size word: stored raw.
pub const RAW: u32 = 1 << 24;

/// Blocks in flight per worker.
const WINDOW_PER_WORKER: usize = 4;

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

/// A block for the workers to compress.
enum Job {
    /// A block of the current file.
    Block(Vec<u8>),
    /// A full fragment block.
    Fragment(Vec<u8>),
}

/// What the writer receives, in the reader's order once sorted by sequence number.
enum Done {
    /// The current file's blocks follow.
    Start,
    /// A block of the current file, compressed: bytes to write and their size word.
    Block(Vec<u8>, u32),
    /// An all-zero block of the current file.
    Sparse(u64),
    /// The current file's end: stored, or the same bytes as file `dup_of`.
    End {
        file: usize,
        dup_of: Option<usize>,
        fragment: Option<(u32, u32)>,
    },
    /// A fragment block, compressed.
    Fragment(Vec<u8>, u32),
}

/// What the data section came to: the image file (positioned after the data), each file's
/// location by its node index, and the fragment table (start and size word of each block).
pub struct Written {
    pub out: Output,
    pub locs: HashMap<usize, DataLoc>,
    pub fragments: Vec<(u64, u32)>,
}

pub struct DataWriter {
    block_size: usize,
    frag: Vec<u8>,
    fragments: u32,
    /// (size, keyed hash of the bytes) of every file stored, and its node. The key is random
    /// per run, so no input can be crafted to collide; the read-back check compares every
    /// file's bytes with its source anyway.
    seen: HashMap<(u64, u64), usize>,
    hasher: RandomState,
    seq: u64,
    jobs: Option<SyncSender<(u64, Job)>>,
    done: Option<Sender<(u64, Result<Done>)>>,
    credits: Receiver<()>,
    workers: Vec<JoinHandle<()>>,
    writer: JoinHandle<Result<Written>>,
}

impl DataWriter {
    /// Starts the workers and the writer; `compressor` makes one compressor per worker.
    pub fn new(
        out: Output,
        block_size: u32,
        compressor: impl Fn() -> Result<Compressor>,
    ) -> Result<Self> {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let window = workers * WINDOW_PER_WORKER;
        let (jobs, job_rx) = sync_channel::<(u64, Job)>(window);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done_rx) = channel::<(u64, Result<Done>)>();
        let (credit_tx, credits) = sync_channel::<()>(window);
        for _ in 0..window {
            credit_tx
                .send(())
                .map_err(|_| anyhow!("cannot start the writer"))?;
        }
        let workers = (0..workers)
            .map(|_| {
                let c = compressor()?;
                let (rx, tx) = (job_rx.clone(), done_tx.clone());
                Ok(std::thread::spawn(move || compress_items(c, &rx, &tx)))
            })
            .collect::<Result<Vec<_>>>()?;
        let writer = std::thread::spawn(move || write_items(out, &done_rx, &credit_tx));
        Ok(Self {
            block_size: block_size as usize,
            frag: Vec::new(),
            fragments: 0,
            seen: HashMap::new(),
            hasher: RandomState::new(),
            seq: 0,
            jobs: Some(jobs),
            done: Some(done_tx),
            credits,
            workers,
            writer,
        })
    }

    /// Sends a block to the workers, once one is written if `WINDOW` are in flight.
    fn compress(&mut self, job: Job) -> Result<()> {
        let sent = self.credits.recv().is_ok()
            && self
                .jobs
                .as_ref()
                .is_some_and(|jobs| jobs.send((self.seq, job)).is_ok());
        self.sent(sent)
    }

    /// Sends what needs no compression straight to the writer.
    fn note(&mut self, done: Done) -> Result<()> {
        let sent = self
            .done
            .as_ref()
            .is_some_and(|tx| tx.send((self.seq, Ok(done))).is_ok());
        self.sent(sent)
    }

    fn sent(&mut self, sent: bool) -> Result<()> {
        // A closed channel means the writer stopped on an error, which `finish` reports.
        if !sent {
            bail!("the image writer stopped");
        }
        self.seq += 1;
        Ok(())
    }

    /// Stores `size` bytes read from `src` as node `file` (the file `name`, checked not to
    /// have changed size since it was scanned).
    pub fn file(
        &mut self,
        file: usize,
        src: &mut dyn Read,
        size: u64,
        name: &Path,
        bar: &ProgressBar,
    ) -> Result<()> {
        let bs = self.block_size as u64;
        let mut hash = self.hasher.build_hasher();
        let whole = size < bs;
        let mut small = Vec::new();
        self.note(Done::Start)?;
        let mut left = size;
        while left > 0 {
            let n = left.min(bs) as usize;
            let mut block = vec![0; n];
            read_exact(src, &mut block, name)?;
            hash.write(&block);
            left -= n as u64;
            bar.inc(n as u64);
            if whole {
                small = block;
            } else if n == self.block_size && block.iter().all(|&b| b == 0) {
                self.note(Done::Sparse(n as u64))?;
            } else {
                self.compress(Job::Block(block))?;
            }
        }
        // One byte more means the file grew since it was scanned.
        if read_some(src, &mut [0u8], name)? > 0 {
            bail!("{}: changed while packing (it grew)", name.display());
        }
        let key = (size, hash.finish());
        let mut fragment = None;
        let dup_of = if size == 0 {
            None
        } else {
            let earlier = self.seen.get(&key).copied();
            if earlier.is_none() {
                self.seen.insert(key, file);
                if whole {
                    if self.frag.len() + small.len() > self.block_size {
                        self.flush_fragment()?;
                    }
                    fragment = Some((self.fragments, self.frag.len() as u32));
                    self.frag.extend_from_slice(&small);
                }
            }
            earlier
        };
        self.note(Done::End {
            file,
            dup_of,
            fragment,
        })
    }

    /// Sends the fragment block being filled, if any.
    fn flush_fragment(&mut self) -> Result<()> {
        if self.frag.is_empty() {
            return Ok(());
        }
        let block = std::mem::take(&mut self.frag);
        self.compress(Job::Fragment(block))?;
        self.fragments += 1;
        Ok(())
    }

    /// Writes the last fragment block and waits for everything to be written.
    pub fn finish(mut self) -> Result<Written> {
        let flushed = self.flush_fragment();
        self.jobs = None;
        self.done = None;
        for worker in self.workers {
            worker
                .join()
                .map_err(|_| anyhow!("a compression thread failed"))?;
        }
        let written = self
            .writer
            .join()
            .map_err(|_| anyhow!("the image writer failed"))??;
        flushed?;
        Ok(written)
    }
}

/// A worker: compresses blocks.
fn compress_items(
    mut c: Compressor,
    jobs: &Mutex<Receiver<(u64, Job)>>,
    done: &Sender<(u64, Result<Done>)>,
) {
    loop {
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok((seq, job)) = job else { return };
        let stored = |c: &mut Compressor, block: Vec<u8>| -> Result<(Vec<u8>, u32)> {
            Ok(match c.compress(&block)? {
                Some(packed) => {
                    let word = packed.len() as u32;
                    (packed, word)
                }
                None => {
                    let word = block.len() as u32 | RAW;
                    (block, word)
                }
            })
        };
        let result = match job {
            Job::Block(block) => stored(&mut c, block).map(|(b, w)| Done::Block(b, w)),
            Job::Fragment(block) => stored(&mut c, block).map(|(b, w)| Done::Fragment(b, w)),
        };
        if done.send((seq, result)).is_err() {
            return;
        }
    }
}

/// The writer: puts the workers' results into the image in sequence order.
fn write_items(
    mut out: Output,
    done: &Receiver<(u64, Result<Done>)>,
    credits: &SyncSender<()>,
) -> Result<Written> {
    let mut waiting = BTreeMap::new();
    let mut next = 0u64;
    let mut current = DataLoc::default();
    let mut locs: HashMap<usize, DataLoc> = HashMap::new();
    let mut fragments = Vec::new();
    for (seq, result) in done {
        waiting.insert(seq, result);
        while let Some(result) = waiting.remove(&next) {
            next += 1;
            match result? {
                Done::Start => {
                    current = DataLoc {
                        start: out.pos(),
                        ..DataLoc::default()
                    }
                }
                Done::Block(bytes, word) => {
                    out.write(&bytes)?;
                    current.words.push(word);
                    // The reader may be gone already (it stopped on an error).
                    let _ = credits.try_send(());
                }
                Done::Sparse(n) => {
                    current.words.push(0);
                    current.sparse += n;
                }
                Done::End {
                    file,
                    dup_of,
                    fragment,
                } => {
                    let loc = match dup_of {
                        Some(earlier) => {
                            out.rewind(current.start)?;
                            locs.get(&earlier)
                                .cloned()
                                .context("a duplicate of a file not yet stored")?
                        }
                        // An empty file points at 0, as mksquashfs writes it.
                        None if current.words.is_empty() && fragment.is_none() => {
                            DataLoc::default()
                        }
                        None => DataLoc {
                            fragment,
                            ..std::mem::take(&mut current)
                        },
                    };
                    locs.insert(file, loc);
                }
                Done::Fragment(bytes, word) => {
                    fragments.push((out.pos(), word));
                    out.write(&bytes)?;
                    let _ = credits.try_send(());
                }
            }
        }
    }
    if !waiting.is_empty() {
        bail!("the image writer lost blocks");
    }
    Ok(Written {
        out,
        locs,
        fragments,
    })
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
