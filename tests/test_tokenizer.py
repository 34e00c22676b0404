"""The tokenizer wrapper on the Llama-2 tokenizer and on a small trained byte-level BPE."""
import pytest
from tokenizers import Tokenizer as RawTokenizer

from conftest import LLAMA2_TOKENIZER
from e2h.tokenizer import Tokenizer, hf_tokenizer_files, train_tokenizer

TEXT = "# Question\n\nWhat is $2+3$?\n\n# Solution\n\nWe add: 2 + 3 = 5.\n\n# Answer\n\n5"


@pytest.fixture(scope="module")
def llama():
    if not LLAMA2_TOKENIZER.is_file():
        pytest.skip(f"{LLAMA2_TOKENIZER} not found")
    return Tokenizer(LLAMA2_TOKENIZER)


def test_llama2_special_ids_and_vocabulary(llama):
    assert (llama.unk_id, llama.bos_id, llama.eos_id, llama.pad_id) == (0, 1, 2, 0)
    assert llama.vocab_size == 32000                                # Llemma's embedding has 32016 rows
    ids = llama.encode("hi", bos=True, eos=True)
    assert (ids[0], ids[-1], len(ids)) == (1, 2, 3)                 # "hi" is one token


def test_llama2_offsets_cover_the_text_and_newlines_are_byte_tokens(llama):
    ids, offsets = llama.encode_with_offsets(TEXT)
    assert len(ids) == len(offsets) and offsets[0][0] == 0 and offsets[-1][1] == len(TEXT)
    assert all(a[1] == b[0] for a, b in zip(offsets, offsets[1:]))   # contiguous spans
    newlines = [i for i, (a, b) in zip(ids, offsets) if TEXT[a:b] == "\n"]
    assert len(newlines) == TEXT.count("\n") and set(newlines) == {13}   # <0x0A>
    assert llama.decode(ids) == TEXT


def test_llama2_token_texts_join_back_to_the_text(llama):
    ids, offsets = llama.encode_with_offsets(TEXT)
    pieces = llama.token_texts(ids)
    # the first token carries the dummy prefix space Llama's normalizer adds ("▁#" -> " #")
    assert pieces[0] == " #"
    assert "".join(pieces[1:]) == TEXT[offsets[1][0]:]
    assert pieces[1:] == [TEXT[a:b] for a, b in offsets[1:]]
    assert llama.token_texts([llama.bos_id, llama.eos_id]) == ["", ""]


def test_missing_and_invalid_tokenizer_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.json: tokenizer file not found"):
        Tokenizer(tmp_path / "nothing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not a valid tokenizer.json"):
        Tokenizer(tmp_path / "bad.json")


def synthetic_texts():
    return [f"# Question\n\nCompute {a} + {b}.\n\n# Solution\n\n{a} + {b} = {a + b}\n\n"
            f"# Answer\n\n{a + b}" for a in range(5, 400, 37) for b in (12, 907)]


def test_trained_tokenizer_round_trips_and_keeps_digits_single(tmp_path):
    tok = train_tokenizer(synthetic_texts(), tmp_path / "tok" / "tokenizer.json", vocab_size=96)
    assert (tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2) and tok.vocab_size <= 96
    assert Tokenizer(tmp_path / "tok").vocab_size == tok.vocab_size   # a directory works too
    text = "# Question\n\nCompute 1234 + 56.\n\n# Solution\n\n1234 + 56 = 1290\n\n# Answer\n\n1290"
    ids, offsets = tok.encode_with_offsets(text)
    pieces = tok.token_texts(ids)
    assert tok.decode(ids) == text and "".join(pieces) == text
    assert pieces == [text[a:b] for a, b in offsets]
    assert [p for p in pieces if any(c.isdigit() for c in p)] == list("1234561234561290" + "1290")
    assert all(set(p) == {"\n"} for p in pieces if "\n" in p)      # newlines never merge with text
    assert not list(tmp_path.glob("tok/*.tmp"))


@pytest.mark.parametrize("which", ["trained", "llama"])
def test_tools_that_add_special_tokens_get_e2h_ids_bos_first(tmp_path, request, which):
    """HF tools encode with the tokenizer.json's post-processor; e2h adds BOS itself, once."""
    if which == "trained":
        tok = train_tokenizer(synthetic_texts(), tmp_path / "tokenizer.json", vocab_size=96)
    else:
        tok = request.getfixturevalue("llama")
    ids = tok.encode(TEXT, bos=True)
    assert RawTokenizer.from_file(str(tok.path)).encode(TEXT).ids == ids
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1
    assert tok.encode(TEXT) == ids[1:] == tok.encode_with_offsets(TEXT)[0]   # no BOS unless asked


def test_hf_tokenizer_files_name_the_tokens_e2h_uses(tmp_path):
    tok = train_tokenizer(synthetic_texts(), tmp_path / "tokenizer.json", vocab_size=96)
    config, specials = hf_tokenizer_files(512).values()
    assert (config["model_max_length"], config["tokenizer_class"]) == (512, "PreTrainedTokenizerFast")
    raw = RawTokenizer.from_file(str(tok.path))
    assert {k: raw.token_to_id(v) for k, v in specials.items()} == {
        "bos_token": tok.bos_id, "eos_token": tok.eos_id, "unk_token": tok.unk_id,
        "pad_token": tok.pad_id}
    assert all(config[k] == v for k, v in specials.items())
