"""End-to-end tests of the kserve_v2 provider and the KServe-style per-model URLs."""
