"""The study: the paper's findings in miniature, one command (``python -m study``).

main.py is the entry (what runs, in which order); inputs.py the files each seed reads,
runner.py the stages as subprocesses, paired.py the problem-level differences with bootstrap
intervals, report.py the report and its findings, figures.py the SVG figures. Nothing here
imports torch: the study is a process manager, its stages are train.py and e2h's commands.
"""
