"""The ARC taxonomy ablation's Exp 0, the standard encoder-decoder baseline, trained with Trial 69:

    python scripts/train_encoder_decoder.py [key=value ...]

runs ``python pretrain.py experiment=taxonomy_encoder_decoder [key=value ...]`` (scripts/taxonomy_entry.py;
docs/seeds.md lists what differs from the original script)."""

import taxonomy_entry

if __name__ == "__main__":
    taxonomy_entry.run("train_encoder_decoder.py", "taxonomy_encoder_decoder")
