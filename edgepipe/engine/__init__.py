"""Building a bundle: the spec, the stage runner, the one recipe search, publishing."""
