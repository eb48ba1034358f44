"""voxline server package."""
