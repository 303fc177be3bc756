//! Uploading an image file (`autosquash push`).
//!
//! Below one part size a single PUT; above, a multipart upload with a few parts in flight, so a
//! large image goes up at the speed of several connections. Either way the object appears only
//! when complete: readers never see a half-uploaded image. A multipart upload that fails is
//! aborted, so its parts do not linger (and cost) in the bucket. Parts are read into memory
//! (`PART_SIZE` × `PARTS_IN_FLIGHT` at most), which keeps each request retryable by the SDK and
//! its CRC32 checksum cheap to compute.
//!
//! Every request body carries a CRC32 checksum the store verifies, and after the upload the
//! object is looked up again: its size must be the file's and its ETag the one the upload
//! returned, or the push fails (a store that dropped bytes, or another writer that replaced the
//! object in between, is caught here rather than by the daemon later).

use crate::{S3Config, S3Store};
use autosquash_core::{Error, Result, Store};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Smallest part size; larger files get larger parts to stay under `MAX_PARTS`.
pub const PART_SIZE: u64 = 16 << 20;
/// Parts uploaded at once.
pub const PARTS_IN_FLIGHT: usize = 4;
/// S3's limit on the number of parts of one upload.
const MAX_PARTS: u64 = 10_000;

/// Uploads the file at `path` as `key` of `config.bucket` and checks the object's size and
/// ETag afterwards; returns the new object's ETag. `progress` is called with the number of
/// bytes just uploaded, after each part.
pub async fn upload_file(
    config: &S3Config,
    key: &str,
    path: &Path,
    progress: impl Fn(u64) + Send + Sync,
) -> Result<String> {
    let file = File::open(path).map_err(|e| Error::store(&path.display().to_string(), e))?;
    let size = file
        .metadata()
        .map_err(|e| Error::store(&path.display().to_string(), e))?
        .len();
    let file = Arc::new(file);
    let store = S3Store::new(&upload_config(config)).await;
    let etag = upload(&store, key, &file, size, path, progress).await?;
    check_uploaded(&store, key, size, &etag).await?;
    Ok(etag)
}

/// The object as the store has it now must be the one just sent.
async fn check_uploaded(store: &S3Store, key: &str, size: u64, etag: &str) -> Result<()> {
    let meta = store.head(key).await?;
    if meta.size != size || meta.etag != etag {
        return Err(Error::store(
            &format!("s3://{}/{key}", store.bucket),
            format!(
                "after the upload the object is {} bytes with ETag {}, not the {size} bytes \
                 with ETag {etag} sent (replaced meanwhile, or stored wrong)",
                meta.size, meta.etag
            ),
        ));
    }
    Ok(())
}

async fn upload(
    store: &S3Store,
    key: &str,
    file: &Arc<File>,
    size: u64,
    path: &Path,
    progress: impl Fn(u64) + Send + Sync,
) -> Result<String> {
    if size <= PART_SIZE {
        let body = read_part(file, 0, size, path).await?;
        let out = store
            .client
            .put_object()
            .bucket(&store.bucket)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| store.error(key, e, Instant::now()))?;
        progress(size);
        return etag(key, out.e_tag());
    }
    let part_size = PART_SIZE.max(size.div_ceil(MAX_PARTS).next_multiple_of(1 << 20));
    let created = store
        .client
        .create_multipart_upload()
        .bucket(&store.bucket)
        .key(key)
        .checksum_algorithm(ChecksumAlgorithm::Crc32)
        .send()
        .await
        .map_err(|e| store.error(key, e, Instant::now()))?;
    let upload_id = created
        .upload_id()
        .ok_or_else(|| Error::store(key, "the store gave no upload id"))?
        .to_owned();
    let parts = futures::stream::iter(0..size.div_ceil(part_size))
        .map(|i| {
            let (store, file, upload_id, progress) = (store, file, &upload_id, &progress);
            async move {
                let offset = i * part_size;
                let len = part_size.min(size - offset);
                let body = read_part(file, offset, len, path).await?;
                let number = i as i32 + 1;
                let out = store
                    .client
                    .upload_part()
                    .bucket(&store.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .checksum_algorithm(ChecksumAlgorithm::Crc32)
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .map_err(|e| store.error(key, e, Instant::now()))?;
                progress(len);
                Ok::<_, Error>(
                    CompletedPart::builder()
                        .part_number(number)
                        .e_tag(etag(key, out.e_tag())?)
                        .set_checksum_crc32(out.checksum_crc32().map(str::to_owned))
                        .build(),
                )
            }
        })
        .buffer_unordered(PARTS_IN_FLIGHT)
        .try_collect::<Vec<_>>()
        .await;
    let completed = match parts {
        Ok(mut parts) => {
            parts.sort_by_key(|p| p.part_number());
            store
                .client
                .complete_multipart_upload()
                .bucket(&store.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| store.error(key, e, Instant::now()))
        }
        Err(e) => Err(e),
    };
    match completed {
        Ok(out) => etag(key, out.e_tag()),
        Err(e) => {
            let aborted = store
                .client
                .abort_multipart_upload()
                .bucket(&store.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
            if let Err(abort) = aborted {
                tracing::warn!(
                    key,
                    upload_id,
                    error = %store.error(key, abort, Instant::now()),
                    "cannot abort the failed multipart upload; its parts stay in the bucket"
                );
            }
            Err(e)
        }
    }
}

/// The store's settings with timeouts for sending large bodies: the SDK's read timeout runs
/// from the start of the request, body included, so a 10 s timeout would fail a part on any
/// link slower than ~1.6 MB/s.
fn upload_config(config: &S3Config) -> S3Config {
    let mut c = config.clone();
    c.read_timeout = c.read_timeout.max(Duration::from_secs(300));
    c.operation_timeout = c.operation_timeout.max(Duration::from_secs(900));
    c
}

fn etag(key: &str, etag: Option<&str>) -> Result<String> {
    etag.map(str::to_owned)
        .ok_or_else(|| Error::store(key, "the store gave no ETag"))
}

async fn read_part(file: &Arc<File>, offset: u64, len: u64, path: &Path) -> Result<Bytes> {
    let file = file.clone();
    let read = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0; len as usize];
        file.read_exact_at(&mut buf, offset).map(|()| buf)
    })
    .await
    .map_err(|e| Error::store(&path.display().to_string(), e))?;
    read.map(Bytes::from)
        .map_err(|e| Error::store(&path.display().to_string(), e))
}
