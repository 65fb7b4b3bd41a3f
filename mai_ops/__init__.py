"""mai-ops: run a Mobile AI challenge from the organizers\x27 side."""
