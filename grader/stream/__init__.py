"""The streaming shell: the Faust worker (`grader worker`).

Nothing about grading lives here: each message goes through the core's
per-message step (grader/core/step.py), and the agent only moves bytes between
Kafka, the tables and the sinks. Every patch of a Faust, mode or aiokafka
internal is in stream/faust_patches/. Importing this package does not import faust.
"""
