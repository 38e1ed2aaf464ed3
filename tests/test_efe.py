"""Active-inference agent (models/efe.py, models/prompt_encoder.py) and its loss (losses/efe.py)."""

import math

import pytest
import torch
from conftest import learning_seed
from train_helpers import build_tiny_dataset, compose_config, seeded, split_metrics, tiny_overrides, train_until

from dataset.common import IGNORE_LABEL_ID
from dataset.puzzle_dataset import PuzzleDataset
from losses import build_loss
from losses.efe import (
    ambiguity_term,
    bidirectional_term,
    cell_weights,
    consistency_term,
    prompt_term,
    risk_term,
    size_warmup_factor,
    step_cost_term,
    z_anchor_term,
)
from models import build_model
from models.base import DataShape
from models.efe import PromptMemory, prediction_scores, refinement_reward
from models.prompt_encoder import SYMBOLS, numeric_features, serialise_demos, symbol_token_ids
from training import loop
from utils import checkpoint as ckpt
from utils.distributed import DistEnv

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
NEG = -1e4  # a logit whose probability is 0 in float32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("efe"), num_aug=0, canvas=3, side=2, seed=learning_seed())


def logits_of(*rows: dict[int, float], vocab: int = 12) -> torch.Tensor:
    """Logits [len(rows), vocab] whose softmax puts the given probabilities on the given ids."""
    out = torch.full((len(rows), vocab), NEG)
    for i, row in enumerate(rows):
        for token, p in row.items():
            out[i, token] = math.log(p)
    return out


def canvas(grid: list[list[int]], side: int = 3) -> torch.Tensor:
    """A grid of colours 0..9 encoded top-left on a side x side canvas (EOS after its edges)."""
    t = torch.zeros(side, side, dtype=torch.long)
    h, w = len(grid), len(grid[0])
    t[:h, :w] = torch.tensor(grid) + 2
    if h < side:
        t[h, :w] = 1
    if w < side:
        t[:h, w] = 1
    return t.flatten()


def as_labels(tokens: torch.Tensor) -> torch.Tensor:
    return torch.where(tokens == 0, IGNORE_LABEL_ID, tokens)


def build(arch: str = "efe_tiny", *overrides: str, seq_len: int = 9):
    config = compose_config([f"arch={arch}", "loss=efe", *overrides])
    torch.manual_seed(0)
    return build_model(config.arch, DataShape(seq_len, 12, 5, 4)), build_loss(config.loss)


def toy_batch(k: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)

    def grid(h, w):
        return torch.randint(0, 10, (h, w), generator=g).tolist()

    inputs = torch.stack([canvas(grid(2, 2)) for _ in range(4)])
    labels = as_labels(torch.stack([canvas(grid(2, 1)) for _ in range(4)]))
    demo_inputs = torch.stack([torch.stack([canvas(grid(2, 2)) for _ in range(k)]) for _ in range(4)])
    demo_labels = torch.stack([torch.stack([canvas(grid(1, 2)) for _ in range(k)]) for _ in range(4)])
    mask = torch.ones(4, k, dtype=torch.bool)
    mask[1, -1] = False
    return {
        "inputs": inputs,
        "labels": labels,
        "puzzle_identifiers": torch.tensor([1, 1, 2, 3]),
        "demo_inputs": demo_inputs,
        "demo_labels": demo_labels,
        "demo_mask": mask,
    }


# ----------------------------------------------------------------------------------------
# Loss terms on hand-computed examples


def test_risk_is_kl_of_expected_colour_histogram_to_preferences():
    # Cells: colour 0 (token 2), colour 1 (token 3), and EOS (no colour mass): Qbar = (1/2, 1/2).
    step = logits_of({2: 1.0}, {3: 1.0}, {1: 1.0}).view(1, 1, 3, 12)
    prefs = torch.full((1, 10), NEG)
    prefs[0, :2] = torch.log(torch.tensor([0.25, 0.75]))
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert risk_term(step, prefs).item() == pytest.approx(expected, abs=1e-5)
    prefs[0, :2] = math.log(0.5)
    assert risk_term(step, prefs).item() == pytest.approx(0.0, abs=1e-6)


def test_ambiguity_is_mean_belief_entropy():
    step = torch.stack(
        [logits_of({2: 0.5, 3: 0.5}, {4: 1.0}), logits_of({2: 0.25, 3: 0.25, 4: 0.25, 5: 0.25}, {4: 1.0})]
    ).unsqueeze(0)
    assert ambiguity_term(step).item() == pytest.approx((math.log(2) + math.log(4)) / 4, abs=1e-5)


