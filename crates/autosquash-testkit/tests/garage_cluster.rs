//! The 3-node Garage cluster of the test kit keeps serving reads, whole and ranged, through the
//! surviving nodes while one node is dead, and a restarted node serves again.

use autosquash_testkit::garage_cluster::GarageCluster;
use std::time::Instant;

/// Deterministic pseudo-random bytes (xorshift64*), so a mismatch is reproducible.
fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first differing byte at offset {at}");
    }
}

#[test]
#[cfg_attr(
    not(feature = "s3-tests"),
    ignore = "s3-tests ring, needs Garage: sudo bash tests/run"
)]
fn reads_survive_a_killed_node() {
    let t0 = Instant::now();
    let cluster = GarageCluster::start("cluster-test", 3);
    eprintln!("3-node cluster up in {:?}", t0.elapsed());
    assert_eq!(cluster.nodes(), 3);

    let data = pseudo_random(5 << 20, 0x9e37_79b9_7f4a_7c15);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("object");
    std::fs::write(&file, &data).unwrap();
    cluster.put("big/object", &file);
    assert_same(
        "GET before the kill",
        &cluster.get(0, "big/object").unwrap(),
        &data,
    );

    cluster.kill(2);
    assert!(!cluster.is_alive(2));
    // Without this, the first GET waits (up to Garage's next status exchange, seconds) on the
    // connection node 0 still holds to the dead node, then succeeds: correct but slow.
    let t = Instant::now();
    cluster.settle_after_kill(2);
    eprintln!("survivors noticed the kill in {:?}", t.elapsed());
    let t = Instant::now();
    let got = cluster
        .get(0, "big/object")
        .unwrap_or_else(|e| panic!("GET via node 0 with node 2 dead: {e}\n{}", cluster.logs()));
    eprintln!("GET after the kill took {:?}", t.elapsed());
    assert_same("GET via node 0, node 2 dead", &got, &data);

    let (start, end) = (1_234_567u64, 3_456_789u64);
    let got = cluster
        .get_range(0, "big/object", start, end)
        .unwrap_or_else(|e| panic!("ranged GET with node 2 dead: {e}\n{}", cluster.logs()));
    assert_same(
        "ranged GET via node 0, node 2 dead",
        &got,
        &data[start as usize..=end as usize],
    );
    let got = cluster
        .get_range(1, "big/object", 0, 99)
        .unwrap_or_else(|e| panic!("ranged GET via node 1: {e}\n{}", cluster.logs()));
    assert_same("ranged GET via node 1, node 2 dead", &got, &data[..100]);
    assert!(
        cluster.get(2, "big/object").is_err(),
        "the killed node still answers"
    );

    // Writes keep working with 2 of 3 nodes, and a restarted node serves them.
    let small = dir.path().join("small");
    std::fs::write(&small, b"written while node 2 was down").unwrap();
    cluster.put("small", &small);
    let t = Instant::now();
    cluster.restart(2);
    eprintln!("node 2 restarted and reconnected in {:?}", t.elapsed());
    assert_eq!(
        cluster.get(2, "small").unwrap(),
        b"written while node 2 was down"
    );
    assert_same(
        "ranged GET via the restarted node",
        &cluster.get_range(2, "big/object", 4096, 8191).unwrap(),
        &data[4096..8192],
    );
    eprintln!("whole test took {:?}", t0.elapsed());
}
