"""Input images clients upload, for tasks to name in `image_ids`."""
