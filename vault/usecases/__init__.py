"""The use cases: subjects and records, batches, erasure, re-key, retention, rights and
consent, support, export, lookup.
"""
