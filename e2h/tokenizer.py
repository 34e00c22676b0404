"""A thin wrapper over ``tokenizers.Tokenizer``: ids, special tokens and character offsets.

Step boundaries are found from character offsets (``encode_with_offsets``), never from
hard-coded token ids: with the Llama tokenizer "\\n\\n" is two byte tokens whose ids depend on
the neighbouring text, and a trained tokenizer may merge it with other characters.

Special ids follow Llama: UNK 0, BOS 1, EOS 2. Llama has no pad token; e2h pads with 0 and
always masks pad positions, so the pad id never reaches a loss.

e2h adds BOS itself (``encode(bos=True)``) and always encodes with ``add_special_tokens=False``.
A tokenizer.json's post-processor is for other tools: the one ``train_tokenizer`` writes adds BOS,
as Llama's does, so ``AutoTokenizer`` on a run folder gives the ids e2h trains on.
"""
from __future__ import annotations

import os
from pathlib import Path

from tokenizers import Regex
from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from e2h.infra.files import disk_errors

SPECIALS = ["<unk>", "<s>", "</s>"]
HF_FILES = ("tokenizer_config.json", "special_tokens_map.json")


class Tokenizer:
    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: tokenizer file not found")
        try:
            self._tok = _HFTokenizer.from_file(str(path))
        except Exception as e:  # the tokenizers error names no file
            raise ValueError(f"{path}: not a valid tokenizer.json ({e})") from None
        self.path = path
        ids = {s: self._tok.token_to_id(s) for s in SPECIALS}
        missing = [s for s, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"{path}: special tokens {missing} not in the vocabulary")
        self.unk_id, self.bos_id, self.eos_id = ids["<unk>"], ids["<s>"], ids["</s>"]
        self.pad_id = self.unk_id
        self.vocab_size = self._tok.get_vocab_size()
        self._pieces = None   # per-id text, built on first use by token_texts

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids (no BOS/EOS) and each token's [start, end) character span in ``text``."""
        enc = self._tok.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def token_texts(self, ids: list[int]) -> list[str]:
        """The text each token contributes, so that ``"".join(token_texts(ids))`` locates
        delimiters in sampled ids without re-tokenizing (a re-encode may split differently).

        A token's text is measured after an anchor token, because decoders drop the leading
        space of the first token. Special tokens contribute "".
        """
        if self._pieces is None:
            anchor = self._tok.encode("a", add_special_tokens=False).ids[:1]
            n = len(self._tok.decode(anchor))
            batch = [anchor + [i] for i in range(self.vocab_size)]
            self._pieces = [t[n:] for t in self._tok.decode_batch(batch, skip_special_tokens=True)]
        return [self._pieces[i] for i in ids]

    def save(self, path: str | os.PathLike):
        self._tok.save(str(path))


def hf_tokenizer_files(model_max_length: int) -> dict[str, dict]:
    """tokenizer_config.json and special_tokens_map.json for a folder with an e2h tokenizer.json.

    They name the special tokens (pad = UNK, as e2h pads) so that ``AutoTokenizer`` sets
    bos/eos/unk/pad and ``padding=True`` works. The generic fast-tokenizer class runs
    tokenizer.json as it is; BOS comes from its post-processor, never from a flag here.
    """
    unk, bos, eos = SPECIALS
    specials = {"bos_token": bos, "eos_token": eos, "unk_token": unk, "pad_token": unk}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **specials,
              "model_max_length": model_max_length, "clean_up_tokenization_spaces": False}
    return dict(zip(HF_FILES, (config, specials)))


def train_tokenizer(texts, path: str | os.PathLike, vocab_size: int = 128) -> Tokenizer:
    """Train a small byte-level BPE on ``texts`` and save it as ``path`` (a tokenizer.json).

    Digits are split one per token before BPE runs, so numbers are spelled digit by digit:
    a small model learns carries far more easily that way than with merged multi-digit tokens.
    """
    tok = _HFTokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        # newlines stand alone, so a step delimiter never merges into the text around it
        pre_tokenizers.Split(Regex(r"\n+"), behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    # BOS first for tools that encode with special tokens (e2h itself never does)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp"
    with disk_errors(Path(path).parent):
        tok.save(tmp)
    os.replace(tmp, path)   # a killed run never leaves half a tokenizer behind
    return Tokenizer(path)
