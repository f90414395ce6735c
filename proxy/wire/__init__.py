"""Protobuf bytes: `read` (caller bytes, hostile, at C speed, and the one varint reader),
`walk` (field iteration for trusted bytes), `write` (the few messages the proxy builds)."""
