"""The paper's text format, and tokenization with per-token loss masks and labels.

Every stage (SFT, reward models, sampling, RL) reads and writes one format (docs/paper.md, "Text
format"):

    # Question\\n\\n{problem}\\n\\n# Solution\\n\\n{step 1}\\n\\n{step 2}\\n\\n...\\n\\n# Answer\\n\\n{answer}</s>

The prompt ends after "# Solution\\n\\n". Steps are separated by a blank line; EOS is a token,
never text. Token spans come from character offsets, so any tokenizer works.

Canonical jsonl records (one JSON object per line; see docs/data.md):
- problem:    {"id", "question", "answer", "level" (1-5), "subject", "steps": [str] (optional)}
- SFT:        {"id", "question", "completion", "level"}    (or "prompt" instead of "question";
              "eos": false for a target that is a middle step)
- RM:         {"id", "question", "steps": [str], "answer": str|null,
               "step_labels": [1|0|null], "outcome_label": 1|0|null, "level"}
- sample:     {"id", "question", "completion", "answer", "correct", "level",
               "step_scores": [float], "outcome_score": float|null}
Easy = levels 1-3, hard = levels 4-5: ``EASY_LEVELS`` / ``HARD_LEVELS`` below are the one
definition of difficulty every stage, evaluation and the study use.
"""
from __future__ import annotations

EASY_LEVELS = (1, 2, 3)
HARD_LEVELS = (4, 5)
LEVELS = EASY_LEVELS + HARD_LEVELS

PROMPT = "# Question\n\n{question}\n\n# Solution\n\n"
STEP_SEP = "\n\n"
ANSWER_HEADING = "# Answer"


def difficulty(level) -> str | None:
    """"easy" (levels 1-3), "hard" (4-5), or None for a record without a MATH level."""
    return "easy" if level in EASY_LEVELS else "hard" if level in HARD_LEVELS else None


def is_easy(level) -> bool:
    """Levels 1-3 are easy, 4-5 hard; anything else (None, GSM8K, 7) is a ValueError."""
    if type(level) is not int or level not in LEVELS:
        raise ValueError(f"unknown level {level!r}: easy/hard needs a MATH level 1-5")
    return level in EASY_LEVELS


def format_prompt(question: str) -> str:
    return PROMPT.format(question=question.strip())


def format_solution(steps: list[str], answer: str | None) -> str:
    body = STEP_SEP.join(s.strip() for s in steps)
    if answer is None:
        return body
    tail = f"{ANSWER_HEADING}{STEP_SEP}{answer.strip()}"
    return f"{body}{STEP_SEP}{tail}" if body else tail


def parse_solution(text: str) -> tuple[list[str], str | None]:
    """Split a completion into its steps and final answer (None when "# Answer" is missing)."""
    answer = None
    cut = text.rfind(ANSWER_HEADING)
    if cut >= 0:
        answer = text[cut + len(ANSWER_HEADING):].strip() or None
        text = text[:cut]
    steps = [s.strip() for s in text.split(STEP_SEP) if s.strip()]
    return steps, answer


def tokenize_sft(tok, prompt: str, completion: str, eos: bool = True):
    """Tokens [BOS] + prompt + completion (+ EOS) and a 0/1 mask marking target tokens.

    ``loss_mask[t] = 1`` means token t is trained on (predicted from tokens < t): every
    completion token and the EOS; BOS and the prompt are 0. Prompt and completion are
    tokenized together, as the model will see them, and split by character offset.
    """
    ids, offsets = tok.encode_with_offsets(prompt + completion)
    mask = [1 if start >= len(prompt) else 0 for start, _ in offsets]
    tokens = [tok.bos_id] + ids + [tok.eos_id] * eos
    loss_mask = [0] + mask + [1] * eos
    return tokens, loss_mask


def _step_spans(prompt: str, steps: list[str]) -> list[tuple[int, int]]:
    """Character span of each step in prompt + solution, its trailing delimiter included."""
    spans, pos = [], len(prompt)
    for step in steps:
        end = pos + len(step.strip()) + len(STEP_SEP)
        spans.append((pos, end))
        pos = end
    return spans


def tokenize_rm(tok, question: str, steps: list[str], answer: str | None,
                step_labels: list[int | None] | None, outcome_label: int | None):
    """Tokens of one reward-model example with per-token labels and 0/1 weights.

    PRM: every token of step k, its trailing "\\n\\n" included (also after the last step when
    there is no answer section), carries ``step_labels[k]``
    (None: weight 0, e.g. the chosen prefix before a rated PRM800K step).
    ORM: ``outcome_label`` on every solution token. A token whose step has no label falls back
    to the outcome label, so one record can carry both kinds (the "# Answer" section is
    labelled by the outcome). BOS, prompt and EOS have weight 0.
    """
    prompt = format_prompt(question)
    step_labels = list(step_labels) if step_labels is not None else [None] * len(steps)
    if len(step_labels) != len(steps):
        raise ValueError(f"{len(steps)} steps but {len(step_labels)} step labels")
    spans = _step_spans(prompt, steps)
    solution = format_solution(steps, answer)
    if answer is None:
        # a rated step without the answer section (a PRM800K prefix step) still ends with its
        # delimiter: the "\n\n" token is where the step score is read
        solution += STEP_SEP
    ids, offsets = tok.encode_with_offsets(prompt + solution)
    labels, weights = [0.0], [0.0]                                 # BOS
    for start, _ in offsets:
        label = None
        if start >= len(prompt):
            k = next((k for k, (a, b) in enumerate(spans) if a <= start < b), None)
            label = step_labels[k] if k is not None else None
            if label is None:
                label = outcome_label
        labels.append(float(label or 0))
        weights.append(0.0 if label is None else 1.0)
    return [tok.bos_id] + ids + [tok.eos_id], labels + [0.0], weights + [0.0]


def score_positions(tok, completion: list[int]) -> tuple[list[int], int | None]:
    """Where a reward model is read out, as indices into ``completion`` (no prompt tokens).

    Step scores: the token holding the first character of each "\\n\\n" that ends a step
    (steps before "# Answer"). Outcome score: the last token of the answer text, before EOS.
    Sampled ids are located through each token's own text, never by re-tokenizing.
    """
    pieces = tok.token_texts(completion)
    ends, n = [], 0
    for p in pieces:
        n += len(p)
        ends.append(n)                                  # ends[t]: char end of token t
    text = "".join(pieces)

    def token_at(char: int) -> int:
        return next(t for t, e in enumerate(ends) if e > char)

    cut = text.rfind(ANSWER_HEADING)
    body = text if cut < 0 else text[:cut]
    steps, pos = [], 0
    while True:
        d = body.find(STEP_SEP, pos)
        if d < 0:
            break
        if body[pos:d].strip():                         # a delimiter after real step text
            steps.append(token_at(d))
        pos = d + len(STEP_SEP)
        while pos < len(body) and body[pos] == "\n":    # "\n\n\n" is still one delimiter
            pos += 1
    answer_pos = None
    if cut >= 0:
        tail = text[cut + len(ANSWER_HEADING):]
        stripped = tail.rstrip()
        if stripped.strip():
            answer_pos = token_at(cut + len(ANSWER_HEADING) + len(stripped) - 1)
    return steps, answer_pos
