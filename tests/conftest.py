"""Test set-up: one torch thread per process (two threads on two cores run 3-7x slower)."""
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
torch.set_num_threads(1)

SHARED_DATA = ROOT.parent / "shared" / "data"
LLAMA2_TOKENIZER = SHARED_DATA / "tokenizer" / "llama2" / "tokenizer.json"
