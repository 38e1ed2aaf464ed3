"""Loss registry: one entry per ``conf/loss/<name>.yaml`` option."""

from losses.act import ACTLoss, LossConfig

LOSSES = {"stablemax": ACTLoss, "softmax": ACTLoss}


def build_loss(config: LossConfig) -> ACTLoss:
    if config.name not in LOSSES:
        raise ValueError(f"loss.name={config.name!r}: choose from {sorted(LOSSES)}")
    return LOSSES[config.name](config)
