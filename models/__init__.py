"""voxline models package."""
