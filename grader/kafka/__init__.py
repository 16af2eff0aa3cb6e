"""grader's own Kafka clients: TLS/SASL, topic admin, producing events, reading the
changelog, the policies topic (the worker's consumer is Faust's, grader.stream)."""
