"""The cost ledger: what each request used, priced, and summed per backend and per UTC day.

A voice turn spends money in two ways: a hosted backend bills units of work (tokens, minutes of
audio, characters), while a local engine costs the machine time it holds. The ledger prices both
from one ``PriceTable`` (built from ``PricingSettings``) so a turn on a local GPU and one on a
hosted API compare in the same currency. It is pure (no web, no engines): the server records
charges and shows them in ``response.done``, ``/v1/turns`` results and ``GET /v1/usage``; the
benchmark can price its runs the same way.

Every charge keeps the price it was recorded with, so a later change of prices never rewrites
history. The ledger keeps this process's totals in memory; the server stores each charge, with
the API key it was for, in the state store (``store.charges``: one row per charge, written in
its own transaction, so a crash cannot tear one), which is what ``GET /v1/usage`` reads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from pipeline.errors import Stage

if TYPE_CHECKING:  # annotations only: the ledger stays importable without pydantic or numpy
    from pipeline.settings import PricingSettings
    from pipeline.stages import CallRecord

BackendKind = Literal["hosted", "gpu", "cpu"]

_GPU_DEVICES = ("cuda", "gpu", "mps")


def backend_kind(backend: str) -> BackendKind:
    """How ``backend`` is billed, read from its name.

    Engines name themselves ``<engine>:<device>`` (``whisper:cpu``, ``transformers:cuda``) and
    hosted backends ``hosted:<host>:<port>`` (see ``models/``): the name is the one thing every
    call record, metric and charge shares, so the kind is derived from it rather than from a
    second registry that could disagree.
    """
    head, _, device = backend.partition(":")
    if head == "hosted":
        return "hosted"
    return "gpu" if device.split(":")[0] in _GPU_DEVICES else "cpu"


@dataclass(frozen=True, slots=True)
class PriceTable:
    """Prices in USD (see ``PricingSettings`` for each field's meaning and default)."""

    hosted_stt_usd_per_minute: float = 0.006
    hosted_llm_input_usd_per_1m_tokens: float = 0.15
    hosted_llm_output_usd_per_1m_tokens: float = 0.60
    hosted_tts_usd_per_1m_chars: float = 15.0
    local_cpu_usd_per_hour: float = 0.05
    local_gpu_usd_per_hour: float = 2.0

    @classmethod
    def from_settings(cls, pricing: PricingSettings) -> PriceTable:
        """The table of the ``pricing`` settings section."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in pricing.model_dump().items() if k in names})

    def price(
        self,
        stage: Stage,
        backend: str,
        *,
        tokens_in: int = 0,
        tokens_out: int = 0,
        chars: int = 0,
        audio_seconds: float = 0.0,
        engine_seconds: float = 0.0,
    ) -> float:
        """What one stage's work costs on ``backend``.

        Hosted: STT by minutes of audio in, the LLM by tokens, TTS by characters; local:
        ``engine_seconds`` times the hourly rate of the machine kind (a hosted call's
        engine seconds are its latency, not billed).
        """
        kind = backend_kind(backend)
        if kind == "cpu":
            return engine_seconds * self.local_cpu_usd_per_hour / 3600
        if kind == "gpu":
            return engine_seconds * self.local_gpu_usd_per_hour / 3600
        if stage == "stt":
            return audio_seconds / 60 * self.hosted_stt_usd_per_minute
        if stage == "llm":
            return (
                tokens_in * self.hosted_llm_input_usd_per_1m_tokens
                + tokens_out * self.hosted_llm_output_usd_per_1m_tokens
            ) / 1e6
        if stage == "tts":
            return chars * self.hosted_tts_usd_per_1m_chars / 1e6
        return 0.0  # vad / pipeline work is never hosted


@dataclass(frozen=True, slots=True)
class Charge:
    """One stage's usage within one request, and what it cost (one ledger line)."""

    at: float
    """When it was recorded (Unix seconds)."""
    request_id: str
    backend: str
    stage: Stage
    tokens_in: int = 0
    tokens_out: int = 0
    chars: int = 0
    audio_seconds: float = 0.0
    engine_seconds: float = 0.0
    cost_usd: float = 0.0
    speculative: bool = False
    """Work for a speculative reply that was dropped before anyone heard it."""

    @property
    def day(self) -> str:
        """The UTC day it belongs to, ``YYYY-MM-DD``."""
        return datetime.fromtimestamp(self.at, UTC).date().isoformat()


@dataclass(frozen=True, slots=True)
class Totals:
    """Usage and cost summed over charges."""

    charges: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    chars: int = 0
    audio_seconds: float = 0.0
    engine_seconds: float = 0.0
    cost_usd: float = 0.0

    def plus(self, c: Charge | Totals) -> Totals:
        """These totals with ``c`` added."""
        return Totals(
            charges=self.charges + (c.charges if isinstance(c, Totals) else 1),
            tokens_in=self.tokens_in + c.tokens_in,
            tokens_out=self.tokens_out + c.tokens_out,
            chars=self.chars + c.chars,
            audio_seconds=self.audio_seconds + c.audio_seconds,
            engine_seconds=self.engine_seconds + c.engine_seconds,
            cost_usd=self.cost_usd + c.cost_usd,
        )


ChargeListener = Callable[[Charge], None]


class Ledger:
    """Records charges and keeps their totals per (UTC day, backend); thread-safe.

    Only the totals are kept, in memory (a long-running server records millions of charges);
    the individual charges are its listeners' to keep (the server's accounting stores them).

    Args:
        prices: The price table.
        clock: Unix time source (tests pin it to put charges on chosen days).
    """

    def __init__(
        self,
        prices: PriceTable | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.prices = prices or PriceTable()
        self.listeners: list[ChargeListener] = []
        """Called with every new charge, e.g. ``Metrics.observe_charge``."""
        self._clock = clock
        self._lock = threading.Lock()
        self._totals: dict[tuple[str, str, bool], Totals] = {}

    @classmethod
    def from_settings(cls, pricing: PricingSettings) -> Ledger:
        """A ledger priced as the ``pricing`` settings section says."""
        return cls(PriceTable.from_settings(pricing))

    def charge(
        self,
        request_id: str,
        backend: str,
        stage: Stage,
        *,
        tokens_in: int = 0,
        tokens_out: int = 0,
        chars: int = 0,
        audio_seconds: float = 0.0,
        engine_seconds: float = 0.0,
        speculative: bool = False,
    ) -> Charge:
        """Price one stage's usage within a request, add it to the totals and return the charge.

        Args:
            request_id: The request (or realtime response) it belongs to.
            backend: The backend that did the work (its ``name``).
            stage: ``stt``, ``llm`` or ``tts``.
            tokens_in: LLM prompt tokens.
            tokens_out: LLM completion tokens.
            chars: Characters spoken (TTS).
            audio_seconds: Seconds of audio in (STT) or out (TTS).
            engine_seconds: Seconds the engine worked (priced for local engines).
            speculative: The work was for a speculative reply that was dropped.

        Returns:
            The charge, with its cost in USD.
        """
        cost = self.prices.price(
            stage,
            backend,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            chars=chars,
            audio_seconds=audio_seconds,
            engine_seconds=engine_seconds,
        )
        charge = Charge(
            at=self._clock(),
            request_id=request_id,
            backend=backend,
            stage=stage,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            chars=chars,
            audio_seconds=audio_seconds,
            engine_seconds=engine_seconds,
            cost_usd=cost,
            speculative=speculative,
        )
        with self._lock:
            self._add(charge)
        for listener in self.listeners:
            listener(charge)
        return charge

    def record_call(self, request_id: str, call: CallRecord, *, speculative: bool = False) -> float:
        """Record one engine call and return its cost (``charge_call``'s)."""
        return self.charge_call(request_id, call, speculative=speculative).cost_usd

    def charge_call(
        self, request_id: str, call: CallRecord, *, speculative: bool = False
    ) -> Charge:
        """Record one engine call (``pipeline.stages.CallRecord``) and return its charge.

        The quantities are the engine's own: STT audio seconds in, LLM prompt and completion
        tokens, TTS characters and audio seconds out, and the call's compute time.
        """
        return self.charge(
            request_id,
            call.backend,
            call.stage,
            tokens_in=call.tokens_in,
            tokens_out=call.tokens_out,
            chars=call.chars,
            audio_seconds=call.audio_in_seconds + call.audio_out_seconds,
            engine_seconds=call.compute_seconds,
            speculative=speculative,
        )

    def total(self) -> Totals:
        """Everything recorded."""
        with self._lock:
            values = list(self._totals.values())
        out = Totals()
        for t in values:
            out = out.plus(t)
        return out

    def by_backend(self) -> dict[str, Totals]:
        """Totals per backend, over all days."""
        out: dict[str, Totals] = {}
        with self._lock:
            for (_, backend, _), t in self._totals.items():
                out[backend] = out.get(backend, Totals()).plus(t)
        return dict(sorted(out.items()))

    def speculative(self) -> Totals:
        """What dropped speculative replies cost (included in every other total too)."""
        out = Totals()
        with self._lock:
            for (_, _, speculative), t in self._totals.items():
                if speculative:
                    out = out.plus(t)
        return out

    def by_day(self) -> dict[str, dict[str, Totals]]:
        """Totals per UTC day (``YYYY-MM-DD``, oldest first), then per backend."""
        out: dict[str, dict[str, Totals]] = {}
        with self._lock:
            for (day, backend, _), t in sorted(self._totals.items()):
                per_day = out.setdefault(day, {})
                per_day[backend] = per_day.get(backend, Totals()).plus(t)
        return out

    def _add(self, charge: Charge) -> None:
        key = (charge.day, charge.backend, charge.speculative)
        self._totals[key] = self._totals.get(key, Totals()).plus(charge)
