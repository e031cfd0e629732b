#!/usr/bin/env bash
# The reference trainer's tests: a virtualenv in trainer/.venv (ignored by git) from PyPI, then
# pytest. No GPU and no model download: the tests build a tiny random model from a config.
#
# Installing torch from PyPI: the Linux x86_64 wheel on PyPI is the CUDA build, and its default
# dependencies (CUDA 13 libraries, triton) are about 2.7 GB of wheels. PyPI has no CPU-only
# build for this platform, and torch's libraries link against cudart, cublas, cudnn, nccl, ...
# at import time, so those must be present even on a CPU-only machine. requirements-ci.lock pins
# every package and is installed with --no-deps, which leaves out what the CPU tests never load
# (triton, cusolver, nvrtc, nvtx, cuda-bindings: about 0.5 GB less).
# Measured on the 2-core CI machine kind (2026-11-27): the lock is 2.28 GB of wheels
# (torch alone with its default dependencies: 2.72 GB); a fresh virtualenv with no pip cache
# took 72 s to install (the default resolver install of the same set: 88 s), 3.8 GB on disk.
# The download ran at 60-100 MB/s; pip's cache in ~/.cache/pip makes a re-install faster.
# The whole script from nothing (no venv, no pip cache): 3 min 34 s while a cargo build shared the
# 2 cores. boto3 and its closure (s3:// outputs) add 17 MB of wheels; with pip's cache warm
# the virtualenv installed in 66 s (2026-11-28). The 237 tests (with FLYWHEEL_MOTO_SERVER set,
# so the S3 tests run) took 133 s of wall time, 70 s of CPU, beside another agent's cargo build.
# With the evaluator's tests (tests/test_evaluate.py, two training runs and the evaluator on
# each), 304 tests took 330 s of wall time, 144 s of CPU, at a load average of 5 on the 2 cores
# (2026-11-28).
# The virtualenv is reused while requirements-ci.lock is unchanged.
set -euo pipefail
cd "$(dirname "$0")"

venv=.venv
stamp="$venv/.lock-sha256"
want=$(sha256sum requirements-ci.lock | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  start=$(date +%s)
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --progress-bar off \
    --no-deps -r requirements-ci.lock
  "$venv/bin/python" -c 'import torch, transformers, peft, tokenizers, boto3, pytest'
  echo "$want" >"$stamp"
  echo "trainer venv installed in $(( $(date +%s) - start )) s"
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" -m pytest -p no:cacheprovider -q tests "$@"
