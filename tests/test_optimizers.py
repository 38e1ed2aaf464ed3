import copy
import json
import math
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port
from omegaconf import OmegaConf

import training.optimizers as optimizers
from models.sparse_embedding import PuzzleEmbedding
from training.optimizers import AdamATan2, Muon, OptimizerConfig, SparseSignSGD, adam_atan2, build_optimizer

# ---------------------------------------------------------------------------------------
# AdamATan2
# ---------------------------------------------------------------------------------------


def reference_steps(p0, grads, lr, betas, wd, decay_first=True, bias_correction=True):
    """The adam-atan2 CUDA kernel's update, element by element, in plain Python floats:
    decoupled decay, lerp the moments, then p -= (lr / bc1) * atan2(m, sqrt(v) / sqrt(bc2))."""
    b1, b2 = betas
    lrs = lr if isinstance(lr, list) else [lr] * len(grads)
    p = list(p0)
    m = [0.0] * len(p)
    v = [0.0] * len(p)
    for t, (g, lr_t) in enumerate(zip(grads, lrs), start=1):
        bc1 = 1 - b1**t if bias_correction else 1.0
        bc2 = 1 - b2**t if bias_correction else 1.0
        for i in range(len(p)):
            m[i] = m[i] + (1 - b1) * (g[i] - m[i])
            v[i] = v[i] + (1 - b2) * (g[i] * g[i] - v[i])
            upd = (lr_t / bc1) * math.atan2(m[i], math.sqrt(v[i]) / math.sqrt(bc2))
            if decay_first:
                p[i] = p[i] * (1 - lr_t * wd) - upd
            else:
                p[i] = (p[i] - upd) * (1 - lr_t * wd)
    return p


P0 = [0.5, -1.25, 2.0, 0.0, -0.75, 3.0]
GRADS = [[0.3, -0.2, 1e-3, 5.0, -0.7, 0.0], [-0.4, -0.1, 2e-3, -5.0, 0.9, 0.2]]


def run_steps(dtype, grads, lr=0.1, betas=(0.9, 0.95), wd=0.5, p0=P0):
    p = torch.nn.Parameter(torch.tensor(p0, dtype=dtype))
    opt = AdamATan2([p], lr=lr, betas=betas, weight_decay=wd)
    for g in grads:
        p.grad = torch.tensor(g, dtype=dtype)
        opt.step()
    return p.detach(), opt


def test_two_steps_match_hand_computed_fp32():
    p, opt = run_steps(torch.float32, GRADS)
    expected = reference_steps(P0, GRADS, lr=0.1, betas=(0.9, 0.95), wd=0.5)
    torch.testing.assert_close(p, torch.tensor(expected), rtol=0, atol=1e-6)
    state = opt.state[opt.param_groups[0]["params"][0]]
    assert state["exp_avg"].dtype == torch.float32 and state["exp_avg_sq"].dtype == torch.float32
    assert float(state["step"]) == 2.0


def test_two_steps_match_hand_computed_bf16():
    p0 = [float(x) for x in torch.tensor(P0, dtype=torch.bfloat16).float()]  # the values bf16 really holds
    grads = [[float(x) for x in torch.tensor(g, dtype=torch.bfloat16).float()] for g in GRADS]
    p, opt = run_steps(torch.bfloat16, GRADS)
    assert p.dtype == torch.bfloat16
    expected = reference_steps(p0, grads, lr=0.1, betas=(0.9, 0.95), wd=0.5)
    # each step moves an element by ~0.08, far more than this tolerance
    torch.testing.assert_close(p.float(), torch.tensor(expected), rtol=1e-2, atol=2e-2)
    state = opt.state[opt.param_groups[0]["params"][0]]
    assert state["exp_avg"].dtype == torch.bfloat16  # state in the param dtype, as in the CUDA kernel


def test_weight_decay_is_applied_before_the_update():
    p, _ = run_steps(torch.float32, GRADS)
    first = torch.tensor(reference_steps(P0, GRADS, 0.1, (0.9, 0.95), 0.5, decay_first=True))
    after = torch.tensor(reference_steps(P0, GRADS, 0.1, (0.9, 0.95), 0.5, decay_first=False))
    assert (first - after).abs().max() > 1e-3  # the two orders are distinguishable here
    torch.testing.assert_close(p, first, rtol=0, atol=1e-6)


