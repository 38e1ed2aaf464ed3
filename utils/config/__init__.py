"""The run keys, below every package that reads them:

- ``schema``: the run keys' dataclasses (``TrainConfig`` and its sections, ``DataConfig``);
- ``resume``: which keys a resume may change.

Composing ``conf/`` over the group schemas (which live next to the code they build) is the
``runconfig`` package's. Errors are ``utils.errors.ConfigError``.
"""
