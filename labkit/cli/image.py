"""labkit image: placeholder until its issue part lands."""

import click


@click.group("image")
def command() -> None:
    """(not yet built)"""
