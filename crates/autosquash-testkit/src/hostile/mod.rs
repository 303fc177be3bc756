//! Hostile squashfs images, for testing that the engine fails cleanly (an error, never a panic,
//! a hang or an unbounded allocation) on anything an attacker can put in a bucket.
//!
//! [`crafted`] builds tiny trees, packs them with `mksquashfs` (mostly uncompressed, so metadata
//! can be found and patched in place), and patches one structure per image: superblock fields,
//! metadata block headers, inodes, directory listings, fragment entries, data blocks.
//! [`mutations`] derives seeded random corruptions of any image. [`found`] returns the images
//! found outside the tests (fuzzer crashes), kept as regression cases.
//!
//! Inside: `format` (on-disk offsets and little-endian accessors), `bits` (a zlib stream of
//! zeros, written bit by bit), `reader` (the small squashfs 4.0 parser that finds what to
//! patch), `rng`, `fixtures` (the trees and the `mksquashfs` runs), `crafted` (the patches) and
//! `mutate` (the random corruptions).

use std::path::Path;

mod bits;
mod crafted;
mod fixtures;
mod format;
mod mutate;
mod reader;
mod rng;

pub use mutate::mutations;

/// One hostile image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hostile {
    /// Short unique name, e.g. `"sb-bytes-used-too-big"`.
    pub name: String,
    /// The whole image file.
    pub bytes: Vec<u8>,
    /// What is wrong with it.
    pub what: &'static str,
}

/// Crafted hostile images. `work` is a scratch directory for mksquashfs runs.
pub fn crafted(work: &Path) -> Vec<Hostile> {
    crafted::craft(work)
        .items
        .into_iter()
        .map(|(h, _)| h)
        .collect()
}

/// Images found outside the tests (the fuzzer's crash inputs), kept as regression cases:
/// `(name, bytes)`. Each must give an error, not a panic.
pub fn found() -> Vec<(&'static str, &'static [u8])> {
    vec![(
        "crash-shared-block",
        include_bytes!("../../fixtures/crash-shared-block.squash"),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_crafted_is_deterministic() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        assert_eq!(crafted(a.path()), crafted(b.path()));
    }
}
