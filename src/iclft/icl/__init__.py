"""In-context learning: prompts with k demonstrations, the batched engine, evaluation of a grid
of cells into records, their metrics (intervals) and paired comparisons of settings."""
