"""The benchmark harness of FloKit Ingest: `python -m bench [--quick]` (see bench/README.md)."""
