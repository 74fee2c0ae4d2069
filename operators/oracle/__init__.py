"""ORACLE steps: BOOM filter-result messages, documents, model inputs, results, surveys."""