def test_step_cost_is_total_variation_between_consecutive_beliefs():
    step = torch.stack(
        [logits_of({2: 1.0}, {3: 1.0}), logits_of({2: 0.5, 5: 0.5}, {3: 1.0}), logits_of({2: 0.5, 5: 0.5}, {6: 1.0})]
    ).unsqueeze(0)
    # TVs: step 2 vs 1 = (0.5 + 0) / 2 cells, step 3 vs 2 = (0 + 1) / 2 cells.
    assert step_cost_term(step).item() == pytest.approx((0.25 + 0.5) / 2, abs=1e-5)
    assert step_cost_term(step[:, :1]).item() == 0.0


def test_consistency_is_weighted_cross_entropy_on_scored_cells():
    logits = logits_of({2: 0.8, 3: 0.2}, {2: 0.5, 3: 0.5}, {2: 0.8, 3: 0.2}).unsqueeze(0)
    labels = torch.tensor([[2, IGNORE_LABEL_ID, 3]])
    weights = torch.tensor([[1.0, 5.0, 3.0]])
    expected = (math.log(1 / 0.8) + 3 * math.log(1 / 0.2)) / 4
    assert consistency_term(logits, labels, weights).item() == pytest.approx(expected, abs=1e-5)


def test_bidirectional_is_js_between_forward_and_backward_beliefs():
    forward = torch.stack([logits_of({2: 1.0}), logits_of({3: 1.0}), logits_of({4: 1.0})]).unsqueeze(0)
    backward = torch.stack([logits_of({3: 1.0}), logits_of({3: 1.0})]).unsqueeze(0)  # steps 1, 2
    # Step 1: disjoint -> ln 2; step 2: equal -> 0; the final step is not compared.
    assert bidirectional_term(forward, backward).item() == pytest.approx(math.log(2) / 2, abs=1e-5)


def test_z_anchor_is_gaussian_kl_to_the_prompt_anchor():
    mu = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    logvar = torch.tensor([0.0, math.log(2)]).view(1, 1, 1, 2)
    # dim 0: 0.5 (1 + (1 - 0)^2 - 1 - 0) = 0.5; dim 1: 0.5 (2 + 1 - 1 - ln 2) with anchor 1.
    expected = (0.5 + 0.5 * (2 - math.log(2))) / 2
    assert z_anchor_term(mu, logvar, torch.tensor([[0.0, 1.0]])).item() == pytest.approx(expected, abs=1e-6)


def test_prompt_loss_pulls_same_variant_prompts_together():
    prompts = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    ids = torch.tensor([5, 5, 7, 9])
    valid = torch.tensor([True, True, True, False])
    loss = prompt_term(prompts, ids, valid, temperature=1.0)
    # Example 0 vs the valid others: cosine 1 with its positive, 0 with example 2.
    expected = math.log(math.e + 1) - 1
    assert loss[0].item() == pytest.approx(expected, abs=1e-6)
    assert loss[1].item() == pytest.approx(expected, abs=1e-6)
    assert loss[2].item() == 0.0 and loss[3].item() == 0.0  # no positive / unscored


def test_size_warmup_schedules_and_hard_cell_weights():
    assert size_warmup_factor(50, 100, "linear") == pytest.approx(0.5)
    assert size_warmup_factor(25, 100, "cosine") == pytest.approx(0.5 * (1 - math.cos(math.pi / 4)))
    assert (size_warmup_factor(99, 100, "step"), size_warmup_factor(100, 100, "step")) == (0.0, 1.0)
    assert size_warmup_factor(500, 100, "linear") == 1.0 and size_warmup_factor(0, 0, "linear") == 1.0
    logits = logits_of({2: 1.0}, {2: 1.0}, {1: 1.0}, {2: 1.0}).unsqueeze(0)
    labels = torch.tensor([[2, 3, 1, IGNORE_LABEL_ID]])  # right colour, wrong colour, right EOS, unscored
    assert cell_weights(logits, labels, 3.0, 0.25).tolist() == [[1.0, 3.0, 0.25, 0.0]]


