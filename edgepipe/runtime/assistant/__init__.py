"""What an assistant needs of a decoder: its own chat template, checked conversations, reasoning, tool calls
and grammar-constrained JSON."""
