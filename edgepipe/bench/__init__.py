"""Host-side measuring of bundles and the reports it writes (BENCH.md, svg)."""
