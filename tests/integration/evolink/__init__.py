"""The EvoLink client and the simulator, over real HTTP."""
