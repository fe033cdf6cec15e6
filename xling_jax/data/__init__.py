"""Text in: tokenizers (SentencePiece, HF tokenizer.json, the toy model's), parallel corpora and
the study's languages.

May import: `xling_jax.runtime`, `xling_jax.checkpoints` (a GGUF carries its tokenizer; the toy
tokenizer is a packaged file), `xling_jax.model`.
"""
