"""Reading and writing checkpoints and files safely (safetensors only, atomic writes)."""
