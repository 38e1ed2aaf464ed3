"""Self-improving loop: train -> evaluate -> generate tasks where the model is weak -> retrain.

    python run_iterative_training.py iterative.output_dir=outputs/iter iterative.n_episodes=5 \\
        arch=trm_tiny optimizer.lr=1e-3            # any training key or group option
    python run_iterative_training.py --help       # every key (conf/iterative.yaml)

The loop is pipelines/iterative.py (docs/iterative.md).
"""

import sys

from pipelines.iterative import cli
from runconfig.compose import wants_help
from runconfig.help import config_help

if __name__ == "__main__":
    if wants_help(sys.argv[1:]):  # the generated key table, not Hydra's generic help screen
        print(config_help(__doc__, "iterative"))
    else:
        cli()
