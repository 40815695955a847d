"""The Prometheus text exposition format (0.0.4), written as the Rust agent's encoder does.

prometheus_client's own writer is not used: it lives in the module that imports the HTTP
exposition and ``ssl``, and it would name the counter ``kata_agent_scrape_count``
``kata_agent_scrape_count_total`` in HELP and TYPE, where the Rust agent (and so kata-monitor's
view) keeps the plain name. The shim decodes this text with Go's expfmt text parser.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric


def encode(families: Iterable[Metric]) -> str:
    """Text exposition format 0.0.4: families sorted by name, labels by name, samples by their
    labels (as the Rust encoder orders them)."""
    out = []
    for family in sorted(families, key=lambda f: f.name):
        out.append(f"# HELP {family.name} {_escape(family.documentation, quote=False)}\n")
        out.append(f"# TYPE {family.name} {family.type}\n")
        for name, pairs, value in sorted(
            (s.name, sorted(s.labels.items()), s.value) for s in family.samples
        ):
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
            out.append(f"{name}{{{labels}}}" if labels else name)
            out.append(f" {_number(value)}\n")
    return "".join(out)


def _escape(text: str, quote: bool = True) -> str:
    text = text.replace("\\", r"\\").replace("\n", r"\n")
    return text.replace('"', r"\"") if quote else text


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**63:
        return str(int(value))
    return repr(float(value))
