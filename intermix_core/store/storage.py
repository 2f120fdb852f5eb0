"""Datasets and checkpoints on S3 or in a local directory, behind one checksummed interface.

Completion protocol (the same for both backends, see docs/tracking.md):

* Object `key` is written first (S3: one PUT or a multipart upload, which S3 makes visible only
  when complete, with the digest as metadata `sha256`; local: a temporary file, then os.replace).
* Its sidecar `key.sha256` (the hex SHA-256) is written LAST: it is the completion marker.
  An object without its sidecar is an unfinished upload: `exists`, `list` and downloads ignore it.
* `upload_dir` writes `prefix/.intermix-manifest.json` ({relative path: sha256}) after every file;
  `download_dir` requires it, so a half-uploaded directory is never taken for a dataset.
  Exception: a prefix with no intermix marker at all (a raw dataset copied with `aws s3 sync`)
  is "foreign" data: `download_dir` fetches all of its objects, without checksums to verify.
* Uploads hash and send the same open file, so a file replaced meanwhile cannot pair wrongly.
* Downloads go to a temporary local file, are hashed, compared with the sidecar, then renamed.
* Signed markers (optional): with INTERMIX_STORE_KEY set, every marker also carries an HMAC-SHA256
  of the object's key and digest under that key, and reads refuse a marker without a valid one. The
  digest alone catches truncation; the signature catches content (with a recomputed marker) put there
  by anyone who lacks the key, and, since it binds the key too, an object copied from another place
  of the store (another grid's result under this grid's prefix). The key is relative to the store's
  root, so a whole store moved to another path or prefix stays valid; readers open the store at its
  root (intermix_core.store.layout) and never at a sub-prefix.
* Sealed objects (small pointers that several writers replace: LATEST.json, CURRENT, LEASE) are one
  object holding their text, key, digest and signature: a writer replaces one whole (one PUT, one
  os.replace), so concurrent writers never leave one's object beside another's marker.

Credentials are never part of the configuration: boto3 reads them from the standard AWS
environment variables, shared credentials file or profile.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable

from pydantic import BaseModel, ConfigDict, field_validator

try:  # boto3 serves s3:// stores only; a bare GPU machine (scripts/gpu_study.sh) has none and reads local folders
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError, EndpointConnectionError, HTTPClientError, NoCredentialsError
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import PartialCredentialsError
except ImportError:  # S3Storage says so when opened
    boto3 = None

SIDECAR = ".sha256"
MANIFEST = ".intermix-manifest.json"
_TMP_MARK = ".tmp-"
TEMPORARY_MAX_AGE = 600.0  # seconds after which a temporary nobody writes to is a killed writer's leftover
_CHUNK = 1 << 20


class StorageError(RuntimeError):
    """A transfer failed; the message names the URI and what was expected there."""

    def __init__(self, uri: str, reason: str, transient: bool = False, sealed: bool = True) -> None:
        super().__init__(f"{uri}: {reason}")
        self.uri, self.reason = uri, reason
        self.transient = transient  # the store was unreachable or failed on its side: trying again may succeed
        self.sealed = sealed  # False: get_sealed found an object in another format (a pointer of an older version)


SIGNING_KEY_ENV = "INTERMIX_STORE_KEY"  # a secret shared by every writer and reader of one store (docs/tracking.md)
_SIG = "hmac-sha256:"


def _signing_key() -> bytes | None:
    """The store signing key from INTERMIX_STORE_KEY, or None (markers unsigned, reads do not ask for signatures)."""
    value = os.environ.get(SIGNING_KEY_ENV, "")
    return value.encode() if value else None


def _signature(secret: bytes, key: str, sha: str, kind: str = "object") -> str:
    """HMAC-SHA256 of an object's root-relative key and digest under the store key."""
    return hmac.new(secret, f"intermix-{kind}\n{key}\n{sha}".encode(), hashlib.sha256).hexdigest()


def _marker(key: str, sha: str) -> bytes:
    """A completion marker: the object's digest, signed (with its key) when a signing key is set."""
    secret = _signing_key()
    return (sha if secret is None else f"{sha} {_SIG}{_signature(secret, key, sha)}").encode()


SEALED = "intermix-sealed/1"


