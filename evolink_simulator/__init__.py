"""A faithful fake of EvoLink over real HTTP, for `edithook dev` and the integration tests.

It speaks the documented wire shapes (create, get, error envelopes, callbacks with the real
timeout and 1 s / 2 s / 4 s retry schedule, expiring result links with real PNG bytes, every
input image fetched and checked before the edit, with sample images standing in for the
example domains' hosts), with shortened timings and failure modes that tests and curl users
can trigger:

- prompt directives: `[sim:fail=<code>]`, `[sim:cancel]`, `[sim:cancel-as-failed]`,
  `[sim:no-callback]`, `[sim:slow=<seconds>]`, `[sim:hold]`, `[sim:results=<k>]`;
- control endpoints under `/_sim/` (end a task now, inspect it, counters, injected faults).
"""

from evolink_simulator.app import create_simulator_app
from evolink_simulator.config import SimulatorConfig

__all__ = ["SimulatorConfig", "create_simulator_app"]
