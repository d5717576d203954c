"""The model-side parts the trainers in ``trainers/`` are built from (as timm's ``layers/``
serve its ``models/``); a new trainer imports them from here. Nothing is registered here.

* ``base``: ``MultiTaskPromptTrainer`` and ``MultiTaskCLIP``, the frozen CLIP around a
  learnable ``PromptHead``, and the multi-task training step (needs Dassl).
* ``backbone``: the CLIP backbone, loaded through open_clip (CoOp's names, files, ``tiny``).
* ``text_encoder``: CLIP's text tower fed with token embeddings, with its exact speed-ups.
* ``prompt``: the one prompt builder (``PromptBuilder``, ``init_context``, ``tokenize``).
* ``losses``: the multi-task loss and the training-time choice of class columns.
* ``local_features``: one image feature per region of CLIP's image tower (PLOT).
* ``evaluation``: Dassl's test loop on image features, and results.json (needs Dassl).
* ``evaluator``: the multi-task evaluator and the benchmark score (needs Dassl).
* ``feature_cache``: image features of an evaluation split, encoded once per sweep.
* ``interpret``: reading learned prompts (nearest words, generated contexts, task similarity).
* ``single_task``: other Dassl trainers, which score an image against all classes (needs Dassl).
"""
