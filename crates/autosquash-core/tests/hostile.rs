//! Hostile images: every crafted image gives a clear error for that image and nothing worse
//! (no panic, no hang, no unbounded allocation), and so do seeded mutations of the corpus.

mod common;

use autosquash_testkit::hostile;
use std::time::{Duration, Instant};

/// Opens and walks an image from memory: open, every listing, inode, xattr list and file.
async fn walk(bytes: Vec<u8>) -> Result<usize, String> {
    let (_store, image) = common::open_mem(bytes).await;
    let image = image.map_err(|e| e.to_string())?;
    common::walk_everything(&image, 100_000)
        .await
        .map_err(|e| e.to_string())
}

/// Images that open and walk cleanly by design: the engine never reads the NFS export table,
/// and the inode count is only an upper bound that every inode number is checked against.
const HARMLESS: &[&str] = &["sb-export-table-past-end", "sb-inode-count-max"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_hostile_images_fail_cleanly() {
    let work = tempfile::tempdir().unwrap();
    let crafted = hostile::crafted(work.path());
    assert!(crafted.len() >= 20);
    let mut report = Vec::new();
    let mut accepted = Vec::new();
    for h in crafted {
        let start = Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(20), tokio::spawn(walk(h.bytes)))
            .await
            .unwrap_or_else(|_| panic!("{}: hung", h.name))
            .unwrap_or_else(|e| panic!("{}: panicked: {e}", h.name));
        let elapsed = start.elapsed();
        assert!(
            elapsed < Duration::from_secs(5),
            "{}: took {elapsed:?}",
            h.name
        );
        match outcome {
            Err(message) => {
                assert!(!message.is_empty());
                report.push(format!("{:32} {message}", h.name));
            }
            Ok(n) if HARMLESS.contains(&h.name.as_str()) => {
                report.push(format!("{:32} harmless ({n} entries)", h.name))
            }
            Ok(n) => accepted.push(format!("{} ({}): walked {n} entries", h.name, h.what)),
        }
    }
    println!("{}", report.join("\n"));
    assert!(
        accepted.is_empty(),
        "accepted hostile images:\n{}",
        accepted.join("\n")
    );
}

/// Inputs found outside the tests (by fuzzing), each a regression case: an error, no panic.
#[tokio::test]
async fn images_found_by_fuzzing_fail_cleanly() {
    for (name, bytes) in hostile::found() {
        let outcome = tokio::spawn(walk(bytes.to_vec()))
            .await
            .unwrap_or_else(|e| panic!("{name}: panicked: {e}"));
        let message = outcome.expect_err(name);
        println!("{name:32} {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "root-tests ring, needs root: sudo bash tests/run"
)]
async fn seeded_mutations_of_the_corpus_never_panic_or_hang() {
    let corpus = common::corpus();
    let mut outcomes = (0, 0);
    for (seed, name) in ["gzip-128k", "uncompressed", "xz", "lz4"]
        .iter()
        .enumerate()
    {
        let variant = corpus.variants.iter().find(|v| &v.name == name).unwrap();
        let image = std::fs::read(&variant.image).unwrap();
        for (i, mutant) in hostile::mutations(&image, seed as u64, 60)
            .into_iter()
            .enumerate()
        {
            let outcome = tokio::time::timeout(Duration::from_secs(20), tokio::spawn(walk(mutant)))
                .await
                .unwrap_or_else(|_| panic!("{name} mutation {i}: hung"))
                .unwrap_or_else(|e| panic!("{name} mutation {i}: panicked: {e}"));
            match outcome {
                Ok(_) => outcomes.0 += 1,
                Err(_) => outcomes.1 += 1,
            }
        }
    }
    println!(
        "mutations: {} walked cleanly, {} rejected with an error",
        outcomes.0, outcomes.1
    );
    assert!(outcomes.1 > 0, "no mutation was detected at all");
}
