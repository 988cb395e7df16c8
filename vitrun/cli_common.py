"""What every `vitrun` command module shares: exit codes, the console, one-line usage errors,
and `--option KEY=VALUE` parsing. Imports stay light: `vitrun --help` loads this."""

from __future__ import annotations

import os
import sys

import click

EXIT_USAGE = 2  # bad input: recipe, report spec, arguments
EXIT_FAILED = 1  # a stage failed while running
EXIT_INTERRUPTED = 130


def make_console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def fail(message: str, code: int = EXIT_USAGE) -> None:
    from rich.markup import escape  # messages quote TOML tables such as [finetune]: not markup

    if os.environ.get("RANK", "0") != "0":  # under torchrun every rank fails alike: rank 0 says why
        sys.exit(code)
    make_console(stderr=True).print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True, markup=True)
    sys.exit(code)


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def int_list(ctx, param, value):
    if value is None:
        return None
    try:
        numbers = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected integers separated by commas, e.g. 64,224, got {value!r}") from None
    if not numbers or min(numbers) < 1:
        raise click.BadParameter(f"expected positive integers separated by commas, got {value!r}")
    return numbers


def source_options(items):
    """`--option KEY=VALUE` pairs as SourceOptions."""
    from vitrun.data import SourceOptions

    return SourceOptions(**parse_options(items, tuple(SourceOptions.__dataclass_fields__)))


def parse_options(items, allowed: tuple[str, ...] | None = None) -> dict:
    """`--option KEY=VALUE` pairs (values read as TOML, else text); KEY one of `allowed` if given."""
    from vitrun.recipe import toml_value

    fields = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or (allowed is not None and key not in allowed):
            fail(f"--option {item}: expected KEY=VALUE" + (f" with KEY one of {', '.join(allowed)}" if allowed else ""))
        fields[key] = toml_value(text)
    return fields
