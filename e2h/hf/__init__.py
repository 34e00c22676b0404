"""The Hugging Face layout both ways: config.json (hf_config.py), safetensors files
(safetensors_file.py), whole checkpoints (checkpoint.py, also a command:
``python -m e2h.hf.checkpoint``) and checkpoints read into or exported from FSDP2 shards
(sharded.py)."""
