"""The fine-tuning engine: data, methods, training, generation. No UI, no queue."""
