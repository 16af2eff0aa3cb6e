"""Adapters that publish what the worker produces (Kafka now; Redis and metrics later)."""
