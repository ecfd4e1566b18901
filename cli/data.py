"""`hpe-data`: dataset stages that read and write Parquet manifests."""
from __future__ import annotations

import click

from .lazy import LazyGroup

COMMANDS = {
    "import": "cli.data_import:import_cmd",
    "synth": "cli.data_synth:synth",
    "build-masked": "cli.data_masks:build_masked",
    "rotate": "cli.data_rotate:rotate",
    "flip": "cli.data_rotate:flip",
    "stats": "cli.data_stats:stats",
    "preview": "cli.data_preview:preview",
    "split": "cli.data_split:split",
    "merge": "cli.data_manifest:merge",
    "validate": "cli.data_manifest:validate",
}


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hpe-toolkit")
def main():
    """Head-pose datasets as Parquet manifests (one row per face, one pose convention)."""


if __name__ == "__main__":
    main()
