"""The `grader` command (grader.cli.main); `grader worker`, `produce`, `redis-sync` and the
other stream commands are in grader.cli.stream."""
