"""What every model family shares: argument checks, the wrapped-pipeline base, model sources,
weights and LoRA files, the CLIP tokenizer writer, the tiny-model helpers."""
