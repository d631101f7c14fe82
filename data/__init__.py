"""The book's input files (the repository's data/ folder), shipped in the wheel as ``steerlib.data``."""
