"""The label value the loss skips (prompt tokens, padding): PyTorch's cross-entropy `ignore_index`."""

IGNORE_INDEX = -100
