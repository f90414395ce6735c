"""Development and test tooling (dev PKI, dev tokens); never imported by `serve`."""
