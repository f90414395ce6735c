"""CPU per decision for hostile request bodies (issue 14): the namespace read, old vs new.

"old" is the field-by-field Python walk the proxy used before (still in `proxy.wire.read` as
`_walk_exact`, now only for small bodies with unknown groups); "new" is `extract_namespace`
(upb plus the C-speed Go-rule checks). Each body is 4 MiB of the cheapest fields an attacker can
pick, so the per-field cost dominates. CPU seconds (process time), best of --repeat runs.

    python bench/body_work.py [--size 4194304] [--repeat 3] [--no-old]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from proxy.errors import MalformedRequestError
from proxy.wire.read import _walk_exact, extract_namespace


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out) + bytes([n])


def _bodies(size: int) -> dict[str, bytes]:
    def fill(unit: bytes, head: bytes = b"\x0a\x07default") -> bytes:
        return head + unit * ((size - len(head)) // len(unit))

    # 9 bytes >= 0x80 then 0x02: an overflow look-alike inside a payload forces the exact check.
    lookalike = b"\x00" + b"\xff" * 9 + b"\x02"
    payload = lookalike * 11 + b"\x00" * 6  # 127 bytes
    return {
        "varint fields (2 B each)": fill(b"\x10\x00"),
        "empty LEN fields (2 B)": fill(b"\x12\x00"),
        "namespace repeated (3 B)": fill(b"\x0a\x01a"),
        "fixed32 fields (5 B)": fill(b"\x15\x00\x00\x00\x00"),
        "2-byte tags (3 B)": fill(b"\x80\x01\x00"),
        "10-byte varints (11 B)": fill(b"\x10" + b"\xff" * 9 + b"\x01"),
        "overflow look-alikes in payloads": fill(b"\x12\x7f" + payload),
        "look-alikes + tiny fields": fill(b"\x12\x0b" + lookalike + b"\x10\x00" * 20),
        # Field 100 (tag \xa2\x06): above the numbers the payload-skipping probe declares.
        "look-alikes in one field above 63": b"\x0a\x07default\xa2\x06"
        + _varint(size - 14)
        + (payload * (size // len(payload) + 1))[: size - 14],
        "look-alikes in fields above 63": fill(b"\xa2\x06\x7f" + payload),
        "look-alikes + tiny fields above 63": fill(
            b"\xa2\x06\x0b" + lookalike + b"\xa0\x06\x00" * 20
        ),
        "random payload (one field)": b"\x0a\x07default\x12"
        + _varint(size - 16)
        + os.urandom(size - 16),
        "unknown groups (refused > 64 KiB)": fill(b"\x1b\x1c"),
        "real overflow at the end": fill(b"\x10\x00")[:-12] + b"\x10" + b"\xff" * 9 + b"\x02",
    }


def _cpu(fn: Callable[[], object], repeat: int) -> tuple[float, str]:
    best, outcome = float("inf"), ""
    for _ in range(repeat):
        start = time.process_time()
        try:
            fn()
            outcome = "accepted"
        except MalformedRequestError:
            outcome = "refused"
        best = min(best, time.process_time() - start)
    return best, outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-old", action="store_true", help="skip the slow Python walk")
    args = parser.parse_args()
    print(f"| body ({args.size} bytes) | new CPU ms | old CPU ms | outcome |")
    print("|---|---:|---:|---|")
    for name, body in _bodies(args.size).items():
        new, outcome = _cpu(lambda b=body: extract_namespace(b, 1), args.repeat)  # type: ignore[misc]
        old = (
            "-" if args.no_old else f"{_cpu(lambda b=body: _walk_exact(b, 1), 1)[0] * 1000:.0f}"  # type: ignore[misc]
        )
        print(f"| {name} | {new * 1000:.1f} | {old} | {outcome} |")


if __name__ == "__main__":
    main()
