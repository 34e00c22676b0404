"""What runs the learner and is not part of it: torch.distributed and FSDP2 (distributed.py),
run folders (runfolder.py, folderlock.py), checkpoints of the training state (trainstate.py),
stop signals (preemption.py), how commands fail (errors.py), files written whole (files.py),
and the memory a model takes (footprint.py, host.py; the plan is ``python -m e2h.memory``)."""
