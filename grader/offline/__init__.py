"""grader replay and grader whatif: the core over an events file, written to files."""
