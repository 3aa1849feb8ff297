"""What ours is compared with in the same run: the least code that does the same work."""