def test_loss_reports_the_contract_metrics_and_every_term():
    model, loss_fn = build()
    batch = toy_batch()
    model.train()
    _, output = model(model.initial_carry(batch), batch)
    loss, metrics = loss_fn(output, batch)
    for key in (
        "count",
        "accuracy",
        "exact_accuracy",
        "lm_loss",
        "risk_loss",
        "ambiguity_loss",
        "step_loss",
        "consistency_loss",
        "bi_loss",
        "z_loss",
        "prompt_loss",
        "rl_loss",
        "rl_reward",
    ):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert metrics["count"] == 4 and torch.isfinite(loss)
    valid = batch["labels"] != IGNORE_LABEL_ID
    plain = consistency_term(output.logits, batch["labels"], valid.float()).sum()
    assert metrics["lm_loss"].item() == pytest.approx(plain.item(), rel=1e-5)


# ----------------------------------------------------------------------------------------
# Prompt encoder


def test_demos_serialise_as_rows_of_digits():
    demo_inputs = torch.stack([canvas([[1, 2], [3, 4]]), canvas([[5]])]).view(1, 2, 9)
    demo_labels = torch.stack([canvas([[0, 9, 8]]), canvas([[7]])]).view(1, 2, 9)
    symbols, mask = serialise_demos(demo_inputs, demo_labels, torch.tensor([[True, False]]), side=3)
    assert "".join(SYMBOLS[i] for i in symbols[0][mask[0]].tolist()) == "|I12\n34\nO098\n|"
    assert mask.all()  # the masked second pair is left out entirely
    symbols, mask = serialise_demos(demo_inputs, demo_labels, torch.tensor([[True, True]]), side=3, max_tokens=5)
    assert "".join(SYMBOLS[i] for i in symbols[0].tolist()) == "|I12\n"


