"""realserver: prepares a backend host to sit behind the director, and reverts exactly."""
