"""A click group whose sub-commands are imported only when used (keeps `--help` fast, torch unloaded)."""
from __future__ import annotations

import importlib
import importlib.util

import click


class LazyGroup(click.Group):
    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx):
        present = {n for n, target in self.lazy.items() if importlib.util.find_spec(target.split(":")[0])}
        return sorted(set(super().list_commands(ctx)) | present)

    def get_command(self, ctx, name):
        if name in self.lazy:
            module, attr = self.lazy[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)
