"""steerlib."""
