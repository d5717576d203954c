"""The trainers (one module per method) and, below them, the parts they lean on.

* ``trainers/<method>.py``: the methods, under the paths CoOp's users know: ``coop``,
  ``cocoop``, ``zsclip``, ``linear_probe``, ``softcpt``, ``kgcoop``, ``prograd``,
  ``protonet``, ``plot``.
* ``trainers/parts/``: the model-side shared parts (trainer base, backbone, text encoder,
  prompt builder, losses, evaluation, evaluator, feature cache, ...).
* ``trainers/run/``: a run's life cycle (checkpoints, run folder, log, schedule, stops, ...).

Importing this package registers every trainer and the evaluator with Dassl's
registries (as ``import trainers.coop`` does in CoOp). Without Dassl only the
Dassl-free parts (backbone, text encoder, prompt builder, schedule) import;
train.py reports the missing Dassl.
"""
try:
    import dassl  # noqa: F401
except ImportError:  # the Dassl-free modules stay importable
    dassl = None

if dassl is not None:
    from .run.dassl_compat import patch_warmup_scheduler

    patch_warmup_scheduler()  # other people's Dassl trainers use its warm-up schedulers
    # Imported for their registration side effects only.
    from .parts import evaluator  # noqa: F401
    from . import softcpt  # noqa: F401
    from . import cocoop, coop, linear_probe, plot, zsclip  # noqa: F401  (the baselines)
    from . import kgcoop, prograd, protonet  # noqa: F401  (the paper's other baselines)