def test_symbol_ids_come_from_the_tokenizer_when_there_is_one(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = {"[UNK]": 0, **{s: 30 - i for i, s in enumerate(SYMBOLS)}}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(tmp_path / "tok")
    ids, source = symbol_token_ids(str(tmp_path / "tok"), vocab_size=31)
    assert source == "tokenizer" and ids.tolist() == [30 - i for i in range(len(SYMBOLS))]
    (tmp_path / "bare").mkdir()
    with pytest.warns(UserWarning, match="fixed ids"):
        ids, source = symbol_token_ids(str(tmp_path / "bare"), vocab_size=31)
    assert source == "fixed" and ids.tolist() == list(range(len(SYMBOLS)))
    with pytest.raises(ValueError, match="vocabulary"):
        symbol_token_ids(str(tmp_path / "bare"), vocab_size=10)


def test_numeric_features_by_hand():
    x, y = canvas([[1, 2], [1, 0]]), canvas([[1, 2], [3, 0]])
    f = numeric_features(x, y, side=3)
    assert f.shape == (15,)
    assert f[:4].tolist() == pytest.approx([2 / 3] * 4)
    assert f[6].item() == pytest.approx(0.3) and f[7].item() == pytest.approx(0.4)  # palettes {0,1,2}, {0,1,2,3}
    assert f[8].item() == pytest.approx(3 / 4)  # palette IoU
    assert f[11].item() == 1.0 and f[12].item() == pytest.approx(3 / 4)  # same size; 3 of 4 cells agree


def test_no_test_output_reaches_the_prompt(tiny_qwen):
    model, _ = build("efe_tiny", f"arch.lm_path={tiny_qwen}")
    model.eval()
    batch = toy_batch()
    output, _, predictions = model.predict(batch)
    changed = {**batch, "labels": torch.where(batch["labels"] == IGNORE_LABEL_ID, IGNORE_LABEL_ID, 5)}
    output2, _, predictions2 = model.predict(changed)
    assert torch.equal(output.prompt, output2.prompt) and torch.equal(predictions.tokens, predictions2.tokens)
    no_labels = {k: v for k, v in batch.items() if k != "labels"}
    assert torch.equal(model.predict(no_labels)[2].tokens, predictions.tokens)  # predict never reads labels
    demo_changed = {**batch, "demo_labels": batch["demo_labels"].clone()}
    demo_changed["demo_labels"][0, 0, 0] = 11 if batch["demo_labels"][0, 0, 0] != 11 else 10
    output3, _, _ = model.predict(demo_changed)
    assert not torch.allclose(output.prompt[0], output3.prompt[0])
    assert torch.equal(output.prompt[1:], output3.prompt[1:])


@pytest.mark.parametrize("trainable", [False, True])
def test_gradients_reach_the_lm_projection_and_the_lm_only_when_trainable(tiny_qwen, trainable):
    model, loss_fn = build(
        "efe_tiny", f"arch.lm_path={tiny_qwen}", f"arch.lm_trainable={str(trainable).lower()}", "arch.fusion=concat"
    )
    assert model.symbol_source == "fixed"
    model.train()
    batch = toy_batch()
    loss, _ = loss_fn(model(model.initial_carry(batch), batch)[1], batch)
    loss.backward()
    assert model.prompt_encoder.lm_proj.weight.grad.abs().sum() > 0
    lm_grads = [p.grad for p in model.lm.parameters()]
    if trainable:
        assert all(g is not None for g in lm_grads) and sum(g.abs().sum() for g in lm_grads) > 0
        assert model.lm.training
    else:
        assert all(g is None for g in lm_grads) and not model.lm.training
    groups = model.param_groups()
    lm_ids = {id(p) for p in model.lm.parameters()}
    assert not lm_ids & {id(p) for p in groups[0]["params"]}
    assert len(groups) == (2 if trainable else 1)
    if trainable:
        assert groups[1]["lr_scale"] == 0.1 and {id(p) for p in groups[1]["params"]} == lm_ids
    # A frozen LM is rebuilt from lm_path, so checkpoints leave it out and load strictly without it.
    state = model.state_dict()
    assert any(k.startswith("lm.") for k in state) == trainable
    model.load_state_dict(state)


def test_bf16_autocast_matches_float32(tiny_qwen):
    """The same agent (bf16 LM) under bf16 autocast and (fp32 LM) in float32, from the same
    weights and random draws: prompts, beliefs, loss and gradients agree to bf16's precision."""
    runs = {}
    for dtype in ("bfloat16", "float32"):
        model, loss_fn = build("efe_tiny", f"arch.lm_path={tiny_qwen}", f"arch.lm_dtype={dtype}")
        model.train()
        batch = toy_batch()
        torch.manual_seed(1)  # the latent noise and the policy's action
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            _, output = model(model.initial_carry(batch), batch)
            loss, _ = loss_fn(output, batch)
        loss.backward()
        runs[dtype] = (output, loss, model.prompt_encoder.lm_proj.weight.grad)
    (low, low_loss, low_grad), (ref, ref_loss, ref_grad) = runs["bfloat16"], runs["float32"]
    assert low.logits.dtype == torch.bfloat16 and ref.logits.dtype == torch.float32  # autocast did run

    def relative(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.detach().float() - b.detach()).norm() / b.detach().norm())

    # Measured: 0.004, 2e-4, 3e-6, 0.02; with the LM's output lost under bf16: 0.79, 3e-3, 0.03, 1.0.
    assert relative(low.prompt, ref.prompt) < 0.02  # the LM's share of the prompt survives bf16
    assert (low.logits.float().softmax(-1) - ref.logits.softmax(-1)).abs().max() < 1e-3
    assert low_loss.item() == pytest.approx(ref_loss.item(), rel=1e-3)
    assert relative(low_grad, ref_grad) < 0.1


# ----------------------------------------------------------------------------------------
# Reward, memory, refinement


def test_reward_is_positive_when_refinement_improves_the_prediction():
    side = 3
    labels = as_labels(canvas([[1, 2], [3, 4]])).unsqueeze(0)
    right = canvas([[1, 2], [3, 4]]).unsqueeze(0)
    wrong_colours = canvas([[1, 1], [1, 1]]).unsqueeze(0)
    wrong_size = canvas([[1, 2, 5], [3, 4, 5]]).unsqueeze(0)
    probs = torch.full((1, 2, 9, 12), 1 / 12)
    back = probs[:, :1]
    good, colours, size = (prediction_scores(t, labels, probs, back, side) for t in (right, wrong_colours, wrong_size))
    assert good["accuracy"].item() == 1.0 and good["size"].item() == 1.0 and good["histogram"].item() == 1.0
    assert colours["accuracy"].item() == pytest.approx(5 / 8)  # 1 of 4 colours + the 4 EOS cells
    assert colours["histogram"].item() == pytest.approx(0.25) and colours["size"].item() == 1.0
    assert size["size"].item() == 0.0 and good["reversibility"].item() == pytest.approx(1.0)
    weights = {"accuracy": 1.0, "size": 0.5, "histogram": 0.25, "reversibility": 0.25}
    assert refinement_reward(colours, good, weights).item() > 0
    assert refinement_reward(size, good, weights).item() > 0
    assert refinement_reward(good, colours, weights).item() < 0
    assert refinement_reward(good, good, weights).item() == 0.0
    # Reversibility: backward beliefs that disagree with the forward ones score lower.
    disagree = torch.zeros(1, 1, 9, 12)
    disagree[..., 0] = 1.0
    forward = torch.zeros(1, 2, 9, 12)
    forward[..., 1] = 1.0
    assert prediction_scores(right, labels, forward, disagree, side)["reversibility"].item() == pytest.approx(0.0, abs=1e-6)


