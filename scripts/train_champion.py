"""The ARC taxonomy ablation's Exp 3, the champion, trained with Trial 69:

    python scripts/train_champion.py [key=value ...]

runs ``python pretrain.py experiment=taxonomy_champion [key=value ...]`` (scripts/taxonomy_entry.py;
docs/seeds.md lists what differs from the original script)."""

import taxonomy_entry

if __name__ == "__main__":
    taxonomy_entry.run("train_champion.py", "taxonomy_champion")
