//! Against a store that checks less than S3 (the test kit's `LaxS3`): a replaced object is
//! never served as a mix of versions, and a store that ignores `Range` is a clear error.

use autosquash_core::{Error, Store};
use autosquash_s3::{S3Config, S3Store};
use autosquash_testkit::lax_s3::LaxS3;
use std::sync::atomic::Ordering;

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

async fn store(server: &LaxS3) -> S3Store {
    let mut config = S3Config::new(&server.bucket);
    config.endpoint_url = Some(server.endpoint.clone());
    config.force_path_style = true;
    config.no_sign_request = true;
    config.region = Some("us-east-1".into());
    S3Store::new(&config).await
}

#[tokio::test]
async fn a_store_that_ignores_if_match_never_mixes_versions() {
    let server = LaxS3::start("lax");
    let v1 = bytes(1 << 20, 1);
    server.put("img/a.squash", v1.clone());
    let store = store(&server).await;
    let listed = store.list("img/").await.unwrap();
    let meta = store.head("img/a.squash").await.unwrap();
    assert_eq!(listed, vec![meta.clone()]);
    let got = store.read(&meta, 0..4096).await.unwrap();
    assert_eq!(got[..], v1[..4096]);

    // Replaced by an object of the same size: the store answers its bytes with a 206.
    server.put("img/a.squash", bytes(1 << 20, 2));
    let answer = store.read(&meta, 4096..8192).await;
    assert!(
        matches!(answer, Err(Error::Replaced(_))),
        "a replaced object's bytes were served for the old version: {answer:?}"
    );
    // Replaced by one of another size.
    server.put("img/a.squash", bytes(3 << 20, 3));
    let answer = store.read(&meta, 4096..8192).await;
    assert!(matches!(answer, Err(Error::Replaced(_))), "{answer:?}");
    // The new version reads.
    let new = store.head("img/a.squash").await.unwrap();
    assert_eq!(
        store.read(&new, 0..10).await.unwrap()[..],
        bytes(3 << 20, 3)[..10]
    );

    // A store that does honour If-Match: the same outcome, from its 412.
    server
        .behaviour
        .honours_if_match
        .store(true, Ordering::Relaxed);
    server.put("img/a.squash", bytes(1 << 20, 4));
    let answer = store.read(&new, 0..10).await;
    assert!(matches!(answer, Err(Error::Replaced(_))), "{answer:?}");
}

#[tokio::test]
async fn a_store_that_ignores_range_is_a_clear_error_and_no_wrong_bytes() {
    let server = LaxS3::start("lax");
    let data = bytes(100_000, 5);
    server.put("obj", data.clone());
    server
        .behaviour
        .honours_range
        .store(false, Ordering::Relaxed);
    let store = store(&server).await;
    let meta = store.head("obj").await.unwrap();
    let err = store
        .read(&meta, 10..20)
        .await
        .expect_err("the whole object was taken for a range of it");
    assert!(
        err.to_string().contains("ignored the Range header"),
        "unclear error: {err}"
    );
    // Asked for the whole object, a 200 with the whole object is right.
    assert_eq!(store.read(&meta, 0..100_000).await.unwrap()[..], data[..]);
}
