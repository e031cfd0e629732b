"""An ``s3://bucket/prefix`` output: the model directory is uploaded with boto3 after it is written.

Credentials, region and endpoint come from boto3's standard chain (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, a web identity such as IRSA,
instance metadata; ``AWS_REGION``; ``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_S3`` for an
S3-compatible store). Nothing here logs or quotes a credential: messages name the URI, the
S3 error code and the server's message, never a key.

Failures map onto the contract's exit codes: a missing bucket, refused or missing credentials
and other 4xx answers are a :class:`ConfigError` (3); throttling, 5xx answers, connection
errors and timeouts are a :class:`TransientError` (75).
"""

from __future__ import annotations

import logging
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .contract import S3Target
from .errors import ConfigError, TrainerError, TransientError

log = logging.getLogger("flywheel_trainer")

# Error codes S3 (and S3-compatible stores) answer when a retry later may succeed.
TRANSIENT_CODES = frozenset(
    {
        "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
        "RequestThrottled", "RequestTimeout", "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable",
        "OperationAborted",
    }
)
HINTS = {
    "NoSuchBucket": "the bucket does not exist",
    "404": "the bucket does not exist",
    "AccessDenied": "the credentials may not write there",
    "403": "the credentials may not use the bucket",
    "InvalidAccessKeyId": "the access key is not known to the store",
    "SignatureDoesNotMatch": "the secret key does not match the access key",
    "ExpiredToken": "the session token has expired",
    "InvalidToken": "the session token is not valid",
}
NO_CREDENTIALS = (
    "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (from a Secret), "
    "AWS_PROFILE, or a web identity (IRSA: AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE), "
    "or run where instance metadata provides a role"
)


@dataclass(frozen=True)
class Uploaded:
    files: int
    bytes: int
    seconds: float


def _redact(text: str) -> str:
    """Drop a URL's user information (``scheme://user:secret@host``) from a message."""
    return re.sub(r"(?<=://)[^/@\s\"']+@", "***@", text)


def classify(error: BaseException, doing: str) -> TrainerError | None:
    """The contract's error for a boto3 failure while ``doing`` something (which names the URI),
    or None when the failure is not one boto3 reports (the caller re-raises it)."""
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        CredentialRetrievalError,
        HTTPClientError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
        ProfileNotFound,
        SSOError,
        TokenRetrievalError,
    )

    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        code = str(details.get("Code") or "unknown")
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = _redact(str(details.get("Message") or HINTS.get(code, "no message")))[:300]
        what = f"{doing}: {code} (HTTP {status or '?'}): {message}"
        if code in HINTS and HINTS[code] not in message:
            what += f" ({HINTS[code]})"
        if status >= 500 or status in (408, 429) or code in TRANSIENT_CODES:
            return TransientError(what)
        return ConfigError(what)
    if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
        return ConfigError(f"{doing}: {NO_CREDENTIALS} ({type(error).__name__})")
    if isinstance(error, (ProfileNotFound, NoRegionError, SSOError, TokenRetrievalError)):
        return ConfigError(f"{doing}: {_redact(str(error))}")
    if isinstance(error, (ConnectionError, HTTPClientError, CredentialRetrievalError)):
        return TransientError(f"{doing}: {type(error).__name__}: {_redact(str(error))}")
    return None


def make_client() -> Any:
    """An S3 client from the environment (boto3's standard credential chain and settings)."""
    import boto3
    from botocore.exceptions import BotoCoreError

    try:
        return boto3.session.Session().client("s3")
    except ValueError as e:  # botocore's check of an endpoint URL
        raise ConfigError(f"the S3 endpoint from AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 is not usable: {_redact(str(e))}") from None
    except BotoCoreError as e:
        mapped = classify(e, "creating the S3 client")
        if mapped is None:
            raise
        raise mapped from None


def check_bucket(target: S3Target, client: Any = None) -> None:
    """Before training: the credentials resolve, the store answers and the bucket exists.

    A 403 on HeadBucket is not an error here (a credential may be allowed to write objects
    and not to read the bucket); the upload then tells."""
    from botocore.exceptions import ClientError

    client = client or make_client()
    try:
        client.head_bucket(Bucket=target.bucket)
    except ClientError as e:
        status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if status == 403:
            log.warning("cannot check the bucket of %s (HeadBucket: 403); the upload will tell whether it may write", target.uri)
            return
        mapped = classify(e, f"checking the bucket of FLYWHEEL_OUTPUT_URI={target.uri}")
        raise (mapped or e) from None
    except Exception as e:
        mapped = classify(e, f"checking the bucket of FLYWHEEL_OUTPUT_URI={target.uri}")
        if mapped is None:
            raise
        raise mapped from None
    log.info("output %s: bucket %s is reachable", target.uri, target.bucket)


def regular_files(directory: Path) -> list[tuple[Path, str]]:
    """Every regular file under ``directory`` (symlinks not followed), with its relative path
    ('/'-separated), sorted by that path."""
    found: list[tuple[Path, str]] = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in files:
            path = Path(root) / name
            if stat.S_ISREG(path.lstat().st_mode):
                found.append((path, path.relative_to(directory).as_posix()))
    return sorted(found, key=lambda item: item[1])


def upload_directory(directory: Path, target: S3Target, client: Any = None) -> Uploaded:
    """Upload every regular file under ``directory`` to ``<prefix>/<relative path>`` with boto3's
    managed transfer (multipart for files over its threshold, several files at once)."""
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    started = time.perf_counter()
    files = regular_files(directory)
    total = sum(path.stat().st_size for path, _ in files)
    client = client or make_client()
    log.info("uploading %d files (%d bytes) from %s to %s", len(files), total, directory, target.uri)
    current = ""
    try:
        with create_transfer_manager(client, TransferConfig()) as manager:
            pending = [(relative, manager.upload(str(path), target.bucket, target.key(relative))) for path, relative in files]
            for relative, future in pending:
                current = relative
                future.result()
    except Exception as e:
        mapped = classify(e, f"uploading {current or 'the model'} to FLYWHEEL_OUTPUT_URI={target.uri}")
        if mapped is None:
            raise
        raise mapped from None
    done = Uploaded(files=len(files), bytes=total, seconds=time.perf_counter() - started)
    log.info("uploaded %d files (%d bytes) to %s in %.1f s", done.files, done.bytes, target.uri, done.seconds)
    return done
