"""Self-improving loop: train -> evaluate -> generate tasks where the model is weak -> retrain.

    python run_iterative_training.py iterative.output_dir=outputs/iter iterative.n_episodes=5 \\
        arch=trm_tiny optimizer.lr=1e-3            # any training key or group option
    python run_iterative_training.py --help       # every key (conf/iterative.yaml)
    python run_iterative_training.py --initial_data data/arc_training_challenges.json \
        --output_dir outputs/iter --n_episodes 5 --n_batch 10   # PRISM's flags (pipelines/iterative_seed.py)

The loop is pipelines/iterative.py (docs/iterative.md).
"""

import sys

from pipelines.iterative import cli
from pipelines.iterative_seed import is_prism_command, translate_prism
from runconfig.compose import wants_help
from runconfig.help import config_help
from utils.errors import ConfigError, exit_with_error

if __name__ == "__main__":
    if wants_help(sys.argv[1:]):  # the generated key table, not Hydra's generic help screen
        print(config_help(__doc__, "iterative"))
    else:
        if is_prism_command(sys.argv[1:]):
            try:
                sys.argv[1:] = translate_prism(sys.argv[1:])
            except ConfigError as e:
                exit_with_error(e)
        cli()
