"""The S3 backend: boto3 with the standard credential chain; any S3-compatible endpoint."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from slmops.errors import (
    ConfigError,
    ConflictError,
    ObjectExistsError,
    ObjectNotFoundError,
    StoreError,
    StoreUnavailableError,
)
from slmops.store.base import (
    RESERVED_PREFIX,
    ObjectInfo,
    ObjectStore,
    check_key,
    join_key,
    verify_sha256,
)
from slmops.store.hashing import HASH_CHUNK, sha256_bytes, sha256_file

_SHA_META = "sha256"  # user metadata: x-amz-meta-sha256
_MIN_PART = 5 * 2**20  # S3's smallest part, except the last
# Error codes S3 documents as "try again" (some arrive with a 4xx status).
_TRANSIENT_CODES = frozenset({"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout"})


class S3Store(ObjectStore):
    """Objects in an S3 bucket under a prefix.

    Immutability and aliases use S3 conditional writes: `If-None-Match: *` to create,
    `If-Match: <etag>` to swap. Each object's sha256 travels as user metadata and is checked
    on every read.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        multipart_threshold: int = 64 * 2**20,
        part_size: int = 64 * 2**20,
        client: Any = None,
    ):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self.multipart_threshold = multipart_threshold
        self.part_size = max(part_size, _MIN_PART)
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client = client
        self._client_lock = threading.Lock()

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    config = Config(
                        # Attempts: AWS_MAX_ATTEMPTS or the AWS config file (botocore default: 3).
                        retries={"mode": "standard"},
                        connect_timeout=10,
                        read_timeout=60,
                        s3={"addressing_style": "path"} if self.endpoint_url else None,
                    )
                    self._client = boto3.session.Session().client(
                        "s3",
                        endpoint_url=self.endpoint_url,
                        region_name=self.region,
                        config=config,
                    )
        return self._client

    def _key(self, key: str) -> str:
        return join_key(self.prefix, check_key(key))

    def _rel(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    def _where(self) -> str:
        return f"{self.uri} (endpoint {self.endpoint_url or 'AWS default'})"

    # -- errors -----------------------------------------------------------------------------
    def _raise(self, exc: Exception, key: str | None, *, exists_error: bool = True) -> NoReturn:
        """Turn a boto error into one that says what happened and what to do."""
        if isinstance(exc, NoCredentialsError):
            raise ConfigError(
                f"no AWS credentials for {self._where()}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an instance role"
            ) from exc
        if isinstance(exc, EndpointConnectionError):
            raise StoreUnavailableError(
                f"cannot reach S3 at {self._where()}: is the server running and "
                "SLMOPS_S3_ENDPOINT_URL right?"
            ) from exc
        if isinstance(exc, BotoConnectionError | ReadTimeoutError | ConnectionClosedError):
            raise StoreUnavailableError(
                f"S3 at {self._where()} did not answer in time or dropped the connection: {exc}"
            ) from exc
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            what = f"object {key!r} in {self.uri}" if key else self.uri
            if code == "NoSuchBucket" or (
                code in ("404", "NotFound") and not self._bucket_exists()
            ):
                raise ConfigError(
                    f"bucket {self.bucket!r} does not exist at {self._where()}: create it "
                    f"(aws s3 mb s3://{self.bucket}) or fix SLMOPS_STORE"
                ) from exc
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ObjectNotFoundError(f"{what} does not exist") from exc
            if code == "PreconditionFailed" or status == 412:
                if exists_error:
                    raise ObjectExistsError(
                        f"{what} already exists; stored objects are immutable: write a new "
                        "version instead"
                    ) from exc
                raise ConflictError(
                    f"{what} was changed by another writer since it was read; read it again "
                    "and retry"
                ) from exc
            if code == "ConditionalRequestConflict" or status == 409:
                raise ConflictError(
                    f"{what} is being written by another writer at the same time; retry"
                ) from exc
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                raise ConfigError(
                    f"access denied to {what} at {self._where()} ({code}): check the AWS "
                    "credentials and the bucket policy"
                ) from exc
            if (isinstance(status, int) and status >= 500) or code in _TRANSIENT_CODES:
                raise StoreUnavailableError(
                    f"S3 at {self._where()} failed on {what} with {code or status} (a server-side "
                    "error; retried by the flow's tasks)"
                ) from exc
            raise StoreError(f"S3 error on {what}: {code or status}: {exc}") from exc
        if isinstance(exc, BotoCoreError):
            raise StoreError(f"S3 request to {self._where()} failed: {exc}") from exc
        raise exc

    def _bucket_exists(self) -> bool:
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return True
        except ClientError:
            return False

    # -- writes -----------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes, *, overwrite: bool = False) -> ObjectInfo:
        digest = sha256_bytes(data)
        extra: dict[str, Any] = {} if overwrite else {"IfNoneMatch": "*"}
        try:
            resp = self.client.put_object(
                Bucket=self.bucket,
                Key=self._key(key),
                Body=data,
                Metadata={_SHA_META: digest},
                **extra,
            )
        except (ClientError, BotoCoreError) as exc:
            self._raise(exc, key)
        return ObjectInfo(key, len(data), etag=resp["ETag"], sha256=digest)

    def put_file(self, key: str, path: str | Path, *, overwrite: bool = False) -> ObjectInfo:
        src = Path(path)
        if not src.is_file():
            raise StoreError(f"cannot upload {src} to {key!r}: no such file")
        size = src.stat().st_size
        digest = sha256_file(src)  # known before upload, so it can travel as metadata
        extra: dict[str, Any] = {} if overwrite else {"IfNoneMatch": "*"}
        if size < self.multipart_threshold:
            try:
                with open(src, "rb") as fh:
                    resp = self.client.put_object(
                        Bucket=self.bucket,
                        Key=self._key(key),
                        Body=fh,
                        Metadata={_SHA_META: digest},
                        **extra,
                    )
            except (ClientError, BotoCoreError) as exc:
                self._raise(exc, key)
            return ObjectInfo(key, size, etag=resp["ETag"], sha256=digest)
        etag = self._multipart_upload(key, src, digest, extra)
        return ObjectInfo(key, size, etag=etag, sha256=digest)

    def _multipart_upload(self, key: str, src: Path, digest: str, extra: dict[str, Any]) -> str:
        """Upload in parts read one at a time; abort the upload on any failure."""
        full = self._key(key)
        try:
            upload_id = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=full, Metadata={_SHA_META: digest}
            )["UploadId"]
        except (ClientError, BotoCoreError) as exc:
            self._raise(exc, key)
        try:
            parts: list[dict[str, Any]] = []
            with open(src, "rb") as fh:
                # One part in memory at a time: the next is read only after this one is sent.
                while chunk := fh.read(self.part_size):
                    resp = self.client.upload_part(
                        Bucket=self.bucket,
                        Key=full,
                        UploadId=upload_id,
                        PartNumber=len(parts) + 1,
                        Body=chunk,
                    )
                    parts.append({"PartNumber": len(parts) + 1, "ETag": resp["ETag"]})
                    del chunk
            resp = self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=full,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **extra,
            )
            return str(resp["ETag"])
        except BaseException as exc:
            # If the abort fails too, a lifecycle rule for incomplete uploads cleans up.
            with contextlib.suppress(ClientError, BotoCoreError):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            if isinstance(exc, ClientError | BotoCoreError):
                self._raise(exc, key)
            raise

    # -- reads ------------------------------------------------------------------------------
    def _get(self, key: str) -> dict[str, Any]:
        try:
            return dict(self.client.get_object(Bucket=self.bucket, Key=self._key(key)))
        except (ClientError, BotoCoreError) as exc:
            self._raise(exc, key)

    def get_bytes(self, key: str, *, sha256: str | None = None) -> bytes:
        resp = self._get(key)
        data = resp["Body"].read()
        actual = sha256_bytes(data)
        verify_sha256(key, sha256, actual, self.uri)
        verify_sha256(key, resp.get("Metadata", {}).get(_SHA_META), actual, self.uri)
        return bytes(data)

    def get_file(self, key: str, path: str | Path, *, sha256: str | None = None) -> ObjectInfo:
        resp = self._get(key)
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f"{RESERVED_PREFIX}tmp-{uuid.uuid4().hex}-{dest.name}"
        digest, size = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as fh:
                for chunk in resp["Body"].iter_chunks(HASH_CHUNK):
                    fh.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
            actual = digest.hexdigest()
            verify_sha256(key, sha256, actual, self.uri)
            verify_sha256(key, resp.get("Metadata", {}).get(_SHA_META), actual, self.uri)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return ObjectInfo(key, size, etag=resp.get("ETag"), sha256=actual)

    def head(self, key: str) -> ObjectInfo:
        try:
            resp = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as exc:
            self._raise(exc, key)
        return ObjectInfo(
            key,
            resp["ContentLength"],
            etag=resp.get("ETag"),
            sha256=resp.get("Metadata", {}).get(_SHA_META),
            last_modified=resp.get("LastModified"),
        )

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
            return True
        except ObjectNotFoundError:
            return False

    def list_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full_prefix = join_key(self.prefix, prefix) + ("/" if prefix.endswith("/") else "")
        if not prefix and self.prefix:
            full_prefix = self.prefix + "/"
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(
                        self._rel(obj["Key"]),
                        obj["Size"],
                        etag=obj.get("ETag"),
                        last_modified=obj.get("LastModified"),
                    )
        except (ClientError, BotoCoreError) as exc:
            self._raise(exc, None)

    def list_dirs(self, prefix: str = "") -> list[str]:
        base = prefix.strip("/")
        full_prefix = join_key(self.prefix, base)
        full_prefix = full_prefix + "/" if full_prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        dirs = []
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix, Delimiter="/"):
                dirs += [self._rel(p["Prefix"]) for p in page.get("CommonPrefixes", [])]
        except (ClientError, BotoCoreError) as exc:
            self._raise(exc, None)
        return sorted(dirs)

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as exc:
            self._raise(exc, key)

    # -- pointers ---------------------------------------------------------------------------
    def read_versioned(self, key: str) -> tuple[bytes, str]:
        resp = self._get(key)
        data = bytes(resp["Body"].read())
        verify_sha256(key, resp.get("Metadata", {}).get(_SHA_META), sha256_bytes(data), self.uri)
        return data, str(resp["ETag"])

    def compare_and_swap(self, key: str, data: bytes, expected_etag: str | None) -> str:
        cond = {"IfNoneMatch": "*"} if expected_etag is None else {"IfMatch": expected_etag}
        try:
            resp = self.client.put_object(
                Bucket=self.bucket,
                Key=self._key(key),
                Body=data,
                Metadata={_SHA_META: sha256_bytes(data)},
                **cond,
            )
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404"):  # If-Match on a key deleted meanwhile
                raise ConflictError(f"{key!r} in {self.uri} was removed since it was read") from exc
            self._raise(exc, key, exists_error=False)
        except BotoCoreError as exc:
            self._raise(exc, key)
        return str(resp["ETag"])