def _sha256_stream(f: BinaryIO) -> str:
    h = hashlib.sha256()
    while chunk := f.read(_CHUNK):
        h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    with open(path, "rb") as f:
        return _sha256_stream(f)


class StorageConfig(BaseModel):
    """Where data lives: `root` is "s3://bucket/prefix" or a local directory; no credentials here."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    root: str
    endpoint_url: str | None = None  # S3-compatible endpoint (SeaweedFS, MinIO, ...); None: AWS
    region: str | None = None

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("storage root is empty; expected s3://bucket[/prefix] or a local directory")
        if v.startswith("s3://") and not v[5:].split("/", 1)[0]:
            raise ValueError(f"storage root {v!r} has no bucket; expected s3://bucket[/prefix]")
        return v

    @property
    def is_s3(self) -> bool:
        """True for an s3:// root."""
        return self.root.startswith("s3://")

    @classmethod
    def from_env(cls, root: str | None = None) -> "StorageConfig":
        """Read INTERMIX_STORAGE_ROOT, INTERMIX_S3_ENDPOINT_URL (else AWS_ENDPOINT_URL[_S3]) and AWS_REGION."""
        root = root or os.environ.get("INTERMIX_STORAGE_ROOT")
        if not root:
            raise StorageError("$INTERMIX_STORAGE_ROOT", "not set; expected s3://bucket[/prefix] or a local directory")
        endpoint = next(
            (os.environ[k] for k in ("INTERMIX_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
             if os.environ.get(k)),
            None,
        )
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        return cls(root=root, endpoint_url=endpoint, region=region)


@dataclass
class DirTransfer:
    """What `download_dir` did: relative paths fetched and those already present with the right checksum."""

    transferred: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    verified: bool = True  # False for foreign data (no manifest, no markers): nothing to check against


def _clean_key(key: str, *, allow_empty: bool = False) -> str:
    """Normalise a key to `a/b/c`; refuse absolute paths, `..`, reserved names."""
    k = str(key).replace("\\", "/").strip("/")
    parts = [p for p in k.split("/") if p not in ("", ".")]
    if not parts and not allow_empty:
        raise ValueError("empty storage key")
    if ".." in parts:
        raise ValueError(f"storage key {key!r} contains '..'")
    if parts and not allow_empty and (parts[-1].endswith(SIDECAR) or parts[-1] == MANIFEST or _TMP_MARK in parts[-1]):
        raise ValueError(f"storage key {key!r} uses a reserved name (*{SIDECAR}, {MANIFEST}, *{_TMP_MARK}*)")
    return "/".join(parts)


def _join(prefix: str, rel: str) -> str:
    return f"{prefix}/{rel}" if prefix and rel else prefix or rel


def _internal(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return name.endswith(SIDECAR) or name == MANIFEST or _TMP_MARK in name


class Storage(ABC):
    """One interface over S3 and local directories; keys are `/`-separated paths under the root."""

    def __init__(self, root: str, workers: int = 8) -> None:
        self.root = root
        self.workers = workers

    # -- backend primitives -------------------------------------------------------------------
    @abstractmethod
    def uri(self, key: str) -> str:
        """Full URI (s3://...) or absolute local path of `key`."""

    @abstractmethod
    def _put_file(self, src: BinaryIO, key: str, sha: str) -> None: ...

    @abstractmethod
    def _put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def _get_file(self, key: str, local: Path) -> None: ...

    @abstractmethod
    def _get_bytes(self, key: str) -> bytes | None: ...

    @abstractmethod
    def _has(self, key: str) -> bool: ...

    @abstractmethod
    def _list_raw(self, prefix: str) -> list[str]: ...

    @abstractmethod
    def _delete_raw(self, key: str) -> None: ...

    # -- shared logic ---------------------------------------------------------------------------
    def _checksum(self, key: str) -> str | None:
        try:
            data = self._get_bytes(key + SIDECAR)
        except StorageError as err:  # report the object asked for, not its marker
            raise StorageError(self.uri(key), f"{err.reason} (reading its {SIDECAR} marker)") from None
        if data is None:
            return None
        sha, _, signature = data.decode(errors="replace").strip().partition(" ")
        secret = _signing_key()
        if secret is not None and not (signature.startswith(_SIG) and hmac.compare_digest(
                signature.removeprefix(_SIG), _signature(secret, key, sha))):
            raise StorageError(self.uri(key), f"no valid signature on its {SIDECAR} marker ({SIGNING_KEY_ENV} is set, "
                               "so only objects written with that key are trusted); refused")
        return sha

    def checksum(self, key: str) -> str | None:
        """The SHA-256 recorded by the completion marker of object `key`, or None if it is absent or unfinished."""
        return self._checksum(_clean_key(key))

    def _put_complete_bytes(self, key: str, data: bytes) -> None:
        self._delete_raw(key + SIDECAR)
        self._put_bytes(key, data)
        self._put_bytes(key + SIDECAR, _marker(key, hashlib.sha256(data).hexdigest()))

    def upload_file(self, local: str | Path, key: str) -> str:
        """Upload one file; the sidecar checksum is written last. Returns the hex SHA-256."""
        key, local = _clean_key(key), Path(local)
        if not local.is_file():
            raise StorageError(str(local), f"no such file to upload to {self.uri(key)}")
        with open(local, "rb") as src:  # one open file: a writer's os.replace cannot slip in between
            sha = _sha256_stream(src)
            src.seek(0)
            self._delete_raw(key + SIDECAR)  # while rewriting, the key reads as absent, never as stale
            self._put_file(src, key, sha)
        self._put_bytes(key + SIDECAR, _marker(key, sha))
        return sha

    def download_file(self, key: str, local: str | Path) -> Path:
        """Download one complete object, verify its SHA-256, then rename into place (skipped if already equal)."""
        key = _clean_key(key)
        expected = self._checksum(key)
        if expected is None:
            raise StorageError(
                self.uri(key), f"not found or incomplete (expected the object and its {SIDECAR} completion marker)"
            )
        self._fetch(key, Path(local), expected)
        return Path(local)

    def _fetch(self, key: str, local: Path, expected: str | None) -> bool:
        """Fetch `key` to `local` unless it already has `expected` (None: foreign, unverified); True if fetched."""
        if expected is not None and local.is_file() and sha256_file(local) == expected:
            return False
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}{_TMP_MARK}{uuid.uuid4().hex[:8]}")
        try:
            self._get_file(key, tmp)
            actual = sha256_file(tmp) if expected is not None else None
            if actual != expected:
                raise StorageError(
                    self.uri(key), f"checksum mismatch after download (expected sha256 {expected}, got {actual})"
                )
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def upload_dir(self, local_dir: str | Path, prefix: str) -> dict[str, str]:
        """Upload every file under `local_dir` to `prefix/`, then the manifest. Returns {relative path: sha256}."""
        src, prefix = Path(local_dir), _clean_key(prefix, allow_empty=True)
        if not src.is_dir():
            raise StorageError(str(src), f"no such directory to upload to {self.uri(prefix)}")
        files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
        for rel in files:
            _clean_key(rel)  # refuse reserved names before anything is written
        try:  # until the manifest is complete again, a marker-only manifest says "upload in progress"
            self._delete_raw(_join(prefix, MANIFEST) + SIDECAR)
            self._put_bytes(_join(prefix, MANIFEST), b"{}")
        except StorageError as err:
            raise StorageError(self.uri(prefix), err.reason) from None
        shas = self._map(lambda rel: self.upload_file(src / rel, _join(prefix, rel)), files)
        manifest = dict(zip(files, shas))
        self._put_complete_bytes(_join(prefix, MANIFEST), json.dumps(manifest, indent=1, sort_keys=True).encode())
        return manifest

    def manifest(self, prefix: str) -> dict[str, str] | None:
        """The verified manifest of a directory uploaded with `upload_dir`, or None."""
        key = _join(_clean_key(prefix, allow_empty=True), MANIFEST)
        expected = self._checksum(key)
        data = self._get_bytes(key) if expected else None
        if data is None:
            return None
        if hashlib.sha256(data).hexdigest() != expected:
            raise StorageError(self.uri(key), "checksum mismatch (manifest corrupted)")
        return json.loads(data)

    def download_dir(self, prefix: str, local_dir: str | Path) -> DirTransfer:
        """Download a directory written by `upload_dir`, skipping files whose local SHA-256 already matches."""
        prefix, dest = _clean_key(prefix, allow_empty=True), Path(local_dir)
        manifest = self.manifest(prefix)
        if manifest is None:
            return self._download_foreign(prefix, dest)
        report = DirTransfer()
        done = self._map(lambda rel: self._fetch(_join(prefix, rel), dest / rel, manifest[rel]), sorted(manifest))
        for rel, fetched in zip(sorted(manifest), done):
            (report.transferred if fetched else report.skipped).append(rel)
        return report

    def _download_foreign(self, prefix: str, dest: Path) -> DirTransfer:
        """A prefix without manifest: refuse an unfinished upload_dir, fetch data that other tools wrote."""
        raw = [k for k in self._list_raw(prefix) if not k.endswith("/")]
        if any(_internal(k) and _TMP_MARK not in k for k in raw):
            raise StorageError(
                self.uri(prefix), f"incomplete directory upload (expected {MANIFEST}, which upload_dir writes last)"
            )
        if not raw:
            raise StorageError(self.uri(prefix), "nothing there (expected a directory of files)")
        cut = len(prefix) + 1 if prefix else 0
        rels = sorted(k[cut:] for k in raw if _TMP_MARK not in k)
        self._map(lambda rel: self._fetch(_join(prefix, rel), dest / rel, None), rels)
        return DirTransfer(transferred=rels, verified=False)

    def put_sealed(self, key: str, text: str) -> None:
        """Write a small text (a pointer) as one sealed object: text, key, digest and signature in one write."""
        key = _clean_key(key)
        sha = hashlib.sha256(text.encode()).hexdigest()
        body: dict[str, str] = {"format": SEALED, "key": key, "sha256": sha, "text": text}
        secret = _signing_key()
        if secret is not None:
            body["signature"] = _signature(secret, key, sha, kind="sealed")
        self._delete_raw(key + SIDECAR)  # a marker left by an older writer of this key would outrank nothing
        self._put_bytes(key, json.dumps(body, sort_keys=True).encode())

    def get_sealed(self, key: str) -> str | None:
        """The text of a sealed object, or None if absent; StorageError if it is not one, or not for this key."""
        key = _clean_key(key)
        data = self._get_bytes(key)
        if data is None:
            return None
        try:
            body = json.loads(data)
            ok = isinstance(body, dict) and body.get("format") == SEALED and isinstance(body.get("text"), str)
        except ValueError:
            ok = False
        if not ok:
            raise StorageError(self.uri(key), "not a sealed intermix object (expected a pointer written by intermix)",
                               sealed=False)
        text, sha = body["text"], hashlib.sha256(body["text"].encode()).hexdigest()
        if body.get("key") != key or body.get("sha256") != sha:
            raise StorageError(self.uri(key), f"sealed for {body.get('key')!r}, or its digest does not match; refused")
        secret = _signing_key()
        if secret is not None and not hmac.compare_digest(str(body.get("signature", "")),
                                                          _signature(secret, key, sha, kind="sealed")):
            raise StorageError(self.uri(key), f"no valid signature ({SIGNING_KEY_ENV} is set, so only objects written "
                               "with that key are trusted); refused")
        return text

    def exists(self, key: str) -> bool:
        """True for a complete object, or a complete directory (its manifest is present)."""
        key = _clean_key(key, allow_empty=True)
        if key and not _internal(key) and self._checksum(key) is not None and self._has(key):
            return True
        return self._checksum(_join(key, MANIFEST)) is not None

    def list(self, prefix: str = "") -> list[str]:
        """Complete object keys under the directory `prefix` (sorted, root-relative, no sidecars or manifests)."""
        prefix = _clean_key(prefix, allow_empty=True)
        raw = set(self._list_raw(prefix))
        return sorted(k for k in raw if not _internal(k) and k + SIDECAR in raw)

    def _age(self, key: str) -> float | None:
        """Seconds since the raw object `key` was last written, by the store's own clock; None if unknown."""
        return None

    def remove_temporaries(self, prefix: str, older_than: float = TEMPORARY_MAX_AGE) -> list[str]:
        """Remove the partial files a writer killed mid-upload left under `prefix` (untouched for `older_than` s).

        Call it holding the claim on `prefix` (the fold lock); a temporary still being written is
        younger than `older_than` and stays. S3 uploads are single requests and leave none.
        """
        removed = []
        for key in self._list_raw(_clean_key(prefix, allow_empty=True)):
            if _TMP_MARK in key.rsplit("/", 1)[-1] and (age := self._age(key)) is not None and age > older_than:
                self._delete_raw(key)
                removed.append(key)
        return removed

    def delete(self, key: str) -> None:
        """Delete an object (marker first), or every object of a directory (manifest first)."""
        key = _clean_key(key)  # never the whole root
        if self._has(key) or self._checksum(key) is not None:
            self._delete_raw(key + SIDECAR)
            self._delete_raw(key)
            return
        self._delete_raw(_join(key, MANIFEST) + SIDECAR)
        for k in sorted(self._list_raw(key), key=lambda k: not k.endswith(SIDECAR)):
            self._delete_raw(k)

    def _map(self, fn: Any, items: Iterable[Any]) -> list[Any]:
        items = list(items)
        if len(items) <= 1 or self.workers <= 1:
            return [fn(i) for i in items]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(fn, items))


