"""An in-process GGUF model run by llama.cpp: the embedded default (SmolLM2-135M-Instruct)."""