def test_first_step_moves_by_lr_over_bc1_times_atan_of_one_minus_beta1():
    # step 1: m = 0.1 g, sqrt(v) / sqrt(bc2) = |g|, bc1 = 0.1, so the update is
    # (lr / 0.1) * atan2(0.1 g, |g|) = 10 lr * atan(0.1) sign(g) = 0.9967 lr, whatever |g|.
    # (atan2(m / bc1, ...) without the outer 1 / bc1 would move lr * pi / 4 = 0.785 lr.)
    grads = [[1e-6, -3.0, 250.0, -1e-3, 7.0, 0.5]]
    p, _ = run_steps(torch.float32, grads, lr=0.1, wd=0.0)
    expected = [p0 - 0.1 * 10 * math.copysign(math.atan(0.1), g) for p0, g in zip(P0, grads[0])]
    torch.testing.assert_close(p, torch.tensor(expected), rtol=0, atol=1e-6)
    inside = [p0 - 0.1 * math.copysign(math.pi / 4, g) for p0, g in zip(P0, grads[0])]
    assert max(abs(a - b) for a, b in zip(inside, expected)) > 1e-2  # the two rules are distinguishable
    no_bc = reference_steps(P0, grads, 0.1, (0.9, 0.95), 0.0, bias_correction=False)
    assert max(abs(a - b) for a, b in zip(no_bc, expected)) > 1e-2


def test_twenty_steps_with_varying_lr_match_the_kernel_formula():
    gen = torch.Generator().manual_seed(3)
    grads = (torch.randn(20, len(P0), generator=gen) * 10.0 ** torch.randint(-3, 3, (20, 1), generator=gen)).tolist()
    lrs = [0.05 * (1 + math.cos(math.pi * t / 20)) / 2 + 1e-3 for t in range(20)]
    p = torch.nn.Parameter(torch.tensor(P0, dtype=torch.float64))
    opt = AdamATan2([p], lr=lrs[0], betas=(0.9, 0.95), weight_decay=0.1)
    for lr, g in zip(lrs, grads):
        opt.param_groups[0]["lr"] = lr
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    expected = torch.tensor(reference_steps(P0, grads, lrs, (0.9, 0.95), 0.1), dtype=torch.float64)
    assert (p.detach() - expected).abs().max() < 1e-12


def test_update_is_bounded_for_huge_gradients():
    lr, wd = 0.01, 0.1
    p = torch.nn.Parameter(torch.tensor(P0))
    opt = AdamATan2([p], lr=lr, weight_decay=wd)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        before = p.detach().clone()
        scale = 10.0 ** torch.randint(-30, 19, (len(P0),), generator=gen).float()
        p.grad = torch.randn(len(P0), generator=gen) * scale
        opt.step()
        delta = (p.detach() - before).abs()
        assert torch.isfinite(p).all()
        step = int(opt.state[p]["step"])
        assert (delta <= lr / (1 - 0.9**step) * math.pi / 2 + before.abs() * lr * wd + 1e-6).all()


def test_zero_grad_only_decays_and_none_grad_skips():
    p = torch.nn.Parameter(torch.tensor(P0))
    q = torch.nn.Parameter(torch.tensor(P0))
    opt = AdamATan2([p, q], lr=0.1, weight_decay=0.5)
    p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor(P0) * (1 - 0.1 * 0.5), rtol=0, atol=0)
    assert torch.equal(q.detach(), torch.tensor(P0)) and q not in opt.state


