"""Shipping bundles to a fleet: OCI push (ModelPack layout, referrers) and pull."""
