//! The `s3://` store: aws-sdk-s3 with the standard AWS configuration.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use aws_smithy_http_client::tls;
use aws_smithy_types::timeout::TimeoutConfig;
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::file::temp_path_for;
use super::{CutOff, PutOutcome, StoreError, StoreUrl, StoredObject, UploadRequest};
use crate::error_chain::ErrorChain;

/// When the SDK adds checksums to requests (`WAVE_S3_CHECKSUM`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChecksumMode {
    /// The SDK's default: CRC32 on every upload (aws-chunked bodies with a trailer).
    #[default]
    WhenSupported,
    /// Only where the API requires one: for S3-compatible stores (Garage among them) that
    /// reject aws-chunked uploads.
    WhenRequired,
}

/// A `WAVE_S3_*` setting with a value the supervisor does not understand.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{name}={value:?}: expected {expected}")]
pub struct OptionError {
    name: &'static str,
    value: String,
    expected: &'static str,
}

impl FromStr for ChecksumMode {
    type Err = OptionError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "when-supported" => Ok(ChecksumMode::WhenSupported),
            "when-required" => Ok(ChecksumMode::WhenRequired),
            _ => Err(OptionError {
                name: "WAVE_S3_CHECKSUM",
                value: value.to_owned(),
                expected: "when-supported or when-required",
            }),
        }
    }
}

/// How the S3 client is built and how large transfers are split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Options {
    /// Path-style addressing (`http://endpoint/bucket/key`), which most S3-compatible
    /// servers need (`WAVE_S3_PATH_STYLE=true`).
    pub path_style: bool,
    /// Request checksums (`WAVE_S3_CHECKSUM`).
    pub checksum: ChecksumMode,
    /// Files larger than this go up as multipart uploads; objects larger than this come
    /// down in ranges.
    pub multipart_threshold: u64,
    /// Size of one part or range (raised when a file would need more than 10,000 parts).
    pub part_size: u64,
    /// Parts or ranges of one object in flight at once.
    pub part_concurrency: usize,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            path_style: false,
            checksum: ChecksumMode::default(),
            multipart_threshold: 16 * MIB,
            part_size: 16 * MIB,
            part_concurrency: 8,
        }
    }
}

const MIB: u64 = 1024 * 1024;
/// The region when none is configured: S3-compatible servers mostly ignore it, and AWS
/// redirects the client to the bucket's region.
const DEFAULT_REGION: &str = "us-east-1";
const MAX_PARTS: u64 = 10_000;
/// The smallest part S3 accepts (but for the last one): a stored object below it cannot be
/// the copied first part of an extension, so a file that small is sent whole.
pub const MIN_PART_SIZE: u64 = 5 * MIB;
/// The largest part UploadPartCopy accepts.
const MAX_COPY_PART: u64 = 5 * 1024 * MIB;
/// How long a shutdown waits for the abort of a multipart upload it cut off.
const ABORT_WAIT: Duration = Duration::from_secs(2);

impl S3Options {
    /// The part size for a file of `size` bytes: the configured one, or larger when the
    /// file would otherwise need more parts than S3 allows.
    fn part_size_for(&self, size: u64) -> u64 {
        self.part_size.max(size.div_ceil(MAX_PARTS)).max(1)
    }
}

/// Byte ranges `[start, end)` covering `size` bytes in pieces of `part` bytes.
fn ranges(size: u64, part: u64) -> impl Iterator<Item = (u64, u64)> {
    (0..size.div_ceil(part)).map(move |i| (i * part, ((i + 1) * part).min(size)))
}

#[derive(Clone, Debug)]
pub(super) struct S3Store {
    client: Client,
    options: S3Options,
    endpoint: Option<String>,
    /// Set once the store answered that it lacks UploadPartCopy (checked on first use).
    copy_unsupported: Arc<AtomicBool>,
}

