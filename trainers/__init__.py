"""Trainers, evaluator and shared prompt-tuning parts.

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
    from .dassl_compat import patch_warmup_scheduler

    patch_warmup_scheduler()  # other people's Dassl trainers use its warm-up schedulers
    # Imported for their registration side effects only.
    from . import evaluator  # noqa: F401
    from . import softcpt  # noqa: F401
    from . import cocoop, coop, linear_probe, plot, zsclip  # noqa: F401  (the baselines)
    from . import kgcoop, prograd, protonet  # noqa: F401  (the paper's other baselines)
