"""Fink VRA steps: Fink alerts to the vetting feature table."""
