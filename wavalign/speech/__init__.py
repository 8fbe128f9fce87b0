"""Real audio: speech synthesized with the system's text-to-speech programs (for tests and benchmarks)."""
