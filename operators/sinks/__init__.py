"""Sinks to outside services: Fritz annotations and Slack posts, with their pacing."""
