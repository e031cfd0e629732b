"""The trainer contract's environment, parsed into a typed :class:`Config` (the trainer's) or
:class:`EvalConfig` (the evaluation Job's); both read the dataset and base model variables with
the same functions.

Every problem is a :class:`~flywheel_trainer.errors.ConfigError` (exit 3) whose message names the
variable and says what is wrong with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import unquote, urlsplit

from .errors import ConfigError
from .hyperparameters import EVALUATION_NAMES, Hyperparameters, hyperparameters_from_env

VERSION_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
# Any version label the operator accepts (a Kubernetes label value, upper case included); the
# reference trainer writes only VERSION_RE's lower-case ones.
LABEL_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
FORMATS = ("SFT", "DPO")
# What a result's artifact (and an evaluation's candidate) is: a whole model, or a PEFT adapter.
ARTIFACTS = ("model", "adapter")


TOKEN_FILE_VAR = "FLYWHEEL_DATASET_TOKEN_FILE"
# RFC 6750's b64token is narrower; this only keeps out what cannot go in a header (spaces,
# control characters, non-ASCII), so a token is never echoed back by http.client's header check.
TOKEN_RE = re.compile(r"^[\x21-\x7e]+$")


@dataclass(frozen=True)
class DatasetLocation:
    """Where the snapshot is: a local directory or an http:// or https:// base URL.

    ``token`` is the bearer token for HTTP(S) fetches (read from ``token_file``); it is left out
    of ``repr`` and of :meth:`describe`, so it never reaches a log line or an error message.
    """

    uri: str
    local_dir: Path | None = None
    http_base: str | None = None
    token_file: Path | None = None
    token: str | None = field(default=None, repr=False, compare=False)

    def describe(self) -> str:
        if self.local_dir is not None:
            return str(self.local_dir)
        where = str(self.http_base)
        if self.token is not None:
            where += f" (bearer token from {TOKEN_FILE_VAR}={self.token_file})"
        return where


OUTPUT_DIR_VAR = "FLYWHEEL_OUTPUT_DIR"
OUTPUT_URI_VAR = "FLYWHEEL_OUTPUT_URI"
OUTPUT_SCHEMES = "pvc://<claim>/<path>, s3://<bucket>/<prefix>, or file:///<path> without FLYWHEEL_OUTPUT_DIR"
# A PersistentVolumeClaim's name is a DNS-1123 subdomain.
CLAIM_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
# S3's bucket naming rules (which S3-compatible stores share): 3 to 63 characters, lower-case
# letters, digits, '.' and '-', starting and ending with a letter or digit.
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class S3Target:
    """Where an ``s3://bucket/prefix`` output goes: each file at ``<prefix>/<relative path>``."""

    uri: str
    bucket: str
    prefix: str  # without leading or trailing '/'; "" is the bucket's root

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative


@dataclass(frozen=True)
class Config:
    dataset: DatasetLocation
    dataset_sha256: str
    formats: tuple[str, ...]
    base_model_dir: Path
    base_version: str | None
    output_uri: str  # where serving loads the model from; the result's uri
    output_dir: Path  # where the trainer writes it
    output_s3: S3Target | None  # set for an s3:// output: the directory is uploaded there
    version: str
    hyperparameters: Hyperparameters
    raw_hyperparameters: dict[str, str]
    checkpoint_dir: Path | None
    retrain_job: str | None
    namespace: str | None
    attempt: int
    termination_log: Path


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if not value.strip():
        raise ConfigError(f"{name} is not set")
    return value.strip()


def _optional(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def local_path(name: str, uri: str) -> Path:
    """A ``file://`` URI or a plain path as a local path; any other scheme is a ConfigError."""
    if uri.startswith("file://"):
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"{name}={uri!r}: a file:// URI must not name a host (use file:///path)")
        path = unquote(parts.path)
        if not path:
            raise ConfigError(f"{name}={uri!r}: the file:// URI has no path")
        return Path(path)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", uri):
        scheme = uri.split("://", 1)[0]
        raise ConfigError(
            f"{name}={uri!r}: unsupported URI scheme {scheme}:// (the reference trainer reads file:// "
            "or a plain path; the operator mounts pvc:// and fetches remote models before the trainer starts)"
        )
    return Path(uri)


