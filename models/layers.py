"""Transformer building blocks shared by the recursive models: RMSNorm, RoPE, SwiGLU and
attention (flash-attn on CUDA when installed, PyTorch SDPA otherwise).

Parameters are stored in float32 and cast to the activations' dtype at use ("casted"
layers), so the forward dtype (bf16 on GPU, fp32 on CPU) is a run setting, not a property
of the weights. Initialisation follows TinyRecursiveModels (truncated LeCun normal).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

try:  # optional [gpu] extra
    from flash_attn import flash_attn_func
except ImportError:  # pragma: no cover - depends on the machine
    flash_attn_func = None

CosSin = tuple[torch.Tensor, torch.Tensor]
_LOW_PRECISION = (torch.bfloat16, torch.float16)


def _cpu_has_bf16_units() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:  # not Linux: trust the backend
        return True
    return "avx512_bf16" in flags or "amx_bf16" in flags


# Without bf16 instructions, PyTorch's CPU bf16 GEMM is ~12x slower than fp32 (measured on
# AVX2). A bf16 GEMM multiplies bf16 operands and accumulates in fp32, so running it in fp32
# on the bf16-rounded operands and rounding the result is the same math.
CPU_LOW_PRECISION_GEMM_IN_FP32 = not _cpu_has_bf16_units()


def trunc_normal_init_(tensor: torch.Tensor, std: float = 1.0, lower: float = -2.0, upper: float = 2.0) -> torch.Tensor:
    """Truncated normal whose standard deviation really is ``std`` (JAX's definition;
    ``nn.init.trunc_normal_`` returns a smaller one)."""
    with torch.no_grad():
        if std == 0:
            return tensor.zero_()
        sqrt2 = math.sqrt(2)
        a, b = math.erf(lower / sqrt2), math.erf(upper / sqrt2)
        z = (b - a) / 2
        c = (2 * math.pi) ** -0.5
        pdf_u, pdf_l = c * math.exp(-0.5 * lower**2), c * math.exp(-0.5 * upper**2)
        comp_std = std / math.sqrt(1 - (upper * pdf_u - lower * pdf_l) / z - ((pdf_u - pdf_l) / z) ** 2)
        tensor.uniform_(a, b).erfinv_().mul_(sqrt2 * comp_std).clip_(lower * comp_std, upper * comp_std)
    return tensor


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Parameter-free RMSNorm computed in float32."""
    dtype = x.dtype
    x = x.to(torch.float32)
    x = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)
    return x.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k: [B, S, H, D]; cos, sin: [S, D] (float32)."""
    dtype = q.dtype
    q, k = q.to(cos.dtype), k.to(cos.dtype)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    return (q * cos + _rotate_half(q) * sin).to(dtype), (k * cos + _rotate_half(k) * sin).to(dtype)


class CastedLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(trunc_normal_init_(torch.empty(out_features, in_features), std=in_features**-0.5))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(x.dtype)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        if CPU_LOW_PRECISION_GEMM_IN_FP32 and x.dtype in _LOW_PRECISION and x.device.type == "cpu":
            out = F.linear(x.float(), weight.float(), bias.float() if bias is not None else None)
            return out.to(x.dtype)
        return F.linear(x, weight, bias)


class CastedEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, init_std: float, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.embedding_weight = nn.Parameter(trunc_normal_init_(torch.empty(num_embeddings, embedding_dim), std=init_std))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embedding_weight.to(self.cast_to))


def canvas_positions(seq_len: int, geometry_len: int, prefix: int) -> torch.Tensor:
    """Positions (int64 [prefix + seq_len]) of a side-S canvas bucket's tokens in a model
    built for the side-G canvas (seq_len S*S, geometry_len G*G) with ``prefix`` puzzle tokens
    first: cell (r, c) takes r*G + c, as on the G canvas, so positional weights (RoPE,
    learned) mean the same cell in every bucket."""
    side, geometry = math.isqrt(seq_len), math.isqrt(geometry_len)
    if side * side != seq_len or geometry * geometry != geometry_len or side > geometry:
        raise ValueError(
            f"a batch of {seq_len} tokens is no square canvas within the model's "
            f"{geometry}x{geometry} canvas ({geometry_len} tokens)"
        )
    r = torch.arange(side).view(-1, 1)
    c = torch.arange(side).view(1, -1)
    cells = (prefix + r * geometry + c).reshape(-1)
    return torch.cat((torch.arange(prefix), cells))


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_positions: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos_cached = nn.Buffer(emb.cos(), persistent=False)
        self.sin_cached = nn.Buffer(emb.sin(), persistent=False)

    def forward(self) -> CosSin:
        return self.cos_cached, self.sin_cached


class Attention(nn.Module):
    """Multi-head self-attention (non-causal unless asked) with a fused QKV projection."""

    def __init__(self, hidden_size: int, num_heads: int, causal: bool = False):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.causal = causal
        self.qkv_proj = CastedLinear(hidden_size, 3 * hidden_size, bias=False)
        self.o_proj = CastedLinear(hidden_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos_sin: CosSin | None) -> torch.Tensor:
        b, s, _ = x.shape
        qkv = self.qkv_proj(x).view(b, s, 3 * self.num_heads, self.head_dim)
        q, k, v = qkv.split(self.num_heads, dim=2)
        if cos_sin is not None:
            q, k = apply_rope(q, k, *cos_sin)
        if flash_attn_func is not None and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16):
            out = flash_attn_func(q, k, v, causal=self.causal)
        else:
            dtype = q.dtype
            if CPU_LOW_PRECISION_GEMM_IN_FP32 and dtype in _LOW_PRECISION and x.device.type == "cpu":
                q, k, v = q.float(), k.float(), v.float()  # bf16 SDPA backward is ~6x slower here
            out = (
                F.scaled_dot_product_attention(
                    q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=self.causal
                )
                .transpose(1, 2)
                .to(dtype)
            )
        return self.o_proj(out.reshape(b, s, -1))


def swiglu_hidden(hidden_size: int, expansion: float) -> int:
    """Intermediate width: 2/3 of expansion x hidden (SwiGLU's usual size), rounded up to 256."""
    inter = round(expansion * hidden_size * 2 / 3)
    return -(inter // -256) * 256


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, expansion: float):
        super().__init__()
        inter = swiglu_hidden(hidden_size, expansion)
        self.gate_up_proj = CastedLinear(hidden_size, 2 * inter, bias=False)
        self.down_proj = CastedLinear(inter, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class ConvSwiGLU(nn.Module):
    """SwiGLU with a depthwise convolution along the token sequence between the gated
    product and the down projection, then a second SiLU (URM's MLP). With the default
    kernel 2 (padding 1, the first L outputs kept) each token mixes with the one before it
    in the flattened canvas. The conv's weights are float32 here and cast to the input's
    dtype (URM keeps them in bfloat16, where most small updates round away)."""

    def __init__(self, hidden_size: int, expansion: float, kernel_size: int = 2):
        super().__init__()
        inter = swiglu_hidden(hidden_size, expansion)
        self.gate_up_proj = CastedLinear(hidden_size, 2 * inter, bias=False)
        self.dwconv = nn.Conv1d(inter, inter, kernel_size, padding=kernel_size // 2, groups=inter, bias=True)
        self.down_proj = CastedLinear(inter, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        mixed = (F.silu(gate) * up).transpose(1, 2)
        weight, bias = self.dwconv.weight.to(mixed.dtype), self.dwconv.bias
        conv = F.conv1d(
            mixed,
            weight,
            bias.to(mixed.dtype) if bias is not None else None,
            padding=self.dwconv.padding,
            groups=mixed.shape[1],
        )
        return self.down_proj(F.silu(conv[..., : x.shape[1]]).transpose(1, 2))
