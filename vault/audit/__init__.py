"""The audit chain (append, checkpoints, verify, query) and the per-RPC recorder."""
