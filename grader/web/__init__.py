"""The worker's HTTP face: /metrics, the customer endpoint and who may call it."""
