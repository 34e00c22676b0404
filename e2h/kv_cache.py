"""The KV cache of decoding: keys and values of every layer, preallocated once, with rows filled
to their own lengths so that one row can be refilled while the others decode (continuous
batching, e2h/sample.py). The model (e2h/model.py) calls ``prepare``, ``update`` per layer and
``advance`` in each forward; the sampler calls ``insert``, ``clear`` and ``keep`` between steps.

Letters: B rows, T new tokens, S cache slots, Hkv key/value heads, D head dim.
"""
from __future__ import annotations

import torch


class KVCache:
    """Preallocated keys and values for every layer; row b fills slots [0, lengths[b]) in order.

    Rows need not be equally long: a row's next keys go to its own next slots, its positions
    count from slot 0, and attention masks its slots from lengths[b] on, so one row can be
    emptied and refilled with another sequence while the others decode (continuous batching,
    e2h/sample.py). ``length`` is a host-side bound on every row's length: attention reads slots
    [0, length) and never asks the device for the longest row. A forward calls ``prepare``,
    then ``update`` once per layer, then ``advance``.
    """

    def __init__(self, args, batch: int, max_len: int, dtype, device):
        """``args``: the model's ModelArgs (n_layers, n_kv_heads, head_dim)."""
        shape = (batch, args.n_kv_heads, max_len, args.head_dim)   # (B, Hkv, S, D)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(args.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(args.n_layers)]
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)   # (B,)
        self.length = 0
        self.max_len = max_len

    def prepare(self, T: int):
        """Where this forward's T new keys of each row go, and each row's keys after it."""
        if self.length + T > self.max_len:
            raise ValueError(f"KVCache: {self.length + T} slots needed, only {self.max_len} "
                             "allocated")
        B, Hkv, S, _ = self.k[0].shape
        device = self.lengths.device
        first = (torch.arange(B * Hkv, device=device) * S).view(B, Hkv, 1)   # slot 0 of (b, h)
        slots = self.lengths[:, None, None] + torch.arange(T, device=device)  # (B, 1, T)
        self._index = (first + slots).view(-1)        # rows of the (B Hkv S, D) view: (B Hkv T,)
        self.kv_len = self.lengths + T                                        # (B,)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, Hkv, T, D) at slots [lengths[b], lengths[b] + T) of each row b;
        return slots [0, length + T) of the layer, (B, Hkv, length + T, D) each."""
        D, end = k.shape[-1], self.length + k.shape[2]
        self.k[layer].view(-1, D).index_copy_(0, self._index, k.reshape(-1, D))
        self.v[layer].view(-1, D).index_copy_(0, self._index, v.reshape(-1, D))
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, T: int):
        """Every row has T more filled slots (after the last layer)."""
        self.lengths = self.kv_len
        self.length += T

    def insert(self, rows: torch.Tensor, source: "KVCache", source_rows: torch.Tensor,
               lengths: torch.Tensor):
        """Rows ``rows`` become copies of ``source``'s rows ``source_rows`` (repeats allowed:
        n samples of one prompt share its prefill), filled to ``lengths``."""
        T = source.length
        for mine, theirs in zip(self.k + self.v, source.k + source.v):
            mine[rows, :, :T] = theirs[source_rows, :, :T]
        self.lengths[rows] = lengths
        self.length = max(self.length, T)

    def clear(self, rows: torch.Tensor):
        """Rows ``rows`` become empty; ``length`` shrinks to the longest row left (a device sync)."""
        self.lengths[rows] = 0
        self.length = int(self.lengths.max())

    def keep(self, rows: torch.Tensor):
        """Only rows ``rows`` stay, in that order (finished sequences leave the batch)."""
        self.k = [k[rows] for k in self.k]
        self.v = [v[rows] for v in self.v]
        self.lengths = self.lengths[rows]
        self.length = int(self.lengths.max())