impl S3Store {
    /// Builds the client: default credential chain (env, web identity/IRSA, EKS Pod
    /// Identity, instance profile), `AWS_ENDPOINT_URL`, region from the usual places or
    /// us-east-1, and an HTTPS client on rustls with the ring provider.
    pub(super) async fn connect(
        options: &S3Options,
        customize: impl FnOnce(aws_config::ConfigLoader) -> aws_config::ConfigLoader,
    ) -> S3Store {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http.clone())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .build(),
            );
        let sdk = customize(loader).load().await;
        let mut config = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(options.path_style)
            .http_client(http);
        if sdk.region().is_none() {
            config = config.region(Region::new(DEFAULT_REGION));
        }
        if options.checksum == ChecksumMode::WhenRequired {
            config = config
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        S3Store {
            client: Client::from_conf(config.build()),
            options: options.clone(),
            endpoint: sdk.endpoint_url().map(str::to_owned),
            copy_unsupported: Arc::new(AtomicBool::new(false)),
        }
    }

    fn error<E>(&self, op: &'static str, url: String, err: SdkError<E>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let code = err.code().map(str::to_owned);
        let transient = match &err {
            SdkError::ConstructionFailure(_) => false,
            // Connection and timeout errors pass; "other" is mostly a credential chain
            // that found nothing, which waiting does not fix.
            SdkError::DispatchFailure(d) => d.is_io() || d.is_timeout(),
            SdkError::ServiceError(_) => {
                status.is_some_and(|s| s >= 500 || s == 429)
                    || code
                        .as_deref()
                        .is_some_and(|c| TRANSIENT_CODES.contains(&c))
            }
            _ => true,
        };
        let status_text = status.map(|s| format!("HTTP {s} ")).unwrap_or_default();
        let detail = match (&code, &err) {
            (Some(code), _) => match err.message() {
                Some(message) => format!("{status_text}{code}: {message}{}", hint(code)),
                None => format!("{status_text}{code}{}", hint(code)),
            },
            (None, SdkError::DispatchFailure(d)) if !d.is_io() && !d.is_timeout() => {
                format!("the request could not be sent: {}", ErrorChain(&err))
            }
            (None, SdkError::DispatchFailure(_) | SdkError::TimeoutError(_)) => format!(
                "S3 endpoint {} did not answer: {}",
                self.endpoint.as_deref().unwrap_or("(AWS default)"),
                ErrorChain(&err)
            ),
            (None, _) => format!("{status_text}{}", ErrorChain(&err)),
        };
        StoreError::S3 {
            op,
            url,
            code,
            detail,
            transient,
        }
    }

    fn stream_error(
        &self,
        url: String,
        err: aws_smithy_types::byte_stream::error::Error,
    ) -> StoreError {
        StoreError::S3 {
            op: "download",
            url,
            code: None,
            detail: format!("the transfer was cut: {}", ErrorChain(&err)),
            transient: true,
        }
    }

    pub(super) async fn list(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Vec<StoredObject>, StoreError> {
        let url = |k: &str| format!("s3://{bucket}/{k}");
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(key)
            .into_paginator()
            .send();
        let mut objects = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error("list", url(key), e))?;
            for object in page.contents() {
                let Some(object_key) = object.key() else {
                    continue;
                };
                let Some(rel) = relative_key(key, object_key) else {
                    continue;
                };
                objects.push(StoredObject {
                    url: StoreUrl::S3 {
                        bucket: bucket.to_owned(),
                        key: object_key.to_owned(),
                    },
                    rel: rel.to_owned(),
                    size: object
                        .size()
                        .and_then(|s| u64::try_from(s).ok())
                        .unwrap_or(0),
                });
            }
        }
        Ok(objects)
    }

    pub(super) async fn get(
        &self,
        bucket: &str,
        key: &str,
        size: u64,
        dest: &Path,
    ) -> Result<u64, StoreError> {
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| StoreError::io("create directory", parent, e))?;
        }
        let tmp = temp_path_for(dest);
        let result = self.get_into(bucket, key, size, &tmp).await;
        let result = match result {
            Ok(n) => tokio::fs::rename(&tmp, dest)
                .await
                .map(|()| n)
                .map_err(|e| StoreError::io("write", dest, e)),
            Err(e) => Err(e),
        };
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    async fn get_into(
        &self,
        bucket: &str,
        key: &str,
        size: u64,
        tmp: &Path,
    ) -> Result<u64, StoreError> {
        let url = format!("s3://{bucket}/{key}");
        let file = tokio::fs::File::create(tmp)
            .await
            .map_err(|e| StoreError::io("create", tmp, e))?;
        let part = self.options.part_size_for(size);
        let written = if size <= self.options.multipart_threshold {
            drop(file);
            self.get_range(bucket, key, None, tmp).await?
        } else {
            file.set_len(size)
                .await
                .map_err(|e| StoreError::io("allocate", tmp, e))?;
            drop(file);
            futures::stream::iter(ranges(size, part))
                .map(|range| self.get_range(bucket, key, Some(range), tmp))
                .buffer_unordered(self.options.part_concurrency.max(1))
                .try_fold(0, |total, n| async move { Ok(total + n) })
                .await?
        };
        if written != size {
            return Err(StoreError::ShortTransfer {
                url,
                expected: size,
                actual: written,
            });
        }
        Ok(written)
    }

    /// Streams the object, or the range `[start, end)` of it, into `file` at the same
    /// offset.
    async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        range: Option<(u64, u64)>,
        file: &Path,
    ) -> Result<u64, StoreError> {
        let url = format!("s3://{bucket}/{key}");
        let mut request = self.client.get_object().bucket(bucket).key(key);
        if let Some((start, end)) = range {
            request = request.range(format!("bytes={start}-{}", end - 1));
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.error("download", url.clone(), e))?;
        let mut out = tokio::fs::OpenOptions::new()
            .write(true)
            .open(file)
            .await
            .map_err(|e| StoreError::io("open", file, e))?;
        if let Some((start, _)) = range {
            out.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(|e| StoreError::io("seek in", file, e))?;
        }
        let mut out = tokio::io::BufWriter::with_capacity(1024 * 1024, out);
        let mut body = response.body;
        let mut written = 0u64;
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| self.stream_error(url.clone(), e))?
        {
            out.write_all(&chunk)
                .await
                .map_err(|e| StoreError::io("write", file, e))?;
            written += chunk.len() as u64;
        }
        out.flush()
            .await
            .map_err(|e| StoreError::io("write", file, e))?;
        if let Some((start, end)) = range
            && written != end - start
        {
            return Err(StoreError::ShortTransfer {
                url,
                expected: end - start,
                actual: written,
            });
        }
        Ok(written)
    }

    pub(super) async fn upload(
        &self,
        src: &Path,
        bucket: &str,
        key: &str,
        request: &UploadRequest,
    ) -> Result<PutOutcome, StoreError> {
        let url = format!("s3://{bucket}/{key}");
        let copy = request
            .stored
            .filter(|&stored| stored >= MIN_PART_SIZE && stored < request.len);
        if let Some(stored) = copy
            && !self.copy_unsupported.load(Ordering::Relaxed)
        {
            match self
                .put_multipart(src, bucket, key, request.len, stored, &request.cutoff)
                .await
            {
                Err(MultipartError::CopyUnsupported(e)) => {
                    if !self.copy_unsupported.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            %url,
                            error = %ErrorChain(&e),
                            "this store does not support UploadPartCopy: grown result files are sent whole from now on"
                        );
                    }
                }
                other => return other.map_err(MultipartError::into_store_error),
            }
        }
        if request.len <= self.options.multipart_threshold {
            let body = file_body(src, 0, request.len).await?;
            let put = self
                .client
                .put_object()
                .bucket(bucket)
                .key(key)
                .content_length(request.len as i64)
                .body(body)
                .send();
            tokio::select! {
                sent = put => {
                    sent.map_err(|e| self.error("upload", url, e))?;
                }
                () = request.cutoff.reached() => return Err(StoreError::CutOff { url }),
            }
            return Ok(PutOutcome {
                bytes: request.len,
                stored: request.len,
                parts: None,
            });
        }
        self.put_multipart(src, bucket, key, request.len, 0, &request.cutoff)
            .await
            .map_err(MultipartError::into_store_error)
    }

    /// A multipart upload of the first `len` bytes of `src`, whose first `copied` bytes are
    /// copied by the store from the object already at `key` (UploadPartCopy) instead of
    /// being sent. Cut off by `cutoff`, or failed, it is aborted before this returns.
    async fn put_multipart(
        &self,
        src: &Path,
        bucket: &str,
        key: &str,
        len: u64,
        copied: u64,
        cutoff: &CutOff,
    ) -> Result<PutOutcome, MultipartError> {
        let url = format!("s3://{bucket}/{key}");
        let with_checksums = self.options.checksum == ChecksumMode::WhenSupported;
        let mut create = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key);
        if with_checksums {
            create = create.checksum_algorithm(ChecksumAlgorithm::Crc32);
        }
        let upload = create
            .send()
            .await
            .map_err(|e| self.error("start multipart upload of", url.clone(), e))?;
        let upload_id = upload.upload_id().unwrap_or_default().to_owned();
        let work = async {
            let mut parts = self
                .copy_parts(bucket, key, &upload_id, copied, with_checksums)
                .await?;
            let budget = MAX_PARTS.saturating_sub(parts.len() as u64).max(1);
            let part_size = self
                .options
                .part_size
                .max((len - copied).div_ceil(budget))
                .max(1);
            let first_new = i32::try_from(parts.len()).unwrap_or(i32::MAX) + 1;
            let plan = PartPlan {
                range: (copied, len),
                part_size,
                first_number: first_new,
                with_checksums,
            };
            parts.extend(
                self.upload_parts(src, bucket, key, &upload_id, plan)
                    .await?,
            );
            let count = parts.len();
            self.client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| self.error("complete multipart upload of", url.clone(), e))?;
            Ok::<_, MultipartError>(count)
        };
        let result = tokio::select! {
            result = work => result,
            () = cutoff.reached() => Err(MultipartError::Store(StoreError::CutOff { url: url.clone() })),
        };
        match result {
            Ok(count) => Ok(PutOutcome {
                bytes: len - copied,
                stored: len,
                parts: Some(count),
            }),
            Err(e) => {
                // Bounded: a shutdown waits for the abort, not for a store that is gone.
                if tokio::time::timeout(ABORT_WAIT, self.abort(bucket, key, &upload_id))
                    .await
                    .is_err()
                {
                    tracing::warn!(%url, "the abort of a multipart upload did not finish in time (a bucket lifecycle rule removes it)");
                }
                Err(e)
            }
        }
    }

    /// Parts `1..` of an extension: the stored object's first `copied` bytes, copied by the
    /// store in pieces of at most the largest copy part.
    async fn copy_parts(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        copied: u64,
        with_checksums: bool,
    ) -> Result<Vec<CompletedPart>, MultipartError> {
        let url = format!("s3://{bucket}/{key}");
        let source = format!("{bucket}/{}", encode_key(key));
        let mut parts = Vec::new();
        for ((start, end), number) in ranges(copied, MAX_COPY_PART).zip(1..) {
            let out = self
                .client
                .upload_part_copy()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .copy_source(&source)
                .copy_source_range(format!("bytes={start}-{}", end - 1))
                .send()
                .await
                .map_err(|e| {
                    let unsupported = copy_unsupported(&e);
                    let e = self.error("copy the stored part of", url.clone(), e);
                    if unsupported {
                        MultipartError::CopyUnsupported(e)
                    } else {
                        MultipartError::Store(e)
                    }
                })?;
            let result = out.copy_part_result();
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(result.and_then(|r| r.e_tag()).map(str::to_owned))
                    .set_checksum_crc32(
                        result
                            .and_then(|r| r.checksum_crc32())
                            .filter(|_| with_checksums)
                            .map(str::to_owned),
                    )
                    .build(),
            );
        }
        Ok(parts)
    }

    /// Aborts a multipart upload so its parts stop costing storage; a failure is logged.
    async fn abort(&self, bucket: &str, key: &str, upload_id: &str) {
        let url = format!("s3://{bucket}/{key}");
        if let Err(abort) = self
            .client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            tracing::warn!(
                %url,
                error = %self.error("abort multipart upload of", url.clone(), abort),
                "an incomplete multipart upload was left behind (a bucket lifecycle rule removes it)"
            );
        }
    }

    async fn upload_parts(
        &self,
        src: &Path,
        bucket: &str,
        key: &str,
        upload_id: &str,
        plan: PartPlan,
    ) -> Result<Vec<CompletedPart>, StoreError> {
        let url = format!("s3://{bucket}/{key}");
        let (from, to) = plan.range;
        let with_checksums = plan.with_checksums;
        let pieces =
            ranges(to - from, plan.part_size).map(move |(start, end)| (from + start, from + end));
        let mut parts: Vec<CompletedPart> = futures::stream::iter(pieces.zip(plan.first_number..))
            .map(|((start, end), number): ((u64, u64), i32)| {
                let url = url.clone();
                async move {
                    let body = file_body(src, start, end - start).await?;
                    let mut request = self
                        .client
                        .upload_part()
                        .bucket(bucket)
                        .key(key)
                        .upload_id(upload_id)
                        .part_number(number)
                        .content_length((end - start) as i64)
                        .body(body);
                    if with_checksums {
                        request = request.checksum_algorithm(ChecksumAlgorithm::Crc32);
                    }
                    let out = request
                        .send()
                        .await
                        .map_err(|e| self.error("upload part of", url, e))?;
                    Ok::<_, StoreError>(
                        CompletedPart::builder()
                            .part_number(number)
                            .set_e_tag(out.e_tag().map(str::to_owned))
                            .set_checksum_crc32(
                                out.checksum_crc32()
                                    .filter(|_| with_checksums)
                                    .map(str::to_owned),
                            )
                            .build(),
                    )
                }
            })
            .buffer_unordered(self.options.part_concurrency.max(1))
            .try_collect()
            .await?;
        parts.sort_by_key(|p| p.part_number());
        Ok(parts)
    }
}