def test_lr_changed_through_param_groups():
    p = torch.nn.Parameter(torch.tensor(P0))
    opt = AdamATan2([p], lr=0.1, weight_decay=0.5)
    lrs = [0.1, 0.02]
    for lr, g in zip(lrs, GRADS):
        opt.param_groups[0]["lr"] = lr
        p.grad = torch.tensor(g)
        opt.step()
    ref = reference_steps(P0, GRADS, lrs, (0.9, 0.95), 0.5)
    torch.testing.assert_close(p.detach(), torch.tensor(ref), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [dict(lr=-1e-3), dict(lr=float("nan")), dict(betas=(1.0, 0.9)), dict(betas=(0.9, -0.1)), dict(weight_decay=-0.1)],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        AdamATan2([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_state_dict_round_trip():
    gen = torch.Generator().manual_seed(1)
    grads = [(torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)) for _ in range(3)]

    def make(values=None):
        ps = [torch.nn.Parameter(torch.linspace(-1, 1, 12).reshape(3, 4)), torch.nn.Parameter(torch.ones(5))]
        if values is not None:
            with torch.no_grad():
                for p, val in zip(ps, values):
                    p.copy_(val)
        return ps, AdamATan2(ps, lr=0.05, betas=(0.8, 0.9), weight_decay=0.2)

    def step(ps, opt, gs):
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()

    a_params, a = make()
    step(a_params, a, grads[0])
    saved = copy.deepcopy(a.state_dict())
    saved_params = [p.detach().clone() for p in a_params]
    for gs in grads[1:]:
        step(a_params, a, gs)

    b_params, b = make(saved_params)
    b.load_state_dict(saved)
    for gs in grads[1:]:
        step(b_params, b, gs)
    for pa, pb in zip(a_params, b_params):
        assert torch.equal(pa, pb)
    assert float(b.state[b_params[0]]["step"]) == 3.0

    # without the loaded state the result differs (bias correction, moments)
    c_params, c = make(saved_params)
    for gs in grads[1:]:
        step(c_params, c, gs)
    assert not torch.equal(a_params[0], c_params[0])


def test_factory_returns_pure_class_on_cpu(monkeypatch):
    p = torch.nn.Parameter(torch.zeros(3))
    opt = adam_atan2([p], lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    assert type(opt) is AdamATan2
    assert opt.defaults["lr"] == 1e-3

    class FakeCuda:  # even when the CUDA package imports, CPU params get the pure class
        def __init__(self, *args, **kwargs):
            raise AssertionError("CUDA class chosen for CPU params")

    monkeypatch.setattr(optimizers, "_CudaAdamATan2", FakeCuda)
    assert type(adam_atan2((q for q in [p]), 1e-3, (0.9, 0.95), 0.1)) is AdamATan2


@pytest.mark.parametrize(
    "name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("adam_atan2", AdamATan2), ("muon", Muon)]
)
def test_build_optimizer(name, cls):
    p = torch.nn.Parameter(torch.zeros(3))
    opt = build_optimizer(OptimizerConfig(name=name, lr=3e-4, betas=[0.8, 0.9], weight_decay=0.05), [p])
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert (group["lr"], tuple(group["betas"]), group["weight_decay"]) == (3e-4, (0.8, 0.9), 0.05)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(name="sgd"),
        dict(lr=-1.0),
        dict(betas=[0.9]),
        dict(betas=[0.9, 1.0]),
        dict(weight_decay=-0.1),
        dict(eps=0.0),
        dict(muon_momentum=1.0),
        dict(muon_momentum=-0.1),
        dict(muon_ns_steps=0),
        dict(muon_matched_adamw_rms=0.0),
    ],
)
def test_optimizer_config_validation(kwargs):
    with pytest.raises(ValueError):
        OptimizerConfig(**kwargs).validate()


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[1] / "conf" / "optimizer").glob("*.yaml")), ids=lambda p: p.stem
)
def test_conf_optimizer_files_fit_the_schema(path):
    options = OmegaConf.load(path)
    options.pop("defaults", None)
    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(OptimizerConfig), options))
    assert config.name == path.stem
    config.validate()


# ---------------------------------------------------------------------------------------
# Muon (URM's use_muon=True optimizer)
# ---------------------------------------------------------------------------------------

