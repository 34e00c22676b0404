"""MATH answer grading, text in and text out (no torch, no computer algebra): the final answer
of a solution (``extract_answer``) and whether it equals the reference (``grade_answer``).

grader.py extracts and compares; answer_normalize.py is its first, cheapest test;
answer_values.py compares values, which latex_eval.py (the parser) and latex_ops.py (its
arithmetic) compute from LaTeX.
"""
from e2h.grader.grader import equivalent, extract_answer, grade_answer, normalize_answer

__all__ = ["equivalent", "extract_answer", "grade_answer", "normalize_answer"]
