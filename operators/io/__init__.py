"""Generic input and output: Kafka, dead letters, append-only files."""
