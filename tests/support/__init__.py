"""What the test files share (they do not import each other)."""
