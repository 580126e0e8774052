"""Tasks through the REST API, their jobs, listing, waiting and the one writer."""