# URM's models/muon.py msign table, written out again here (the test does not import ours)
URM_COEFFS = [
    (7.2086, -15.5131, 9.0178),
    (3.9623, -2.5813, 0.4542),
    (3.9466, -2.5765, 0.4544),
    (3.8991, -2.5671, 0.4566),
    (3.7186, -2.5308, 0.4653),
    (3.1390, -2.3073, 0.4733),
    (2.1715, -1.5246, 0.3885),
    (1.8648, -1.2224, 0.3577),
]
MUON_DATA = Path(__file__).parent / "data" / "muon_urm_reference.json"


def ref_newton_schulz(m, steps=5, coeffs=URM_COEFFS, bf16_input=True):
    """URM's msign in plain torch: the bf16-rounded input, float32 iterations, a tall matrix
    transposed, X / ||X||_F, then X <- a X + (b A + c A^2) X with A = X X^T."""
    x = m.to(torch.bfloat16).float() if bf16_input else m.float()
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / x.norm().clamp_min(1e-7)
    for i in range(steps):
        a, b, c = coeffs[min(i, len(coeffs) - 1)]
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def ref_muon_steps(p0, grads, lrs, wd=0.1, momentum=0.95, nesterov=True, rms=0.2, **ns):
    p, buf = p0.clone(), torch.zeros_like(p0)
    for g, lr in zip(grads, lrs):
        buf = momentum * buf + g
        d = g + momentum * buf if nesterov else buf
        update = ref_newton_schulz(d, **ns)
        p = p * (1 - lr * wd) - lr * rms * math.sqrt(max(p.shape)) * update
    return p


def ref_adamw_steps(p0, grads, lrs, betas=(0.9, 0.95), wd=0.1, eps=1e-8):
    b1, b2 = betas
    p, m, v = p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p * (1 - lr * wd) - lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (v.sqrt() + eps)
    return p


def muon_run(p0s, grads, lrs, dtype=torch.float32, **kwargs):
    """Our Muon on parameters p0s (one optimizer), each step's grads, the lr set per step."""
    params = [torch.nn.Parameter(p.clone().to(dtype)) for p in p0s]
    opt = Muon(params, lr=lrs[0], **kwargs)
    for gs, lr in zip(grads, lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        for p, g in zip(params, gs):
            p.grad = g.clone().to(dtype)
        opt.step()
    return [p.detach() for p in params], opt


def random_steps(shapes, steps=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    p0s = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) * (0.5 + i) for s in shapes] for i in range(steps)]
    return p0s, grads


LRS = [0.02, 0.05, 0.01]


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_matrices_follow_the_newton_schulz_formula(nesterov):
    shapes = [(4, 6), (7, 3)]  # wide, and tall (iterated transposed)
    p0s, grads = random_steps(shapes)
    got, _ = muon_run(p0s, grads, LRS, nesterov=nesterov)
    for i, p in enumerate(got):
        mine = [g[i] for g in grads]
        expected = ref_muon_steps(p0s[i], mine, LRS, nesterov=nesterov)
        # addmm (ours, URM's) and the plain products here round differently (~1e-5 in the
        # orthogonalised update, a few 1e-7 in the parameters after lr * 0.2 * sqrt(6))
        torch.testing.assert_close(p, expected, rtol=0, atol=1e-6)
        # the test tells apart what it checks (>= 1.4e-4 here): the bf16-rounded input
        # (float32 throughout would be another optimizer), URM's coefficient table (torch.optim.Muon's)
        for other in (dict(bf16_input=False), dict(coeffs=[(3.4445, -4.775, 2.0315)])):
            assert (p - ref_muon_steps(p0s[i], mine, LRS, nesterov=nesterov, **other)).abs().max() > 2e-5


