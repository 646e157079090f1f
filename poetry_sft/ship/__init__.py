"""Shipping a poet: merge an adapter into the base (merge), GGUF + Ollama Modelfile (export), upload
to the Hugging Face Hub (push)."""
