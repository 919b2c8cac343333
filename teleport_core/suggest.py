"""Did-you-mean suggestions for unknown keys, commands and names."""

from __future__ import annotations


def did_you_mean(word: str, choices: list[str]) -> str:
    """``' (did you mean "x"?)'`` for the closest choice, or ``'; valid keys: ...'``."""
    import difflib

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.75)
    if close:
        return f' (did you mean "{close[0]}"?)'
    return f"; valid keys: {', '.join(sorted(choices))}" if choices else ""