def test_memory_retrieves_above_threshold_and_adapts_it():
    memory = PromptMemory(size=3, dim=2, threshold=0.9, quantile=0.5, ema=0.5, mix=0.5)
    prompts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    same, hits = memory.read(prompts, adapt=True)
    assert torch.equal(same, prompts) and not hits.any()  # empty memory
    memory.write(torch.tensor([[2.0, 0.0], [0.0, 5.0]]), torch.tensor([True, False]))  # only solved ones
    assert memory.filled.tolist() == [True, False, False] and memory.pointer.item() == 1
    query = torch.tensor([[1.0, 0.1], [0.0, 1.0]])
    mixed, hits = memory.read(query, adapt=True)
    cos = 1 / math.sqrt(1.01)
    assert hits.tolist() == [True, False]
    assert mixed[0].tolist() == pytest.approx([1.5, 0.05])  # halfway to the stored (2, 0)
    assert torch.equal(mixed[1], query[1])
    # Threshold moved halfway to the median of the best similarities (cos and 0).
    assert memory.threshold.item() == pytest.approx(0.5 * 0.9 + 0.5 * (cos + 0.0) / 2, abs=1e-6)
    new = torch.arange(8.0).view(4, 2)
    memory.write(new, torch.ones(4, dtype=torch.bool))  # more than fits: the newest 3, the ring wrapped
    assert memory.filled.all() and memory.pointer.item() == 1  # slot 1 now holds the oldest entry
    assert memory.keys[[1, 2, 0]].tolist() == new[1:].tolist()
    assert {"memory.keys", "memory.threshold"} <= set(torch.nn.ModuleDict({"memory": memory}).state_dict())


def test_training_writes_solved_examples_and_evaluation_is_deterministic():
    model, loss_fn = build("efe_tiny", "arch.memory_threshold=-1", "arch.policy_init_std=1e-9")
    batch = toy_batch()
    # Labels equal to the model's own evaluation prediction, and (almost) no sampling noise
    # in training: every example is solved.
    with torch.no_grad():
        model.decoder.latent.bias[model.config.latent_dim :] = -60.0
        model.eval()
        batch["labels"] = model.predict(batch)[2].tokens[:, 0]
        model.train()
    torch.manual_seed(0)
    _, output = model(model.initial_carry(batch), batch)
    assert model.train_steps.item() == 1 and output.step.item() == 0
    assert model.memory.filled.sum() == 4
    assert torch.allclose(model.memory.keys[:4], output.prompt)  # the encoder's prompts, before mixing
    assert output.rl_loss.shape == (4,) and set(output.rl_stats) == {"reward", "advantage", "curiosity", "entropy"}
    model.eval()
    first, second = model.predict(batch)[2], model.predict(batch)[2]
    assert torch.equal(first.tokens, second.tokens) and torch.equal(first.scores, second.scores)
    assert model.predict(batch)[0].memory_hits.all()  # memory read at evaluation too


def test_gradients_reach_the_policy_and_the_curiosity_model():
    model, loss_fn = build()
    model.train()
    batch = toy_batch()
    loss, _ = loss_fn(model(model.initial_carry(batch), batch)[1], batch)
    loss.backward()
    assert model.policy.log_std.grad.abs().sum() > 0  # entropy bonus + REINFORCE
    assert model.curiosity[0].weight.grad.abs().sum() > 0
    assert model.policy.mean[2].weight.grad.abs().sum() > 0  # REINFORCE through the zero-initialised mean


