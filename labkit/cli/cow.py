"""labkit cow: placeholder until its issue part lands."""

import click


@click.group("cow")
def command() -> None:
    """(not yet built)"""
