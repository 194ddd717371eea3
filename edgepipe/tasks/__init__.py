"""What differs per task kind: the inputs to feed, the outputs to compare, the metric."""
