"""python -m study: see study/main.py."""
import sys

from study.main import run

sys.exit(run())
