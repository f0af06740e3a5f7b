"""Carrying local datasets to a closed network: scripts/export_data.sh and scripts/import_data.sh."""

from __future__ import annotations

from pathlib import Path

import click

from evalchemy.cli.common import (
    EvalchemyCommand,
    _include_paths,
    _load,
    data_dir_option,
    home,
    resolve_data_dir,
    setup_console_logging,
)


TRANSFER_EXIT_CODES = """\b
Exit codes:
  0    done
  1    unexpected internal error
  2    usage or config error, or (import) files in the data folder that differ and no --replace
  3    a dataset is missing or unusable, or the archive is damaged, tampered with or incomplete
"""


def _rows(splits: dict) -> str:
    return ", ".join(f"{split} {n}" for split, n in splits.items()) + " rows"


@click.command(cls=EvalchemyCommand, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
               epilog=TRANSFER_EXIT_CODES)
@click.option("--config", "config_path", metavar="FILE", help="Config file. Default: configs/eval_config.json.")
@click.option("--benchmark", "benchmarks", multiple=True, metavar="NAME",
              help="Export the datasets of this benchmark, even if disabled (repeatable). Default: every enabled "
                   "benchmark's.")
@click.option("--output", "output", metavar="ARCHIVE", default="evalchemy_data.tar.gz", show_default=True,
              help="The archive to write (.tar.gz).")
@click.option("--include-path", "include_paths", multiple=True, metavar="DIR",
              help="Extra folder of lm-eval task YAMLs (repeatable), as for the run.")
@data_dir_option
def export_data(config_path, benchmarks, output, include_paths, data_dir):
    """On a connected machine: pack the datasets a config needs into one archive with a manifest (names, splits,
    row counts, sha256 of every file): each dataset block's data, fetched from its dataset.source first when the
    data folder lacks it, and a saved copy (data folder: hub/<repo>/<config>) of the hub dataset of every lm-eval
    task it runs. Prints the archive's path.
    """
    from evalchemy.datasets import transfer

    setup_console_logging("INFO")
    config_file = Path(config_path) if config_path else home() / "configs" / "eval_config.json"
    cfg, index = _load(config_file, _include_paths(include_paths))
    report = transfer.export_archive(cfg, resolve_data_dir(data_dir), Path(output).expanduser().resolve(),
                                     tuple(benchmarks), index=index, home=home())
    for item in report.datasets:
        click.echo(f"{item.state} {item.path} for task {item.task} ({item.kind}: {_rows(item.splits)})", err=True)
    click.echo(f"{report.files} files, {report.bytes} bytes; on the closed machine: scripts/import_data.sh "
               f"{report.archive.name}", err=True)
    click.echo(str(report.archive))


@click.command(cls=EvalchemyCommand, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
               epilog=TRANSFER_EXIT_CODES)
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="Overwrite files in the data folder that hold different data.")
@data_dir_option
def import_data(archive, replace, data_dir):
    """On the closed machine: check ARCHIVE (made by scripts/export_data.sh) against its manifest, every file's
    sha256 and every dataset's rows, then put its datasets into the data folder. A damaged, tampered or partial
    archive is refused and the data folder is left as it was.
    """
    from evalchemy.datasets import transfer

    setup_console_logging("INFO")
    report = transfer.import_archive(archive, resolve_data_dir(data_dir), replace=replace)
    for item in report.datasets:
        click.echo(f"{item.state} {report.data_dir / item.path} for task {item.task} ({item.kind}: "
                   f"{_rows(item.splits)})", err=True)
    click.echo(f"{report.files} files written into {report.data_dir}", err=True)


def export_main() -> None:
    export_data.main(prog_name="scripts/export_data.sh")


def import_main() -> None:
    import_data.main(prog_name="scripts/import_data.sh")
