"""The streaming shell: the Faust worker, `grader produce` and `grader tick`.

Nothing about grading lives here: each message goes through grader.core's
one step (see grader/stream/step.py), and the agent only moves bytes between
Kafka, the table and the sinks. Importing this package does not import faust.
"""
