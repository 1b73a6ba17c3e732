"""Data stages: sources (ingest), validation, vocabularies and splits (preprocess)."""
