"""Local benchmark data: KMMLU-format datasets, hub copies, generated task files, the data preflight, transfer archives."""
