"""YAML -> frozen config objects. Every error names its key path.

`schema` (the dataclasses), `parse` (YAML -> Config, `load_config`), `validate` (whole-config
checks), `dump` (the effective config for `check-config`)."""
