"""Every patch of a private internal of Faust, mode or aiokafka, in one place; each
module says what the dependency does wrong and which test keeps the patch
(docs/architecture.md, "Dependency patches")."""
