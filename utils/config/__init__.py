"""The run configuration, one module per concern. The schemas of the groups (arch, data, loss,
optimizer) live next to the code they build; this package holds the run keys and composes
``conf/`` over them:

- ``schema``: the run keys' dataclasses (``TrainConfig`` and its sections, ``DataConfig``);
- ``groups``: the config groups: their schemas in Hydra's ConfigStore, their options in ``conf/``;
- ``compose``: ``conf/`` plus a command line -> a checked ``TrainConfig``; Hydra's errors as one line;
- ``help``: ``--help``, generated from the schemas;
- ``resume``: a checkpoint's saved config as overrides, and what a resume may change.

``groups`` imports the model and loss packages (their family schemas); ``compose``, ``help``
and ``resume`` reach them through it; ``schema`` imports nothing above ``utils``. Errors are
``utils.errors.ConfigError``.
"""
