"""A Llama-style decoder, written out in full (docs/paper.md, "Models").

Pre-norm blocks ``h = x + attn(norm(x))``, ``out = h + ffn(norm(h))``, SwiGLU feed-forward
``down(silu(gate(x)) * up(x))``, rotary position embeddings, grouped-query attention, no biases.

Two choices make Hugging Face / Llemma checkpoints load without any weight surgery:
- parameter names mirror HF's ``LlamaForCausalLM`` (an HF key is ``"model." + name``, except
  ``lm_head.weight``), so loading is a rename, not a table;
- RoPE uses HF's "rotate-half" layout: the two halves of each head dimension form the
  (real, imaginary) pairs, not adjacent elements. HF's q/k weights are stored for this layout;
  applying the interleaved layout to them gives fluent-looking garbage.

RMSNorm statistics and the RoPE tables are computed in float32 whatever the weight dtype; the
long-context RoPE scalings (linear, dynamic, llama3, yarn) are in e2h/rope.py.
Attention goes through ``e2h.kernels.attend``: the Triton kernel on CUDA, PyTorch on CPU.
``RewardModel`` is the same trunk with a one-logit head in place of the LM head: the reward
models (ORM, PRM, OPRM) and PPO's value model.
Nothing here is distributed: sharding (e2h/infra/distributed.py) wraps the model from outside.

Letters: B batch, T new tokens, S cache slots, H query heads, Hkv key/value heads, D head dim,
C model dim, V vocab.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from e2h import rope
from e2h.kv_cache import KVCache
from e2h.kernels import attend


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None   # None: same as n_heads (no GQA)
    ffn_dim: int = 11008
    vocab_size: int = 32016
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None   # None: plain RoPE; else e.g. {"rope_type": "yarn", ...}
    max_seq_len: int = 4096
    tie_embeddings: bool = False

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(f"ModelArgs: dim {self.dim}, n_heads {self.n_heads} and n_kv_heads "
                             f"{self.n_kv_heads} must divide evenly")
        rope.check_rope_scaling(self.rope_scaling, "ModelArgs.rope_scaling")
        self.head_dim = self.dim // self.n_heads

    @classmethod
    def from_name(cls, name: str, **overrides) -> "ModelArgs":
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("head_dim", None)
        return d


PRESETS = {
    # unit tests: a few thousand parameters, runs in milliseconds
    "tiny": dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=64,
                 max_seq_len=256),
    # the embedded default: trains on the synthetic curriculum on 2 CPU cores in minutes
    "small": dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=4, ffn_dim=352, vocab_size=128,
                  max_seq_len=512),
    # half its layers, about half its parameters: the study's smaller generator and evaluator
    "small-half": dict(dim=128, n_layers=2, n_heads=4, n_kv_heads=4, ffn_dim=352, vocab_size=128,
                       max_seq_len=512),
    "llemma-7b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, ffn_dim=11008,
                      vocab_size=32016, rope_theta=1e4, max_seq_len=4096),
    "llemma-34b": dict(dim=8192, n_layers=48, n_heads=64, n_kv_heads=8, ffn_dim=22016,
                       vocab_size=32016, rope_theta=1e6, max_seq_len=4096),
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # statistics in float32: bf16 has 8 mantissa bits, too few for a mean of squares
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float,
                 scaling: dict | None = None):
    """cos, sin of shape (B, 1, T, D) in float32 for integer positions (B, T)."""
    inv_freq = rope.inv_freq(head_dim, theta, scaling, positions.device)      # (D/2,)
    angles = positions.float()[..., None] * inv_freq                          # (B, T, D/2)
    angles = torch.cat([angles, angles], dim=-1)[:, None]                     # (B, 1, T, D)
    scale = rope.attention_scale(scaling)                                     # yarn: != 1
    return angles.cos() * scale, angles.sin() * scale


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE: pairs are (x[i], x[i + D/2]), as in HF Llama."""
    x32 = x.float()
    x1, x2 = x32.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x32 * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.q_proj = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.k_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.v_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.o_proj = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)

    def forward(self, x, cos, sin, layer: int, cache: KVCache | None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)   # (B, H, T, D)
        k = self.k_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)   # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)   # (B, Hkv, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        kv_len = None
        if cache is not None:
            k_all, v_all = cache.update(layer, k, v)                        # (B, Hkv, S, D)
            # An empty cache holds nothing but the new keys: plain causal attention over them.
            if cache.length > 0:
                k, v, kv_len = k_all, v_all, cache.kv_len
        y = attend(q, k, v, causal=True, kv_len=kv_len)                     # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))             # (B, T, C)


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gate_proj = nn.Linear(args.dim, args.ffn_dim, bias=False)
        self.up_proj = nn.Linear(args.dim, args.ffn_dim, bias=False)
        self.down_proj = nn.Linear(args.ffn_dim, args.dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))   # SwiGLU


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, layer: int):
        super().__init__()
        self.layer = layer
        self.input_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.self_attn = Attention(args)
        self.post_attention_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.mlp = FeedForward(args)

    def forward(self, x, cos, sin, cache: KVCache | None = None):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, self.layer, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args, i) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.lm_head = None if args.tie_embeddings else nn.Linear(args.dim, args.vocab_size, bias=False)
        self.init_weights()

    def init_weights(self, std: float = 0.02):
        """Normal(0, std) weights, output projections scaled by 1/sqrt(2 * n_layers) (GPT-2)."""
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight") or name == "norm.weight":
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, std=std / math.sqrt(2 * self.args.n_layers))
            else:
                nn.init.normal_(p, std=std)

    def hidden(self, tokens: torch.Tensor, positions: torch.Tensor | None = None,
               cache: KVCache | None = None) -> torch.Tensor:
        """Final-normed hidden states (B, T, C): the trunk that LM, reward and value heads share."""
        B, T = tokens.shape
        if positions is None:
            offset = cache.length if cache is not None else 0
            if offset + T > self.args.max_seq_len:
                raise ValueError(f"{offset + T} positions exceed max_seq_len {self.args.max_seq_len}")
            positions = torch.arange(T, device=tokens.device).expand(B, T)
            if cache is not None:
                positions = positions + cache.lengths[:, None]              # (B, T): its slots
        cos, sin = rope_cos_sin(positions, self.args.head_dim, self.args.rope_theta,
                                self.args.rope_scaling)
        if cache is not None:
            cache.prepare(T)
        x = self.embed_tokens(tokens)                                       # (B, T, C)
        for block in self.layers:
            x = block(x, cos, sin, cache)
        if cache is not None:
            cache.advance(T)
        return self.norm(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> float32 logits (B, T, V); log-softmax must never run in bf16."""
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h, weight).float()

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        return self.logits(self.hidden(tokens, positions, cache))


class RewardModel(nn.Module):
    """The trunk with a zero-initialized linear head: one logit per position, p = sigmoid(logit).

    The zero init makes every prediction 0.5 at step 0, so training starts from "no opinion"
    rather than from noise. PPO's value model is the same module (its logit is the value).
    ``labels=2`` is the head of TRL's PRMs (a token classifier whose label 1 means "this step is
    correct"): p = softmax(z_0, z_1)[1] = sigmoid(z_1 - z_0), so its logit is z_1 - z_0.
    """

    def __init__(self, trunk: Transformer, labels: int = 1):
        super().__init__()
        if labels not in (1, 2):
            raise ValueError(f"RewardModel: labels={labels}; a reward head has 1 or 2 labels")
        self.trunk = trunk
        if trunk.lm_head is not None:
            # never used: frozen so optimizers skip it and DDP finds no unused trainable parameter
            trunk.lm_head.requires_grad_(False)
        w = trunk.embed_tokens.weight                # the head lives where the trunk does
        self.score = nn.Linear(trunk.args.dim, labels, device=w.device, dtype=w.dtype)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    @classmethod
    def from_policy(cls, model: Transformer) -> "RewardModel":
        """A reward (or value) model whose trunk is a copy of ``model``; ``model`` is untouched."""
        return cls(copy.deepcopy(model))

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, T) -> float32 logits (B, T), one per position."""
        h = self.trunk.hidden(tokens, positions)                             # (B, T, C)
        z = self.score(h).float()                                            # (B, T, labels)
        return z[..., 1] - z[..., 0] if z.shape[-1] == 2 else z.squeeze(-1)  # (B, T)

    def two_labels(self) -> "RewardModel":
        """The same scores in TRL's two-label layout, in place: logits (0, z), since
        softmax(0, z)[1] = sigmoid(z) exactly."""
        if self.score.out_features == 2:
            return self
        head = nn.Linear(self.score.in_features, 2, device=self.score.weight.device,
                         dtype=self.score.weight.dtype)
        with torch.no_grad():
            head.weight.copy_(torch.cat([torch.zeros_like(self.score.weight),
                                         self.score.weight]))                # (2, C)
            head.bias.copy_(torch.cat([torch.zeros_like(self.score.bias), self.score.bias]))
        self.score = head
        return self