def test_muon_first_step_is_decay_plus_scaled_orthogonalised_gradient():
    p0s, grads = random_steps([(4, 6)], steps=1, seed=5)
    lr, wd = 0.05, 0.1
    (p,), opt = muon_run(p0s, grads, [lr], weight_decay=wd)
    # step 1 with Nesterov: buf = g, d = g + 0.95 g
    g = grads[0][0]
    update = ref_newton_schulz(g + 0.95 * g)
    torch.testing.assert_close(p, p0s[0] * (1 - lr * wd) - lr * 0.2 * math.sqrt(6) * update, rtol=0, atol=1e-6)
    torch.testing.assert_close(opt.state[opt.param_groups[0]["params"][0]]["momentum_buffer"], grads[0][0])


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_muon_adamw_half_follows_the_formula(dtype, atol):
    shapes = [(6,), (2, 3, 2)]  # a vector and a 3-D tensor: not matrices, so AdamW
    p0s, grads = random_steps(shapes, seed=1)
    got, opt = muon_run(p0s, grads, LRS, dtype=dtype, betas=(0.8, 0.9), weight_decay=0.3)
    assert [g["use_muon"] for g in opt.param_groups] == [False]
    for i, p in enumerate(got):
        expected = ref_adamw_steps(p0s[i].to(dtype), [g[i].to(dtype) for g in grads], LRS, betas=(0.8, 0.9), wd=0.3)
        torch.testing.assert_close(p, expected, rtol=0, atol=atol)
        assert float(opt.state[opt.param_groups[0]["params"][i]]["step"]) == 3.0


def test_muon_eps_is_added_before_the_bias_correction():
    # a tiny gradient makes the two eps placements differ: URM's m / (sqrt(v) + eps) scaled by
    # sqrt(bc2) / bc1, not torch.optim.AdamW's m_hat / (sqrt(v_hat) + eps)
    p0, g = torch.zeros(3, dtype=torch.float64), torch.full((3,), 1e-8, dtype=torch.float64)
    (p,), _ = muon_run([p0], [[g]], [0.1], dtype=torch.float64, weight_decay=0.0)
    urm = -0.1 * math.sqrt(0.05) / 0.1 * (0.1e-8 / (math.sqrt(0.05) * 1e-8 + 1e-8))
    torch_adamw = -0.1 * 1e-8 / (1e-8 + 1e-8)
    torch.testing.assert_close(p, torch.full((3,), urm, dtype=torch.float64), rtol=1e-12, atol=0)
    assert abs(urm - torch_adamw) > 1e-3


def test_muon_splits_by_ndim_and_keeps_group_keys():
    matrix, vector, cube = (torch.nn.Parameter(torch.randn(s)) for s in [(3, 4), (4,), (2, 2, 2)])
    opt = Muon([{"params": [vector, matrix, cube], "lr_scale": 0.5}, {"params": [torch.nn.Parameter(torch.ones(5))]}])
    groups = [(g["use_muon"], [tuple(p.shape) for p in g["params"]], g.get("lr_scale")) for g in opt.param_groups]
    assert groups == [(True, [(3, 4)], 0.5), (False, [(4,), (2, 2, 2)], 0.5), (False, [(5,)], None)]
    for p in (matrix, vector, cube):
        p.grad = torch.ones_like(p)
    opt.step()
    assert set(opt.state[matrix]) == {"momentum_buffer"}
    assert set(opt.state[vector]) == set(opt.state[cube]) == {"step", "exp_avg", "exp_avg_sq"}
    # a plain list is one group split in two; add_param_group takes a group of one kind
    plain = Muon([vector, matrix])
    assert [(g["use_muon"], g["params"]) for g in plain.param_groups] == [(True, [matrix]), (False, [vector])]
    plain.add_param_group({"params": [torch.nn.Parameter(torch.ones(2, 2))]})
    assert plain.param_groups[-1]["use_muon"] is True
    with pytest.raises(ValueError, match="mixes"):
        plain.add_param_group({"params": [torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))]})
    with pytest.raises(ValueError, match="only 2-D"):
        Muon([{"params": [vector], "use_muon": True}])


@pytest.mark.parametrize(
    "kwargs",
    [dict(lr=-1.0), dict(weight_decay=-0.1), dict(momentum=1.0), dict(ns_steps=0), dict(matched_adamw_rms=0.0)]
    + [dict(betas=(0.9, 1.0)), dict(eps=0.0)],
)
def test_muon_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        Muon([torch.nn.Parameter(torch.zeros(2, 2))], **kwargs)


