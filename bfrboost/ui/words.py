"""The page speaks in web words: what the restorer and runners say for the command line ("pass
--max-pixels N", "pass -s 2", "run `bfrboost weights import FILE`") is rewritten here, in the ui layer,
into what a visitor of the page can do (the core keeps its CLI wording for the CLI).

Known sentences get a page-specific rewrite (:data:`REWRITES`); any other clause of a ``; ``-separated
message that still names a flag or a command is dropped, so no CLI word reaches the page.
"""

from __future__ import annotations

import re

#: (pattern, replacement) pairs, applied in order; ``\\g<n>`` refers to the pattern's groups.
REWRITES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"above the ([\d.]+) MP safety limit; pass --max-pixels \d+ to allow it",
         r"above this app's \g<1> MP limit; use a smaller image"),
        (r"face upsampling does nothing at upscale ([\d.]+); pass -s 2 \(up to 4\) to use it",
         r"face upsample does nothing at rescaling factor \g<1>; set the rescaling factor above 1 to use it"),
        (r"^(\S+): not in the cache and offline mode is on; download .*$",
         r"the model file \g<1> is not installed on this server; install it there (see the weights page of the docs), "
         r"or choose another base model"),
        (r"^(\S+): download (failed|from).*$",
         r"the model file \g<1> could not be downloaded by this server; install it there by hand, or choose another base model"),
        (r"its (\S+) audio cannot be copied into \.(\w+); choose --ext mkv \(takes any audio\) or mp4",
         r"its \g<1> audio cannot be kept in the restored .\g<2> video; convert the clip's audio to AAC first"),
        (r"check the file \(and --start/--duration\)", "check that it is a complete video file"),
    )
)
_CLI_WORDS = re.compile(r"(?:^|[\s(`'\"])--?[a-zA-Z][\w-]*|`bfrboost|\bbfrboost \w+ \w+")


def web_words(message: str) -> str:
    """``message`` without command-line words: known sentences rewritten, other clauses that name a
    flag or a command dropped (the first clause, which names the file and the problem, always stays)."""
    for pattern, replacement in REWRITES:
        message = pattern.sub(replacement, message)
    first, *rest = message.split("; ")
    return "; ".join([first, *(clause for clause in rest if not _CLI_WORDS.search(clause))])


def has_cli_words(message: str) -> bool:
    """Whether ``message`` still names a flag or a bfrboost command (the tests check every page message)."""
    return bool(_CLI_WORDS.search(message))


__all__ = ["REWRITES", "has_cli_words", "web_words"]
