"""AntifakePrompt: InstructBLIP prompt-tuned with one pseudo-word; its model, loading and checkpoint format."""
