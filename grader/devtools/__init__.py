"""Development tooling: `grader dev`, sample events, local tansu/Kafka/Redis launchers.
Not used by the worker or replay."""
