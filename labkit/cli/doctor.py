"""labkit doctor: placeholder until its issue part lands."""

import click


@click.group("doctor")
def command() -> None:
    """(not yet built)"""
