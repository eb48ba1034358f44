"""voxline pipeline package."""
