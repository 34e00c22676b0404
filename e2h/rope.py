"""RoPE inverse frequencies, plain and with the long-context scalings HF Llama configs name.

``ModelArgs.rope_scaling`` is None (plain RoPE) or one dict in the shape of transformers'
``rope_scaling`` / ``rope_parameters`` without ``rope_theta``:
``{"rope_type": ..., "factor": ...}``.
With D the head dim and i = 0 .. D/2 - 1, the plain inverse frequencies are
``theta ** (-2i / D)`` (Su et al. 2021, RoFormer); the scalings change them as follows.

- linear (position interpolation, Chen et al. 2023): every frequency divided by ``factor``.
- dynamic (NTK-aware): transformers raises theta only once a sequence runs past
  ``max_position_embeddings``. e2h reads that as its ``max_seq_len`` and never runs past it, so
  on every input e2h accepts the table is the plain one.
- llama3 (Llama 3.1): with wavelength ``2 pi / f`` and ``L`` = original_max_position_embeddings,
  wavelengths above ``L / low_freq_factor`` are divided by ``factor``, those below
  ``L / high_freq_factor`` kept, those between blended linearly in ``L / wavelength``.
- yarn (Peng et al. 2023, YaRN): a linear ramp over the frequency index between
  the dimensions that turn ``beta_fast`` and ``beta_slow`` times within ``L`` keeps the fast
  frequencies and divides the slow ones by ``factor``; cos and sin are multiplied by an
  attention factor (default ``0.1 ln(factor) + 1``), so attention logits grow by its square.

Tables are float32, as transformers computes them. ``read_hf_rope`` / ``hf_rope_keys`` map the
dict to and from the config.json keys of transformers 4.x (``rope_theta``, ``rope_scaling``) and
5.x (``rope_parameters``).
"""
from __future__ import annotations

import math
import numbers

import torch

# rope_type -> (required keys, optional keys) besides rope_type; None means "default"
TYPES = {
    "default": (set(), set()),
    "linear": ({"factor"}, set()),
    "dynamic": ({"factor"}, set()),
    "llama3": ({"factor", "low_freq_factor", "high_freq_factor",
                "original_max_position_embeddings"}, set()),
    "yarn": ({"factor", "original_max_position_embeddings"},
             {"attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
              "truncate"}),
}


def check_rope_scaling(scaling: dict | None, where: str = "rope_scaling"):
    """Raise one ValueError line, naming ``where`` and the key, for anything not computed here."""
    if scaling is None:
        return
    kind = scaling.get("rope_type")
    if kind not in TYPES:
        raise ValueError(f"{where}: rope_type={kind!r} is not supported (e2h implements "
                         f"{', '.join(TYPES)})")
    required, optional = TYPES[kind]
    missing = sorted(required - scaling.keys())
    if missing:
        raise ValueError(f"{where}: rope_type {kind!r} needs {missing[0]!r}")
    unknown = sorted(scaling.keys() - required - optional - {"rope_type"})
    if unknown:
        raise ValueError(f"{where}: key {unknown[0]!r}={scaling[unknown[0]]!r} is not understood "
                         f"for rope_type {kind!r} (known: {sorted(required | optional)})")
    for key, value in scaling.items():
        if key == "rope_type" or value is None and key in optional:
            continue
        if key == "truncate":
            ok = isinstance(value, bool)
        elif key == "original_max_position_embeddings":
            ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        else:   # an optional 0 (mscale, beta) means "use the default", as in transformers
            ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
                  and (value > 0 or value == 0 and key in optional))
        if not ok:
            raise ValueError(f"{where}: {key}={value!r} is not valid for rope_type {kind!r}")
    if kind == "llama3" and scaling["high_freq_factor"] <= scaling["low_freq_factor"]:
        raise ValueError(f"{where}: high_freq_factor={scaling['high_freq_factor']!r} must exceed "
                         f"low_freq_factor={scaling['low_freq_factor']!r}")


