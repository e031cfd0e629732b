"""Flywheel's reference trainer: LoRA fine-tuning (SFT and DPO) from a feedback dataset snapshot.

It implements the trainer contract in docs/trainer-contract.md: configuration from ``FLYWHEEL_*``
environment variables, a dataset snapshot verified against its sha256, one JSON result line on
the termination log, and exit codes 0, 3 (bad configuration) and 75 (transient failure).
``python -m flywheel_trainer.evaluate`` is the contract's evaluation Job: it compares a trained
candidate with its base on the snapshot's held-out rows.
"""

__version__ = "0.1.0"
