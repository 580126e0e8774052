"""The callback receiver over real HTTP."""
