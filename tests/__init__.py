"""The test suite: one folder per part of `infoq_hf` (and of `benchmarks` and `recipes`), `journeys` for
end-to-end walks and failure scenarios, and `helpers` for what the tests share."""
