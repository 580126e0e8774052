"""The simulator's knobs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class SimulatorConfig:
    """How the fake EvoLink behaves; the defaults suit a developer watching a task live.

    `api_key`: when set, only that bearer key is accepted; when None any non-empty bearer
    key is. `allow_insecure_callbacks` admits http:// and loopback/private callback URLs
    (what local runs need); False enforces the provider's rules (https, no private, loopback
    or link-local hosts). `error_code_style` picks the current envelope (string codes) or
    the older one (integer codes with `param`/`fallback_suggestion`). `public_base_url`
    overrides the base of result URLs, which otherwise follows the create request's host.
    `task_retention_seconds`, when set, makes tasks unknown (404) that long after creation.
    `callback_delay_seconds` delays the first callback after the terminal state, as the
    provider sends it only once billing is settled. `fetch_inputs` fetches every input
    image when a task starts processing, as EvoLink does (`evolink_simulator.inputs`), each
    within `input_timeout_seconds` and `input_max_bytes` (upstream's 10 MB); a failure
    fails the task.
    """

    api_key: str | None = None
    pending_seconds: float = 0.2
    processing_seconds: float = 0.8
    result_ttl_seconds: float = 86400.0
    task_retention_seconds: float | None = None
    callback_timeout_seconds: float = 10.0
    callback_retry_delays: tuple[float, ...] = (1.0, 2.0, 4.0)
    callback_delay_seconds: float = 0.0
    allow_insecure_callbacks: bool = True
    error_code_style: Literal["string", "integer"] = "string"
    callbacks_enabled: bool = True
    public_base_url: str | None = None
    fetch_inputs: bool = True
    input_timeout_seconds: float = 10.0
    input_max_bytes: int = 10 * 1024 * 1024
