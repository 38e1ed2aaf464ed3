"""From ``conf/`` and a command line to a checked run config, above the packages whose schemas
it composes (models, losses, the trainer's optimizers):

- ``groups``: the config groups (arch, data, loss, optimizer): their schemas in Hydra's
  ConfigStore, their options in ``conf/``;
- ``compose``: ``conf/`` plus a command line -> a checked ``TrainConfig`` (Hydra's errors as one
  line), and the overrides that recreate a checkpoint's saved config (``saved_overrides``);
- ``help``: ``--help``, generated from the schemas.

The run keys themselves (``TrainConfig``) and what a resume may change are ``utils.config``:
they import nothing above ``utils``.
"""
