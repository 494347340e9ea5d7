"""labkit vm: placeholder until its issue part lands."""

import click


@click.group("vm")
def command() -> None:
    """(not yet built)"""
