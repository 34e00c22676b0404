"""The KV cache: rows taken from another cache, kept, cleared, and an overflow refused."""
import pytest
import torch

from e2h.kv_cache import KVCache
from e2h.model import ModelArgs, Transformer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Transformer(ModelArgs.from_name("tiny"))
    m.init_weights(std=0.3)
    return m


def test_cache_insert_keep_clear_and_overflow(model):
    source = KVCache(model.args, 2, 3, torch.float32, "cpu")
    model(torch.tensor([[1, 2, 3], [4, 5, 6]]), cache=source)
    cache = KVCache(model.args, 3, 4, torch.float32, "cpu")
    # rows 2 and 0 take source row 1, row 1 takes source row 0 (filled to 2 of its 3 slots)
    cache.insert(torch.tensor([2, 0, 1]), source, torch.tensor([1, 1, 0]), torch.tensor([3, 3, 2]))
    assert cache.k[0].shape == (3, 2, 4, 8) and cache.lengths.tolist() == [3, 2, 3]
    assert torch.equal(cache.k[1][0, :, :3], source.k[1][1]) and torch.equal(cache.k[1][2], cache.k[1][0])
    assert torch.equal(cache.v[0][1, :, :3], source.v[0][0]) and cache.length == 3
    cache.keep(torch.tensor([2, 1]))
    assert cache.lengths.tolist() == [3, 2] and torch.equal(cache.v[1][0, :, :3], source.v[1][1])
    cache.clear(torch.tensor([0]))
    assert cache.lengths.tolist() == [0, 2] and cache.length == 2
    model(torch.zeros(2, 2, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="5 slots needed, only 4 allocated"):
        model(torch.zeros(2, 1, dtype=torch.long), cache=cache)