def read_token_file(raw: str) -> tuple[Path, str]:
    """The bearer token in ``FLYWHEEL_DATASET_TOKEN_FILE``, surrounding whitespace stripped.

    Every problem is a ConfigError naming the variable and the path; none quotes the file's
    contents.
    """
    path = local_path(TOKEN_FILE_VAR, raw)
    where = f"{TOKEN_FILE_VAR}={raw!r}"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{where}: {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{where}: {path} is a directory, not a file") from None
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {path}: {e.strerror or type(e).__name__}") from None
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {path} is not an ASCII bearer token") from None
    if not token:
        raise ConfigError(f"{where}: {path} is empty (it must hold the bearer token)")
    if not TOKEN_RE.match(token):
        raise ConfigError(
            f"{where}: {path} does not hold a single bearer token (it has spaces or control characters)"
        )
    return path, token


def _dataset_location(uri: str, token_file: str | None) -> DatasetLocation:
    for scheme in ("https", "http"):
        if uri.startswith(f"{scheme}://"):
            parts = urlsplit(uri)
            if not parts.netloc:
                raise ConfigError(f"FLYWHEEL_DATASET_URI={uri!r}: the {scheme}:// URL has no host")
            if parts.query or parts.fragment:
                raise ConfigError(f"FLYWHEEL_DATASET_URI={uri!r}: the URL must not have a query or fragment")
            if token_file is None:
                return DatasetLocation(uri=uri, http_base=uri.rstrip("/"))
            path, token = read_token_file(token_file)
            return DatasetLocation(uri=uri, http_base=uri.rstrip("/"), token_file=path, token=token)
    # A local snapshot needs no token: FLYWHEEL_DATASET_TOKEN_FILE is allowed and not read.
    return DatasetLocation(uri=uri, local_dir=local_path("FLYWHEEL_DATASET_URI", uri))


def _no_query(uri: str, parts) -> None:
    if parts.query or parts.fragment:
        raise ConfigError(f"{OUTPUT_URI_VAR}={uri!r}: the URI must not have a query or fragment")


def _relative_path(uri: str, path: str) -> str:
    """The path of a pvc:// or s3:// URI, without the slashes around it; no '.' or '..' parts."""
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ConfigError(f"{OUTPUT_URI_VAR}={uri!r}: the path must not have '.' or '..' parts")
    return "/".join(parts)


def _output(env: Mapping[str, str]) -> tuple[str, Path, S3Target | None]:
    """FLYWHEEL_OUTPUT_URI (where serving loads the model) and FLYWHEEL_OUTPUT_DIR (where the
    trainer writes it): the URI, the local directory, and the S3 target for an s3:// URI."""
    uri = _required(env, OUTPUT_URI_VAR)
    raw_dir = _optional(env, OUTPUT_DIR_VAR)
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", uri)
    if match is None:
        raise ConfigError(
            f"{OUTPUT_URI_VAR}={uri!r} is a local path, and serving cannot load a path of the trainer's pod: "
            f"{OUTPUT_URI_VAR} is where serving loads the model from ({OUTPUT_SCHEMES}) and "
            f"{OUTPUT_DIR_VAR} the local directory the trainer writes it to"
        )
    scheme = match.group(1).lower()
    s3: S3Target | None = None
    if scheme == "file":
        if raw_dir is not None:
            raise ConfigError(
                f"{OUTPUT_URI_VAR}={uri!r} with {OUTPUT_DIR_VAR}={raw_dir!r}: a file:// output is written where it "
                f"points; set {OUTPUT_DIR_VAR} only with a pvc:// or s3:// {OUTPUT_URI_VAR}"
            )
        directory = local_path(OUTPUT_URI_VAR, uri)
        where = f"{OUTPUT_URI_VAR}={uri!r}"
    elif scheme in ("pvc", "s3"):
        parts = urlsplit(uri)
        _no_query(uri, parts)
        path = _relative_path(uri, unquote(parts.path))
        if scheme == "pvc":
            if not CLAIM_RE.match(parts.netloc):
                raise ConfigError(
                    f"{OUTPUT_URI_VAR}={uri!r}: {parts.netloc!r} is not a PersistentVolumeClaim name (pvc://<claim>/<path>)"
                )
        else:
            if not BUCKET_RE.match(parts.netloc):
                raise ConfigError(
                    f"{OUTPUT_URI_VAR}={uri!r}: {parts.netloc!r} is not a bucket name "
                    "(s3://<bucket>/<prefix>; 3 to 63 lower-case letters, digits, '.' and '-')"
                )
            s3 = S3Target(uri=uri, bucket=parts.netloc, prefix=path)
        if raw_dir is None:
            raise ConfigError(
                f"{OUTPUT_DIR_VAR} is not set (with {OUTPUT_URI_VAR}={uri!r} it must name the local directory "
                "the trainer writes the model to)"
            )
        directory = local_path(OUTPUT_DIR_VAR, raw_dir)
        where = f"{OUTPUT_DIR_VAR}={raw_dir!r}"
    else:
        hint = ""
        if scheme == "gs":
            hint = (
                "; for Google Cloud Storage use s3://<bucket>/<prefix> with its S3-compatible XML API: "
                "HMAC keys as AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL=https://storage.googleapis.com"
            )
        raise ConfigError(
            f"{OUTPUT_URI_VAR}={uri!r}: unsupported URI scheme {scheme}:// (supported: {OUTPUT_SCHEMES}){hint}"
        )
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{where}: {directory} exists and is not a directory")
    return uri, directory, s3


def _formats(raw: str) -> tuple[str, ...]:
    parts = [p.strip().upper() for p in raw.split(",") if p.strip()]
    if not parts:
        raise ConfigError("FLYWHEEL_DATASET_FORMATS is empty (expected SFT, DPO or SFT,DPO)")
    for p in parts:
        if p not in FORMATS:
            raise ConfigError(f"FLYWHEEL_DATASET_FORMATS={raw!r}: unknown format {p!r} (expected SFT, DPO or SFT,DPO)")
    if len(set(parts)) != len(parts):
        raise ConfigError(f"FLYWHEEL_DATASET_FORMATS={raw!r} names a format twice")
    return tuple(f for f in FORMATS if f in parts)


def default_version(base_version: str, dataset_sha256: str) -> str:
    """The reference trainer's version label: ``<base version>-ft-<first 8 hex of the sha256>``."""
    return f"{base_version}-ft-{dataset_sha256[:8]}"


def _dataset_env(env: Mapping[str, str]) -> tuple[DatasetLocation, str, tuple[str, ...]]:
    """The dataset variables, the same for the trainer and the evaluator: where the snapshot is
    (and its bearer token), its sha256, and the formats to use."""
    dataset = _dataset_location(_required(env, "FLYWHEEL_DATASET_URI"), _optional(env, TOKEN_FILE_VAR))

    sha = _required(env, "FLYWHEEL_DATASET_SHA256").lower()
    if not SHA256_RE.match(sha):
        raise ConfigError(f"FLYWHEEL_DATASET_SHA256={sha!r} is not 64 hexadecimal digits")

    formats = _formats(_required(env, "FLYWHEEL_DATASET_FORMATS"))
    return dataset, sha, formats


def _base_model_dir(env: Mapping[str, str]) -> Path:
    """FLYWHEEL_BASE_MODEL_URI: a local directory in Hugging Face layout."""
    base_uri = _required(env, "FLYWHEEL_BASE_MODEL_URI")
    base_dir = local_path("FLYWHEEL_BASE_MODEL_URI", base_uri)
    if not base_dir.is_dir():
        raise ConfigError(f"FLYWHEEL_BASE_MODEL_URI={base_uri!r}: {base_dir} is not a directory")
    if not (base_dir / "config.json").is_file():
        raise ConfigError(
            f"FLYWHEEL_BASE_MODEL_URI={base_uri!r}: {base_dir} has no config.json (expected a Hugging Face model directory)"
        )
    return base_dir


def _termination_log(env: Mapping[str, str]) -> Path:
    return Path(_optional(env, "FLYWHEEL_TERMINATION_LOG") or DEFAULT_TERMINATION_LOG)


def parse_env(env: Mapping[str, str]) -> Config:
    """Parse and check the whole contract environment; raise ConfigError on the first problem."""
    dataset, sha, formats = _dataset_env(env)
    base_dir = _base_model_dir(env)

    output_uri, output_dir, output_s3 = _output(env)

    base_version = _optional(env, "FLYWHEEL_BASE_VERSION")
    version = _optional(env, "FLYWHEEL_VERSION")
    if version is None:
        if base_version is None:
            raise ConfigError("FLYWHEEL_BASE_VERSION is not set (it is needed when FLYWHEEL_VERSION is unset)")
        version = default_version(base_version, sha)
        source = f"<FLYWHEEL_BASE_VERSION>-ft-<sha256 prefix> = {version!r}"
    else:
        source = f"FLYWHEEL_VERSION={version!r}"
    if not VERSION_RE.match(version):
        raise ConfigError(
            f"version {source} is not a valid version label "
            "(lower-case letters, digits, '.', '_', '-', starting and ending alphanumeric, at most 63 characters)"
        )

    hyperparameters, raw_hps = hyperparameters_from_env(env)

    checkpoint = _optional(env, "FLYWHEEL_CHECKPOINT_DIR")
    checkpoint_dir = local_path("FLYWHEEL_CHECKPOINT_DIR", checkpoint) if checkpoint else None
    if checkpoint_dir is not None and checkpoint_dir.exists() and not checkpoint_dir.is_dir():
        raise ConfigError(f"FLYWHEEL_CHECKPOINT_DIR={checkpoint!r} exists and is not a directory")

    attempt_raw = _optional(env, "FLYWHEEL_ATTEMPT")
    attempt = 1
    if attempt_raw is not None:
        if not attempt_raw.isdigit() or int(attempt_raw) < 1:
            raise ConfigError(f"FLYWHEEL_ATTEMPT={attempt_raw!r} is not a positive integer")
        attempt = int(attempt_raw)

    termination_log = _termination_log(env)

    return Config(
        dataset=dataset,
        dataset_sha256=sha,
        formats=formats,
        base_model_dir=base_dir,
        base_version=base_version,
        output_uri=output_uri,
        output_dir=output_dir,
        output_s3=output_s3,
        version=version,
        hyperparameters=hyperparameters,
        raw_hyperparameters=raw_hps,
        checkpoint_dir=checkpoint_dir,
        retrain_job=_optional(env, "FLYWHEEL_RETRAINJOB"),
        namespace=_optional(env, "FLYWHEEL_NAMESPACE"),
        attempt=attempt,
        termination_log=termination_log,
    )


# ---------------------------------------------------------------------------------------------
# The evaluation Job: ``python -m flywheel_trainer.evaluate``

CANDIDATE_DIR_VAR = "FLYWHEEL_CANDIDATE_DIR"
CANDIDATE_ARTIFACT_VAR = "FLYWHEEL_CANDIDATE_ARTIFACT"
CANDIDATE_VERSION_VAR = "FLYWHEEL_CANDIDATE_VERSION"
# What each artifact has at its top level: the file the evaluator checks before loading it.
ARTIFACT_MARKERS = {"model": "config.json", "adapter": "adapter_config.json"}


@dataclass(frozen=True)
class EvalConfig:
    """The evaluation Job's environment: the snapshot, the base, the candidate to compare with
    it, and the few hyperparameters an evaluation takes (``EVALUATION_NAMES``; the others keep
    their defaults and are not used)."""

    dataset: DatasetLocation
    dataset_sha256: str
    formats: tuple[str, ...]
    base_model_dir: Path
    base_version: str
    candidate_dir: Path
    candidate_artifact: str  # "model" or "adapter"
    candidate_version: str
    hyperparameters: Hyperparameters
    raw_hyperparameters: dict[str, str]
    termination_log: Path


def _label(env: Mapping[str, str], name: str) -> str:
    value = _required(env, name)
    if not LABEL_RE.match(value):
        raise ConfigError(
            f"{name}={value!r} is not a version label "
            "(1 to 63 letters, digits, '.', '_', '-', starting and ending with a letter or digit)"
        )
    return value


def _candidate(env: Mapping[str, str]) -> tuple[Path, str]:
    """FLYWHEEL_CANDIDATE_DIR and FLYWHEEL_CANDIDATE_ARTIFACT: a local directory holding what
    the artifact says (a whole model: config.json; a PEFT adapter: adapter_config.json)."""
    artifact = _required(env, CANDIDATE_ARTIFACT_VAR)
    if artifact not in ARTIFACTS:
        raise ConfigError(f"{CANDIDATE_ARTIFACT_VAR}={artifact!r} must be one of {', '.join(ARTIFACTS)}")
    raw = _required(env, CANDIDATE_DIR_VAR)
    directory = local_path(CANDIDATE_DIR_VAR, raw)
    where = f"{CANDIDATE_DIR_VAR}={raw!r}"
    if not directory.is_dir():
        raise ConfigError(f"{where}: {directory} is not a directory")
    marker = ARTIFACT_MARKERS[artifact]
    if not (directory / marker).is_file():
        holds = next((a for a, m in ARTIFACT_MARKERS.items() if a != artifact and (directory / m).is_file()), None)
        hint = f"; it holds {'a whole model' if holds == 'model' else 'an adapter'}: is {CANDIDATE_ARTIFACT_VAR} {holds}?" if holds else ""
        what = "a whole model in Hugging Face layout" if artifact == "model" else "a PEFT adapter"
        raise ConfigError(
            f"{where} with {CANDIDATE_ARTIFACT_VAR}={artifact}: {directory} has no {marker} (expected {what}){hint}"
        )
    if artifact == "model" and (directory / ARTIFACT_MARKERS["adapter"]).exists():
        # transformers would load it as the model with that adapter applied: not a whole model.
        raise ConfigError(
            f"{where} with {CANDIDATE_ARTIFACT_VAR}=model: {directory} has an adapter_config.json beside config.json, "
            "so it is not a whole model (transformers would apply that adapter to it); a merged model keeps its "
            "adapter in a subdirectory (the reference trainer's adapter/)"
        )
    return directory, artifact


def parse_eval_env(env: Mapping[str, str]) -> EvalConfig:
    """Parse and check the evaluation Job's environment; raise ConfigError on the first problem.

    The dataset and base model variables are read as for training (the same checks, the same
    messages); ``FLYWHEEL_HYPERPARAMETERS`` / ``FLYWHEEL_HP_*`` may name only
    ``EVALUATION_NAMES``."""
    dataset, sha, formats = _dataset_env(env)
    base_dir = _base_model_dir(env)
    base_version = _label(env, "FLYWHEEL_BASE_VERSION")
    candidate_dir, artifact = _candidate(env)
    candidate_version = _label(env, CANDIDATE_VERSION_VAR)
    hyperparameters, raw_hps = hyperparameters_from_env(env, EVALUATION_NAMES)
    return EvalConfig(
        dataset=dataset,
        dataset_sha256=sha,
        formats=formats,
        base_model_dir=base_dir,
        base_version=base_version,
        candidate_dir=candidate_dir,
        candidate_artifact=artifact,
        candidate_version=candidate_version,
        hyperparameters=hyperparameters,
        raw_hyperparameters=raw_hps,
        termination_log=_termination_log(env),
    )
