"""A run's life cycle around a trainer: its folder, log, checkpoints, schedule and stops.
Nothing here is registered, and nothing imports Dassl at import time.

* ``atomic``: the project's atomic writer (whole files or none), from ``atomic_files``.
* ``checkpoint``: writing, finding, reading, resuming and loading checkpoints.
* ``checkpoint_identity``: whether a checkpoint belongs to this run (trainer, backbone, head).
* ``dassl_compat``: the run-time fix for Dassl's warm-up schedulers on current PyTorch.
* ``logs``: ``log.txt`` and the ``logging`` that reaches it.
* ``run_folder``: a run folder's lock and the settings it was started with.
* ``schedule``: Dassl's learning-rate schedules, built on torch's ``LambdaLR``.
* ``stops``: stopping a run on SIGTERM, SIGINT or SIGUSR1 at its check points.
"""
