"""The pure grading core: events, money, time, state, metrics, policies, scoring, tiers,
the one step per event or tick and the per-message step of the stream. No I/O of its own
(an events file is read line by line, package files through importlib.resources); it
imports nothing else of grader (docs/architecture.md)."""
