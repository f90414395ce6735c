"""Certificate expiry: Temporal's warning/error windows over loaded material; gauge timestamps.

Pure functions of the material and the time: the reloader logs the findings
(`certificate_expiring`) and feeds the timestamps to the expiry gauge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from proxy.tls.material import TLSMaterials

# Temporal treats errorWindow 0 as "now + 10 years": every finding is an error.
_TEN_YEARS = 10 * 365.25 * 24 * 3600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpiryFinding:
    label: str
    not_after: float
    level: Literal["warning", "error"]
    expired: bool
    subject: str
    serial: int
    is_ca: bool
    dns_names: tuple[str, ...]
    sha256: str


def expiry_timestamps(materials: TLSMaterials) -> dict[str, float]:
    """not_after per gauge label; for a CA bundle the earliest one."""
    out: dict[str, float] = {}
    for cert in materials.certificates():
        current = out.get(cert.label)
        out[cert.label] = cert.not_after if current is None else min(current, cert.not_after)
    return out


def expiring_certificates(
    materials: TLSMaterials, now: float, warning_window: float, error_window: float
) -> list[ExpiryFinding]:
    """Temporal's rules: the window is warningWindow, or errorWindow when that is 0 (both 0:
    no check). A certificate ending before now+window is reported; it is an error when expired
    or ending before now+errorWindow (errorWindow 0: always an error), else a warning.
    """
    window = warning_window or error_window
    if window <= 0:
        return []
    error_until = now + (error_window if error_window > 0 else _TEN_YEARS)
    findings = []
    for cert in materials.certificates():
        if cert.not_after >= now + window:
            continue
        expired = cert.not_after < now
        findings.append(
            ExpiryFinding(
                label=cert.label,
                not_after=cert.not_after,
                level="error" if expired or cert.not_after < error_until else "warning",
                expired=expired,
                subject=cert.subject,
                serial=cert.serial,
                is_ca=cert.is_ca,
                dns_names=cert.dns_names,
                sha256=cert.sha256,
            )
        )
    return findings
