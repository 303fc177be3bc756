//! The test rings. Plain `cargo test` runs every test that needs neither root nor an S3 server;
//! the others are compiled in but ignored, with their ring named, unless the crate's
//! `root-tests` or `s3-tests` feature turns the ring on (`tests/run` turns on both). Once a
//! ring is on, a missing prerequisite is a failure that says what is missing, never a skip.

/// The effective user id of the test process.
#[allow(unsafe_code)]
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Panics unless the process runs as root, naming `what` needed it.
pub fn require_root(what: &str) {
    let euid = euid();
    assert!(
        euid == 0,
        "{what} needs root (euid is {euid}): this test is in the root-tests ring; run it as root \
         (sudo bash tests/run) or leave the ring out (plain `cargo test` does)"
    );
}