def test_muon_state_dict_round_trip():
    shapes = [(3, 4), (5,), (6, 2)]
    p0s, grads = random_steps(shapes, steps=4, seed=2)

    def make(values):
        ps = [torch.nn.Parameter(v.clone()) for v in values]
        return ps, Muon(ps, lr=0.05, weight_decay=0.2)

    def step(ps, opt, gs):
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()

    a_params, a = make(p0s)
    step(a_params, a, grads[0])
    step(a_params, a, grads[1])
    saved = copy.deepcopy(a.state_dict())
    saved_params = [p.detach().clone() for p in a_params]
    for gs in grads[2:]:
        step(a_params, a, gs)

    b_params, b = make(saved_params)
    b.load_state_dict(saved)
    assert [g["use_muon"] for g in b.param_groups] == [True, False]
    for gs in grads[2:]:
        step(b_params, b, gs)
    for pa, pb in zip(a_params, b_params):
        assert torch.equal(pa, pb)
    assert float(b.state[b_params[1]]["step"]) == 4.0

    c_params, c = make(saved_params)  # without the state: no momentum, fresh bias correction
    for gs in grads[2:]:
        step(c_params, c, gs)
    assert not any(torch.equal(pa, pc) for pa, pc in zip(a_params, c_params))


def test_muon_matches_urm_muon_py():
    """tests/data/muon_urm_reference.json holds what URM's own models/muon.py (UbiquantAI/URM
    41de2c3, copied from the mirror to /tmp and imported there, never here) computed: its Muon
    built as pretrain.py builds it (2-D parameters in a use_muon group, the others in an AdamW
    group with betas 0.9/0.95, eps 1e-8, wd 0.1), three steps on fixed parameters and
    gradients, the lr set before each step ("produced_by" in the file says the rest). Ours
    matches URM's eager msign bit for bit, its torch.compile'd msign (as published) to the
    last bit of float32, and its bfloat16 run bit for bit."""
    data = json.loads(MUON_DATA.read_text())
    names = list(data["init"])
    p0s = [torch.tensor(data["init"][k]) for k in names]
    grads = [[torch.tensor(step[k]) for k in names] for step in data["grads"]]
    for dtype, key, atol in [
        (torch.float32, "after_fp32_eager", 0.0),
        (torch.float32, "after_fp32_compiled", 3e-8),
        (torch.bfloat16, "after_bf16", 0.0),
    ]:
        params = [torch.nn.Parameter(p.clone().to(dtype)) for p in p0s]
        opt = Muon(params, lr=1e-4)  # URM's defaults: wd 0.1, momentum 0.95, Nesterov, 5 steps, rms 0.2
        for gs, lr, expected in zip(grads, data["lrs"], data[key]):
            for group in opt.param_groups:
                group["lr"] = lr
            for p, g in zip(params, gs):
                p.grad = g.clone().to(dtype)
            opt.step()
            for name, p in zip(names, params):
                assert p.dtype == dtype
                torch.testing.assert_close(p.detach().float(), torch.tensor(expected[name]), rtol=0, atol=atol)


def test_muon_config_builds_urms_optimizer():
    options = OmegaConf.load(Path(__file__).parents[1] / "conf" / "optimizer" / "muon.yaml")
    options.pop("defaults", None)
    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(OptimizerConfig), options))
    matrix, bias = torch.nn.Parameter(torch.zeros(3, 4)), torch.nn.Parameter(torch.zeros(4))
    opt = build_optimizer(config, [{"params": [matrix, bias]}])
    assert type(opt) is Muon
    muon, adamw = opt.param_groups
    assert (muon["use_muon"], muon["params"], adamw["use_muon"], adamw["params"]) == (True, [matrix], False, [bias])
    expected = dict(lr=1e-4, weight_decay=0.1, momentum=0.95, nesterov=True, ns_steps=5, matched_adamw_rms=0.2)
    assert {k: muon[k] for k in expected} == expected
    assert (tuple(adamw["betas"]), adamw["eps"], adamw["weight_decay"]) == ((0.9, 0.95), 1e-8, 0.1)
    config.muon_momentum, config.muon_nesterov, config.muon_ns_steps, config.muon_matched_adamw_rms = 0.9, False, 7, 0.3
    (muon, _) = build_optimizer(config, [matrix, bias]).param_groups
    assert (muon["momentum"], muon["nesterov"], muon["ns_steps"], muon["matched_adamw_rms"]) == (0.9, False, 7, 0.3)


