"""Multi-run flows built on ``training.loop.train`` and ``evaluators``; each module has a typed
config (a dataclass registered in Hydra's ConfigStore, so an unknown key is an error), a
``run(config)`` and a command-line entry with one-line ``error:`` handling:

- ``pipelines.test_time_training``: test-time training on unseen tasks (``ttt.py``; docs/ttt.md);
- ``pipelines.diffusion``: diffusion backbone -> size head -> evaluation
  (``run_full_pipeline.py``; docs/diffusion.md);
- ``pipelines.iterative``: train -> evaluate -> generate tasks -> retrain
  (``run_iterative_training.py``; docs/iterative.md).

Between our own modules configs travel as dataclasses (``dataclasses.replace`` on the
TrainConfig and its groups); the command line is composed once, at the entry point.
"""