/// The parts of a multipart upload that carry bytes from the local file.
struct PartPlan {
    /// Bytes `[start, end)` of the file.
    range: (u64, u64),
    part_size: u64,
    first_number: i32,
    with_checksums: bool,
}

/// Why a multipart upload failed.
enum MultipartError {
    /// The store does not implement UploadPartCopy: extend by a whole upload instead.
    CopyUnsupported(StoreError),
    Store(StoreError),
}

impl From<StoreError> for MultipartError {
    fn from(e: StoreError) -> Self {
        MultipartError::Store(e)
    }
}

impl MultipartError {
    fn into_store_error(self) -> StoreError {
        match self {
            MultipartError::CopyUnsupported(e) | MultipartError::Store(e) => e,
        }
    }
}

/// Whether a failed UploadPartCopy says the store lacks the operation (rather than
/// refusing this request).
fn copy_unsupported<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    let status = err.raw_response().map(|r| r.status().as_u16());
    status == Some(501) || matches!(err.code(), Some("NotImplemented" | "NotSupported"))
}

/// A key as the `x-amz-copy-source` header wants it: percent-encoded, `/` kept.
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A streaming request body reading `len` bytes of `path` from `offset`.
async fn file_body(path: &Path, offset: u64, len: u64) -> Result<ByteStream, StoreError> {
    ByteStream::read_from()
        .path(path)
        .offset(offset)
        .length(Length::Exact(len))
        .buffer_size(256 * 1024)
        .build()
        .await
        .map_err(|e| StoreError::io("read", path, std::io::Error::other(e)))
}

