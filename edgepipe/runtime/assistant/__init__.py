"""What an assistant needs of a decoder: its own chat template, checked conversations, reasoning."""
