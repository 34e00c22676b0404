"""Bytes of one model: its parameters, the activations one micro-batch keeps for backward,
its KV cache. The pieces e2h/memory.py adds up into the plan of a run.

Activations are what autograd saves, counted op by op from e2h/model.py, e2h/sft.py and
e2h/rm.py (tests/infra/test_memory.py checks the count against the tensors autograd saves): per
block the fp32 inputs of both norms and their rsqrt, the normed inputs of the projections,
q, k, v, the attention output and its log-sum-exp, the four FFN intermediates; outside the
blocks RoPE's cos and sin, the final norm, the fp32 logits and the loss's own. A frozen norm
weight saves nothing more; a trained one its normalized input. At the start of backward the LM
head adds its largest temporaries, about three fp32 copies of the logits. With activation
checkpointing each block keeps only its input; one block is recomputed at a time.

Letters: C model dim, F FFN dim, V vocab, L layers, H heads, n tokens of a micro-batch;
``s`` bytes of the compute dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

from e2h.model import ModelArgs

BACKWARD_COPIES = 3   # fp32 logits-sized temporaries at the start of backward


@dataclass(frozen=True)
class Model:
    """One model of a run: its shape, head ("lm": vocabulary logits, "score": a reward head),
    whether it trains, whether the paper's freezing applies, whether it keeps an LM head."""
    args: ModelArgs
    head: str = "lm"
    trained: bool = True
    frozen_embeddings: bool = True
    lm_head: bool = True

    def counts(self) -> dict[str, int]:
        """Parameters: total, trained, per block, root (outside blocks), in Linear layers."""
        a = self.args
        C, F, V, L = a.dim, a.ffn_dim, a.vocab_size, a.n_layers
        linear = 2 * C * C + 2 * C * a.n_kv_heads * a.head_dim + 3 * C * F   # q, o; k, v; FFN
        block = linear + 2 * C                                                 # + two norms
        head = V * C if self.lm_head and not a.tie_embeddings else 0
        score = C + 1 if self.head == "score" else 0
        total = L * block + V * C + C + head + score
        if not self.trained:
            trained = 0
        elif self.frozen_embeddings:
            trained = L * linear + score
        else:   # a reward model never trains the LM head it does not use
            trained = total - (head if self.head == "score" else 0)
        return {"total": total, "trained": trained, "block": block, "root": total - L * block,
                "linear": L * linear + head}


def saved_activations(m: Model, rows: int, T: int, s: int, cpu_attention: bool) -> int:
    """Bytes autograd saves in one forward of ``rows`` x ``T`` tokens, compute dtype ``s``
    bytes, no activation checkpointing (norm statistics and logits are fp32 whatever ``s``)."""
    return _block(m, rows, T, s, cpu_attention) * m.args.n_layers - _first_block_saving(m, rows, T) \
        + _outside_blocks(m, rows, T, s)


def _block(m: Model, rows: int, T: int, s: int, cpu_attention: bool) -> int:
    a, n = m.args, rows * T
    C, F, kv = a.dim, a.ffn_dim, a.n_kv_heads * a.head_dim
    per_token = (4 * C + 4            # block input in fp32 and its rsqrt (input_layernorm)
                 + 5 * s * C          # normed x, q, attention output, its (B, T, C) copy, normed h
                 + 2 * s * kv         # k, v
                 + 4 * a.n_heads      # attention's log-sum-exp
                 + 4 * C + 4          # h in fp32 and its rsqrt (post_attention_layernorm)
                 + 4 * s * F)         # gate, silu(gate), up, their product
    if not m.frozen_embeddings:
        per_token += 2 * s * C        # a trained norm weight keeps its normalized input
    mask = 4 * T * T + T if cpu_attention else 0   # PyTorch attention's float mask on CPU
    return n * per_token + mask


def _first_block_saving(m: Model, rows: int, T: int) -> int:
    """A frozen embedding's output needs no gradient: the first norm saves nothing."""
    return rows * T * (4 * m.args.dim + 4) if m.frozen_embeddings else 0


def _outside_blocks(m: Model, rows: int, T: int, s: int) -> int:
    a, n = m.args, rows * T
    rope = 2 * 4 * rows * T * a.head_dim                 # cos, sin (B, 1, T, D) fp32
    final = n * (4 * a.dim + 4) + (0 if m.frozen_embeddings else n * s * a.dim)
    if m.head == "score":   # the head keeps its input; BCE its logits, labels, weights (B, T)
        tokens = 0 if m.frozen_embeddings else 8 * n   # a trained embedding keeps its indices
        return rope + final + n * (s * a.dim + 12) + 4 + tokens
    trained_head = n * s * a.dim if not m.frozen_embeddings else 0
    # fp32 logits kept by log-softmax; the loss keeps the tokens (its index) and two (B, T-1)
    return rope + final + n * (4 * a.vocab_size + 8) + 8 * rows * (T - 1) + 4 + trained_head


def activation_peak(m: Model, rows: int, T: int, s: int, checkpointing: bool,
                    cpu_attention: bool = False) -> int:
    """Peak activation bytes of forward + backward of one micro-batch."""
    n = rows * T
    temporaries = BACKWARD_COPIES * 4 * m.args.vocab_size * n if m.head == "lm" else 0
    if not checkpointing:
        return saved_activations(m, rows, T, s, cpu_attention) + temporaries
    kept = m.args.n_layers * s * m.args.dim * n + 2 * 4 * rows * T * m.args.head_dim
    head = _outside_blocks(m, rows, T, s) - 2 * 4 * rows * T * m.args.head_dim + temporaries
    one_block = _block(m, rows, T, s, cpu_attention) + 3 * s * m.args.ffn_dim * n
    return kept + max(head, one_block)


def kv_cache(args: ModelArgs, rows: int, slots: int, s: int) -> int:
    return 2 * args.n_layers * rows * args.n_kv_heads * args.head_dim * slots * s
