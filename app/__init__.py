"""edithook: submits image edits to EvoLink and keeps track of them."""
