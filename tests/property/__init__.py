"""Property-based tests (hypothesis) over the spec: pure and fast, plus a bounded end-to-end sample."""