def _muon_run_losses(data, checkpoint, *extra):
    from train_helpers import CPU, compose_config, tiny_overrides

    from training import loop

    overrides = tiny_overrides(data, checkpoint, "optimizer=muon", "optimizer.lr=3e-3", "evaluate=false", *extra)
    loop.train(compose_config(overrides), CPU)
    records = [json.loads(line) for line in (checkpoint / "metrics.jsonl").read_text().splitlines()]
    return [r["train/lm_loss"] for r in records if "train/lm_loss" in r]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from train_helpers import build_tiny_dataset

    return build_tiny_dataset(tmp_path_factory.mktemp("tiny"), num_aug=0, canvas=3, side=2)


@pytest.mark.usefixtures("one_torch_thread")
def test_optimizer_muon_trains_and_resumes_through_the_trainer(tiny_data, tmp_path):
    from utils import checkpoint as ckpt

    losses = _muon_run_losses(tiny_data, tmp_path / "straight", "epochs=40", "max_steps=30")
    assert len(losses) == 30 and losses[-1] < 0.7 * losses[0], losses
    straight = ckpt.load_shared(ckpt.list_checkpoints(str(tmp_path / "straight"))[-1][1])
    dense = straight["optimizers"][-1]
    assert [g["use_muon"] for g in dense["param_groups"]] == [True, False]
    assert any("momentum_buffer" in s for s in dense["state"].values())
    assert any("exp_avg" in s for s in dense["state"].values())

    # stopped at 15 and resumed: the optimizer state comes back, the same weights at 30
    _muon_run_losses(tiny_data, tmp_path / "resumed", "epochs=40", "max_steps=15")
    _muon_run_losses(tiny_data, tmp_path / "resumed", "epochs=40", "max_steps=30", "resume=auto")
    resumed = ckpt.load_shared(ckpt.list_checkpoints(str(tmp_path / "resumed"))[-1][1])
    assert resumed["step"] == straight["step"] == 30
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


@pytest.mark.usefixtures("one_torch_thread")
def test_optimizer_muon_trains_under_fp16_loss_scaling(tiny_data, tmp_path):
    from utils import checkpoint as ckpt

    losses = _muon_run_losses(tiny_data, tmp_path / "fp16", "epochs=40", "max_steps=30", "precision=fp16")
    assert losses[-1] < 0.7 * losses[0], losses
    state = ckpt.load_shared(ckpt.list_checkpoints(str(tmp_path / "fp16"))[-1][1])
    assert state["scaler"] is not None  # GradScaler drove the steps


# ---------------------------------------------------------------------------------------
# SparseSignSGD
# ---------------------------------------------------------------------------------------

NUM, DIM = 8, 3


def make_embedding(batch_size: int) -> PuzzleEmbedding:
    torch.manual_seed(0)
    emb = PuzzleEmbedding(NUM, DIM, batch_size=batch_size, init_std=1.0, cast_to=torch.float32)
    emb.train()
    return emb


def backward_with_grad(emb: PuzzleEmbedding, ids: list[int], grad: torch.Tensor) -> None:
    out = emb(torch.tensor(ids, dtype=torch.int32))
    (out * grad).sum().backward()  # d/d local_weights = grad


def expected_sign_step(w0: torch.Tensor, ids: list[int], grad: torch.Tensor, lr: float, wd: float) -> torch.Tensor:
    w = w0.clone()
    for i in sorted(set(ids)):
        summed = sum(grad[k] for k in range(len(ids)) if ids[k] == i)
        w[i] = w0[i] * (1 - lr * wd) - lr * torch.sign(summed)
    return w