/// S3 error codes worth retrying even when the HTTP status alone would not say so.
const TRANSIENT_CODES: &[&str] = &[
    "RequestTimeout",
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeTooSkewed",
];

/// What the person reading the log should check for a well-known error code.
fn hint(code: &str) -> &'static str {
    match code {
        "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "InvalidToken" | "ExpiredToken" => {
            " (the credentials were refused: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the pod's IRSA / Pod Identity role)"
        }
        "AccessDenied" => {
            " (the credentials are not allowed to do this: check the IAM policy for this bucket and prefix)"
        }
        "NoSuchBucket" => " (the bucket does not exist: check the URL and AWS_ENDPOINT_URL)",
        _ => "",
    }
}

/// The path of `object_key` relative to the listed `key`, or `None` when the object is not
/// under it (`scripts/t10/run` when listing `scripts/t1`). An exact match (a URL naming one
/// object) gives its file name.
fn relative_key<'a>(key: &str, object_key: &'a str) -> Option<&'a str> {
    if object_key == key && !key.is_empty() && !key.ends_with('/') {
        return object_key.rsplit('/').next();
    }
    let rest = object_key.strip_prefix(key)?;
    if key.is_empty() || key.ends_with('/') {
        Some(rest)
    } else {
        rest.strip_prefix('/')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_keys_follow_directory_semantics() {
        assert_eq!(relative_key("s/t1/", "s/t1/a/b"), Some("a/b"));
        assert_eq!(relative_key("s/t1", "s/t1/a/b"), Some("a/b"));
        assert_eq!(relative_key("s/t1", "s/t10/a"), None);
        assert_eq!(relative_key("s/t.tar.gz", "s/t.tar.gz"), Some("t.tar.gz"));
        assert_eq!(relative_key("", "x/y"), Some("x/y"));
        assert_eq!(relative_key("s/", "s/"), Some(""));
    }

    #[test]
    fn ranges_cover_the_object_exactly() {
        let r: Vec<_> = ranges(10, 4).collect();
        assert_eq!(r, [(0, 4), (4, 8), (8, 10)]);
        assert_eq!(ranges(8, 4).count(), 2);
        assert_eq!(ranges(0, 4).count(), 0);
    }

    #[test]
    fn part_size_grows_to_stay_under_ten_thousand_parts() {
        let options = S3Options::default();
        assert_eq!(options.part_size_for(100 * MIB), 16 * MIB);
        let huge = 500 * 1024 * MIB * 1024;
        assert!(huge.div_ceil(options.part_size_for(huge)) <= MAX_PARTS);
    }

    #[test]
    fn an_unknown_checksum_mode_names_the_variable_and_the_choices() {
        let err = "never".parse::<ChecksumMode>().expect_err("unknown mode");
        assert_eq!(
            err.to_string(),
            r#"WAVE_S3_CHECKSUM="never": expected when-supported or when-required"#
        );
    }
}
