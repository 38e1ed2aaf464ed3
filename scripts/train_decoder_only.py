"""The ARC taxonomy ablation's Exp -1, the decoder-only baseline, trained with Trial 69:

    python scripts/train_decoder_only.py [key=value ...]

runs ``python pretrain.py experiment=taxonomy_decoder_only [key=value ...]`` (scripts/taxonomy_entry.py;
docs/seeds.md lists what differs from the original script)."""

import taxonomy_entry

if __name__ == "__main__":
    taxonomy_entry.run("train_decoder_only.py", "taxonomy_decoder_only")