def test_sparse_sign_sgd_sums_duplicates_and_touches_only_batch_rows():
    lr, wd = 0.1, 0.5
    ids = [1, 4, 1, 6]
    # id 1: rows sum to [-2, -1, 0]; per-row signs would be [+, -, +] then [-, +, -]
    grad = torch.tensor([[1.0, -2.0, 0.5], [0.3, -0.2, 0.0], [-3.0, 1.0, -0.5], [-1.0, 4.0, 2.0]])
    emb = make_embedding(len(ids))
    w0 = emb.weights.clone()
    opt = SparseSignSGD(emb, lr=lr, weight_decay=wd)

    backward_with_grad(emb, ids, grad)
    assert emb.local_weights.grad is not None
    opt.step()
    w = emb.weights

    decay = 1 - lr * wd
    torch.testing.assert_close(w[1], w0[1] * decay - lr * torch.tensor([-1.0, -1.0, 0.0]), rtol=0, atol=1e-7)
    torch.testing.assert_close(w[1, 2], w0[1, 2] * decay, rtol=0, atol=0)  # zero summed grad: decay only
    torch.testing.assert_close(w[4], w0[4] * decay - lr * torch.tensor([1.0, -1.0, 0.0]), rtol=0, atol=1e-7)
    torch.testing.assert_close(w, expected_sign_step(w0, ids, grad, lr, wd), rtol=0, atol=1e-7)
    untouched = [r for r in range(NUM) if r not in ids]
    assert torch.equal(w[untouched], w0[untouched])  # not even decayed

    opt.zero_grad()
    assert emb.local_weights.grad is None
    w1 = w.clone()
    opt.step()  # no grad: nothing happens
    assert torch.equal(emb.weights, w1)


def test_sparse_sign_sgd_validation():
    emb = make_embedding(2)
    with pytest.raises(ValueError):
        SparseSignSGD(emb, lr=-1.0)
    with pytest.raises(ValueError):
        SparseSignSGD(emb, weight_decay=-1.0)
    opt = SparseSignSGD(emb)
    with pytest.raises(ValueError):
        opt.add_param_group({"params": [torch.zeros(1)]})


RANK_IDS = [[0, 5, 2, 5], [5, 3, 0, 7]]  # 0 and 5 on both ranks; 5 twice on rank 0


def rank_grad(rank: int) -> torch.Tensor:
    if rank == 0:  # id 5 sums to [+2, -2, +1] here, but rank 1's row flips the first two
        return torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, 0.5], [0.2, -0.3, 0.4], [1.0, -1.0, 0.5]])
    return torch.tensor([[-5.0, 4.0, 0.5], [0.1, 0.2, -0.3], [-2.0, -2.0, 0.5], [0.7, -0.7, 0.7]])


def _gloo_worker(rank: int, world_size: int, port: int, out_dir: str, lr: float, wd: float) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size, timeout=timedelta(seconds=30)
    )
    try:
        emb = make_embedding(len(RANK_IDS[rank]))
        opt = SparseSignSGD(emb, lr=lr, weight_decay=wd)
        backward_with_grad(emb, RANK_IDS[rank], rank_grad(rank))
        opt.step()
        torch.save(emb.weights.clone(), f"{out_dir}/rank{rank}.pt")
        del opt, emb
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_sparse_sign_sgd_two_rank_gloo(tmp_path):
    lr, wd = 0.1, 0.5
    # the single-process reference on the concatenated batch; built first so that the
    # (slow, ~2 s) lazy torch._dynamo import of Optimizer.__init__ is inherited by forked ranks
    all_ids = RANK_IDS[0] + RANK_IDS[1]
    all_grad = torch.cat([rank_grad(0), rank_grad(1)])
    single = make_embedding(len(all_ids))
    start = single.weights.clone()
    opt = SparseSignSGD(single, lr=lr, weight_decay=wd)
    backward_with_grad(single, all_ids, all_grad)
    opt.step()

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"  # fork: no re-import of torch
    mp.start_processes(_gloo_worker, args=(2, free_port(), str(tmp_path), lr, wd), nprocs=2, join=True, start_method=method)
    w0, w1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert torch.equal(w0, w1)
    torch.testing.assert_close(w0, single.weights, rtol=0, atol=1e-7)
    # the cross-rank sum matters: rank 0 alone would move id 5 the other way
    local_only = expected_sign_step(start, RANK_IDS[0], rank_grad(0), lr, wd)
    assert not torch.allclose(local_only[5], w0[5])