@pytest.mark.learning
def test_reinforce_raises_the_expected_reward_of_a_bandit():
    """A bandit through the agent's own refinement objective (its reward, baseline, REINFORCE
    and entropy terms): the refined prediction is right when the action's first coordinate is
    positive, else it stays the unrefined, wrong one (reward 0). The policy starts with mean
    0, so the rewarding half has probability 1/2; the updates must make it far likelier."""
    model, _ = build("efe_tiny", "arch.curiosity_weight=0", "arch.memory_size=0")
    model.train()
    b, dim = 8, model.config.prompt_dim
    wrong, right = canvas([[1, 1], [1, 1]]), canvas([[1, 2], [3, 4]])
    labels = as_labels(right).expand(b, -1)

    def plan_of(tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """A one-step plan whose belief is certain of ``tokens`` [B, 9]."""
        logits = torch.full((b, 1, 9, 12), NEG).scatter_(-1, tokens.view(b, 1, 9, 1), 0.0)
        return {"step_logits": logits, "back_logits": logits[:, :0], "features": torch.zeros(b, model.config.hidden_size)}

    model.plan = lambda inputs, prompt, noise: plan_of(wrong.expand(b, -1))  # the unrefined prediction
    g = torch.Generator().manual_seed(learning_seed())
    prompts = torch.randn(b, dim, generator=g)
    inputs = torch.zeros(b, 9, dtype=torch.long)  # unread: the plan is fixed

    def p_rewarded() -> float:
        with torch.no_grad():
            mean, log_std = model.policy(prompts)
            return float(0.5 * (1 + torch.erf(mean[:, 0] / (log_std.exp()[:, 0] * math.sqrt(2)))).mean())

    opt = torch.optim.Adam(model.policy.parameters(), lr=1e-2)
    before, rewards = p_rewarded(), []
    torch.manual_seed(learning_seed())
    for _ in range(60):
        mean, log_std = model.policy(prompts)
        action = mean + log_std.exp() * torch.randn_like(mean)
        refined = torch.where((action[:, :1] > 0), right, wrong)
        loss, stats = model.refinement_objective(inputs, labels, prompts, plan_of(refined), action, mean, log_std, None)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        rewards.append(stats["reward"])
    rewards = torch.cat(rewards)
    assert rewards.min() == 0 and rewards.max() > 0.5  # 0 unrefined, 3/8 accuracy + 3/4 x 1/4 histogram refined
    assert before == 0.5
    assert p_rewarded() > 0.9, p_rewarded()


@pytest.mark.parametrize(
    "override,key",
    [
        ("arch.fusion=sum", "fusion"),
        ("arch.numeric_in_dim=14", "numeric_in_dim"),
        ("loss.size_warmup_schedule=exp", "size_warmup_schedule"),
        ("loss.lambda_bi=-1", "lambda_bi"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ValueError, match=key):
        compose_config(["arch=efe_tiny", "loss=efe", override])


# ----------------------------------------------------------------------------------------
# Training through pretrain.py


@pytest.mark.learning
def test_tiny_agent_learns_the_tiny_task(tiny_data, tmp_path):
    overrides = seeded(
        *tiny_overrides(
            tiny_data, tmp_path / "ck", "arch=efe_tiny", "loss=efe", "eval_interval=1000000", "optimizer.lr=3e-3"
        )
    )
    # Every training example right in 75 steps (measured); the cap leaves 6x that.
    _, config, history = train_until(
        overrides, lambda _s, c: split_metrics(c, tiny_data)["all/exact_accuracy"], target=1.0, chunk=25, cap=450
    )
    assert history[-1][1] == 1.0, history
    state = ckpt.load_shared(ckpt.list_checkpoints(str(tmp_path / "ck"))[-1][1])
    meta = PuzzleDataset([str(tiny_data)], "train", 8).metadata
    model = build_model(config.arch, DataShape(meta.seq_len, meta.vocab_size, meta.num_puzzle_identifiers, 8))
    model.load_state_dict(state["model"])
    assert model.train_steps.item() == state["step"] == history[-1][0]
    assert split_metrics(config, tiny_data)["all/count"] == 15


def test_tiny_qwen_run_writes_a_submission(tiny_data, tiny_qwen, tmp_path):
    config = compose_config(
        tiny_overrides(
            tiny_data,
            tmp_path / "ck",
            "arch=efe_tiny",
            "loss=efe",
            "epochs=4",
            "eval_interval=2",
            f"arch.lm_path={tiny_qwen}",
            "arch.lm_trainable=true",
        )
    )
    summary = loop.train(config, CPU)
    assert summary["step"] == 4 and "train/grad_norm/lm" in summary and summary["train/grad_norm/lm"] > 0
    for step in (2, 4):
        assert (tmp_path / "ck" / f"evaluator_ARC_step_{step}" / "submission.json").is_file()
