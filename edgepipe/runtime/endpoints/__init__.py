"""``serve``'s application: each task's endpoints in a module of their own, as route tables."""