def read_hf_rope(cfg: dict, file, max_seq_len: int) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) as transformers 4.x (``rope_theta``, ``rope_scaling``) and 5.x
    (``rope_parameters``, which wins over the top-level ``rope_theta``) read them. Keys on which
    the two versions would read different models must agree; otherwise the config is refused."""
    dicts = {}
    for key in ("rope_scaling", "rope_parameters"):
        if cfg.get(key) is not None:
            if not isinstance(cfg[key], dict):
                raise ValueError(f"{file}: {key}={cfg[key]!r} is not a dict")
            dicts[key] = dict(cfg[key])
    named = [("rope_theta", cfg.get("rope_theta"))] + [
        (f"{key}.rope_theta", d.pop("rope_theta", None)) for key, d in dicts.items()]
    thetas = {k: v for k, v in named if v is not None}
    if len(set(thetas.values())) > 1:
        raise ValueError(f"{file}: " + " and ".join(f"{k}={v!r}" for k, v in thetas.items())
                         + " disagree")
    theta = next(iter(thetas.values()), 10000.0)
    for key, d in dicts.items():
        if "type" in d:                                # the name transformers < 4.45 wrote
            if d.setdefault("rope_type", d["type"]) != d.pop("type"):
                raise ValueError(f"{file}: {key}.type and {key}.rope_type disagree")
        d.setdefault("rope_type", "default")
        if d.get("partial_rotary_factor") == 1.0:      # the whole head rotates: no change
            del d["partial_rotary_factor"]
        if d["rope_type"] in ("llama3", "yarn"):       # as transformers 5 fills it in
            d.setdefault("original_max_position_embeddings", max_seq_len)
    if len(dicts) == 2 and dicts["rope_scaling"] != dicts["rope_parameters"]:
        raise ValueError(f"{file}: rope_scaling {cfg['rope_scaling']} and rope_parameters "
                         f"{cfg['rope_parameters']} disagree")
    if not dicts:
        return theta, None
    key, scaling = next(iter(dicts.items()))
    check_rope_scaling(scaling, f"{file}: {key}")
    top = cfg.get("original_max_position_embeddings")
    if top is not None and scaling["rope_type"] in ("llama3", "yarn") and (
            top != scaling["original_max_position_embeddings"]):
        raise ValueError(f"{file}: original_max_position_embeddings={top!r} and {key}."
                         f"original_max_position_embeddings="
                         f"{scaling['original_max_position_embeddings']!r} disagree "
                         f"(transformers 5 reads the first, 4.x the second)")
    return theta, None if scaling["rope_type"] == "default" else scaling


def hf_rope_keys(theta: float, scaling: dict | None) -> dict:
    """The RoPE keys of a config.json that transformers 4.x and 5.x read as the same model:
    ``rope_theta`` / ``rope_scaling`` for 4.x, ``rope_parameters`` for 5.x (4.x ignores it)."""
    return {"rope_theta": theta, "rope_scaling": dict(scaling) if scaling else None,
            "rope_parameters": {**(scaling or {"rope_type": "default"}), "rope_theta": theta}}


def inv_freq(head_dim: int, theta: float, scaling: dict | None = None, device=None) -> torch.Tensor:
    """Inverse frequencies (D/2,) in float32."""
    powers = theta ** (torch.arange(0, head_dim, 2, device=device,
                                    dtype=torch.float32) / head_dim)        # (D/2,) theta^(2i/D)
    plain = 1.0 / powers
    kind = scaling and scaling["rope_type"]
    if kind in (None, "default", "dynamic"):
        return plain
    factor = scaling["factor"]
    if kind == "linear":
        return plain / factor
    if kind == "llama3":
        return _llama3(plain, factor, scaling["low_freq_factor"], scaling["high_freq_factor"],
                       scaling["original_max_position_embeddings"])
    return _yarn(powers, factor, head_dim, theta, scaling)


def _llama3(plain, factor, low_freq_factor, high_freq_factor, original_len):
    wavelen = 2 * math.pi / plain                                            # (D/2,)
    smooth = (original_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * plain / factor + smooth * plain
    out = torch.where(wavelen > original_len / low_freq_factor, plain / factor, blended)
    return torch.where(wavelen < original_len / high_freq_factor, plain, out)


def _yarn(powers, factor, head_dim, theta, scaling):
    # the (fractional) dimension index whose frequency turns n times within the original length
    original_len = scaling["original_max_position_embeddings"]
    dim_of = lambda n: head_dim * math.log(original_len / (2 * math.pi * n)) / (2 * math.log(theta))
    low, high = dim_of(scaling.get("beta_fast") or 32), dim_of(scaling.get("beta_slow") or 1)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001                                                        # no zero-width ramp
    i = torch.arange(head_dim // 2, device=powers.device, dtype=torch.float32)
    keep = 1 - ((i - low) / (high - low)).clamp(0, 1)     # (D/2,) share kept: 1 fast .. 0 slow
    return 1.0 / (factor * powers) * (1 - keep) + 1.0 / powers * keep


def attention_scale(scaling: dict | None) -> float:
    """The factor cos and sin are multiplied by: 1, except for yarn (YaRN's 0.1 ln(s) + 1, or the
    ratio of two such terms with ``mscale`` / ``mscale_all_dim``, or ``attention_factor``)."""
    if scaling is None or scaling["rope_type"] != "yarn":
        return 1.0
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    factor = scaling["factor"]
    m = lambda mscale: 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0
    if scaling.get("mscale") and scaling.get("mscale_all_dim"):
        return m(scaling["mscale"]) / m(scaling["mscale_all_dim"])
    return m(1.0)