class LocalStorage(Storage):
    """A local (or mounted) directory; writes go through a temporary file and os.replace."""

    def __init__(self, root: str | Path, workers: int = 4) -> None:
        path = Path(str(root).removeprefix("file://")).expanduser().absolute()
        super().__init__(str(path), workers)
        self.path = path

    def uri(self, key: str) -> str:
        """Absolute local path of `key`."""
        return str(self.path / key) if key else str(self.path)

    def _write_atomic(self, key: str, writer: Any) -> None:
        dest = self.path / key
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}{_TMP_MARK}{uuid.uuid4().hex[:8]}")
            try:
                writer(tmp)
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as err:
            reason = f"cannot write ({err.strerror or err}); expected a writable directory"
            raise StorageError(self.uri(key), reason) from None

    def _put_file(self, src: BinaryIO, key: str, sha: str) -> None:
        def copy(tmp: Path) -> None:
            with open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)

        self._write_atomic(key, copy)

    def _put_bytes(self, key: str, data: bytes) -> None:
        self._write_atomic(key, lambda tmp: tmp.write_bytes(data))

    def _get_file(self, key: str, local: Path) -> None:
        try:
            shutil.copyfile(self.path / key, local)
        except OSError as err:
            raise StorageError(self.uri(key), f"cannot read ({err.strerror or err})") from None

    def _get_bytes(self, key: str) -> bytes | None:
        try:
            return (self.path / key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except OSError as err:
            raise StorageError(self.uri(key), f"cannot read ({err.strerror or err})") from None

    def _has(self, key: str) -> bool:
        return (self.path / key).is_file()

    def _age(self, key: str) -> float | None:
        try:
            return time.time() - (self.path / key).stat().st_mtime  # the same filesystem's clock wrote the mtime
        except OSError:
            return None

    def _list_raw(self, prefix: str) -> list[str]:
        base = self.path / prefix if prefix else self.path
        if not base.is_dir():
            return []
        return [p.relative_to(self.path).as_posix() for p in base.rglob("*") if p.is_file()]

    def _delete_raw(self, key: str) -> None:
        try:
            (self.path / key).unlink(missing_ok=True)
        except IsADirectoryError:
            pass
        except OSError as err:
            raise StorageError(self.uri(key), f"cannot delete ({err.strerror or err})") from None


class S3Storage(Storage):
    """An S3 (or S3-compatible) bucket and prefix; credentials come from boto3's standard chain."""

    def __init__(self, config: StorageConfig, workers: int = 8) -> None:
        super().__init__(config.root.rstrip("/"), workers)
        self.bucket, _, prefix = config.root[5:].partition("/")
        self.prefix = prefix.strip("/")
        self.endpoint_url = config.endpoint_url
        if boto3 is None:
            raise StorageError(config.root, "s3:// stores need boto3, which this Python lacks (pip install boto3)")
        boto_cfg = Config(
            s3={"addressing_style": "path"} if config.endpoint_url else {},
            retries={"max_attempts": 4, "mode": "standard"},
            connect_timeout=10,
            read_timeout=120,
            max_pool_connections=max(10, workers * 2),
        )
        session = boto3.session.Session(region_name=config.region or None)
        self.client = session.client("s3", endpoint_url=config.endpoint_url, config=boto_cfg)

    def uri(self, key: str) -> str:
        """s3://bucket/prefix/key."""
        return f"s3://{self.bucket}/{self._full(key)}".rstrip("/")

    def _full(self, key: str) -> str:
        return _join(self.prefix, key)

    def _error(self, err: Exception, key: str, action: str) -> StorageError:
        """Translate a boto error into a StorageError naming the URI and what was expected."""
        uri, where = self.uri(key), f" at {self.endpoint_url}" if self.endpoint_url else ""
        wrapped = not isinstance(err, ClientError) and isinstance(err.__context__, ClientError)
        cause = err.__context__ if wrapped else err  # boto3 wraps upload errors in S3UploadFailedError
        if isinstance(cause, ClientError):
            code = str(cause.response.get("Error", {}).get("Code", ""))
            status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                return StorageError(uri, f"bucket {self.bucket!r} does not exist{where} (expected an existing bucket)")
            if status == 403 or code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"):
                return StorageError(
                    uri, f"access denied while {action} ({code or status}); expected credentials allowed on bucket "
                    f"{self.bucket!r}: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE",
                )
            if code in ("NoSuchKey", "404") or status == 404:
                return StorageError(uri, f"no such object while {action} (expected it to exist)")
            return StorageError(uri, f"S3 error while {action}: {code} {cause}",
                                transient=isinstance(status, int) and status >= 500)
        if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
            return StorageError(
                uri, f"no AWS credentials found while {action}; "
                "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE",
            )
        if isinstance(err, EndpointConnectionError):
            return StorageError(uri, f"cannot reach the S3 endpoint{where} while {action} ({err})", transient=True)
        if any(isinstance(e, (BotoConnectionError, HTTPClientError)) for e in (err, err.__context__)):
            return StorageError(uri, f"connection to the S3 endpoint{where} lost while {action} ({err})", transient=True)
        return StorageError(uri, f"{action} failed: {err}")

    def _call(self, key: str, action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except StorageError:
            raise
        except Exception as err:  # boto raises many unrelated types; all become StorageError
            raise self._error(err, key, action) from None

    def _put_file(self, src: BinaryIO, key: str, sha: str) -> None:
        self._call(key, "uploading", self.client.upload_fileobj, src, self.bucket, self._full(key),
                   ExtraArgs={"Metadata": {"sha256": sha}})

    def _put_bytes(self, key: str, data: bytes) -> None:
        self._call(key, "uploading", self.client.put_object, Bucket=self.bucket, Key=self._full(key), Body=data,
                   Metadata={"sha256": hashlib.sha256(data).hexdigest()})

    def _get_file(self, key: str, local: Path) -> None:
        self._call(key, "downloading", self.client.download_file, self.bucket, self._full(key), str(local))

    def _missing(self, err: Exception) -> bool:
        return isinstance(err, ClientError) and (
            err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404")
        )

    def _get_bytes(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"].read()
        except Exception as err:
            if self._missing(err):
                return None
            raise self._error(err, key, "reading") from None

    def _has(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._full(key))
            return True
        except Exception as err:
            if self._missing(err):
                return False
            raise self._error(err, key, "checking") from None

    def _list_raw(self, prefix: str) -> list[str]:
        full = self._full(prefix)
        full = full + "/" if full else ""
        keys: list[str] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full)
        try:
            for page in pages:
                keys.extend(o["Key"] for o in page.get("Contents", []))
        except Exception as err:
            raise self._error(err, prefix, "listing") from None
        cut = len(self.prefix) + 1 if self.prefix else 0
        return [k[cut:] for k in keys]

    def _delete_raw(self, key: str) -> None:
        self._call(key, "deleting", self.client.delete_object, Bucket=self.bucket, Key=self._full(key))


def open_storage(root_or_config: str | Path | StorageConfig, workers: int | None = None) -> Storage:
    """A Storage for "s3://bucket/prefix" (endpoint from the environment), a local directory, or a StorageConfig."""
    if isinstance(root_or_config, StorageConfig):
        cfg = root_or_config
    elif str(root_or_config).startswith("s3://"):
        cfg = StorageConfig.from_env(str(root_or_config))
    else:
        cfg = StorageConfig(root=str(root_or_config))
    if cfg.is_s3:
        return S3Storage(cfg, workers or 8)
    return LocalStorage(cfg.root, workers or 4)
