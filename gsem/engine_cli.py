"""Placeholder: replaced by its real module."""

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    """Register nothing yet."""
