"""Compression inside the training loops people already run, one small module each.

* :mod:`compressor.integrations.hf_trainer` — Hugging Face ``Trainer``: ``CompressorTrainer``
  (or ``CompressorTrainerMixin`` for a Trainer subclass of your own) runs every recipe,
  SAM and CrAM included, with gradient accumulation and mixed precision;
  ``CompressorCallback`` adds single-pass recipes to an unchanged ``Trainer``.
* :mod:`compressor.integrations.lightning` — Lightning: ``CompressorCallback`` provides the
  optimizer, steps the session and keeps it in Lightning checkpoints; ``manual_step`` runs
  SAM/CrAM over all accumulated micro-batches under manual optimization.
* :mod:`compressor.integrations.accelerate` — ``accumulate_step``: one optimizer step over a
  group of micro-batches in one closure, so no micro-batch is ever dropped.

Each needs its optional extra (``compressor[hf,accelerate]``, ``compressor[lightning]``,
``compressor[accelerate]``); importing one without it is a one-line error naming the extra.
Importing this package imports none of them. docs/integrations/ has a page per integration.
"""

from __future__ import annotations

__all__: list[str] = []
