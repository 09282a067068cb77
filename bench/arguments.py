"""argparse types the benchmarks share for their counts."""

import argparse


def at_least_one(text: str) -> int:
    """A whole number of at least 1: a median of no runs, or no rounds, is no figure."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{number} is below 1")
    return number
