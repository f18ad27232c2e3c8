"""Text that arrives as many small pieces, held at close to the size of the text itself.

A streamed token is its own ``str`` (~50 bytes of object header) plus a list slot, so a plain list
of pieces costs ~15x the text. ``Pieces`` is a list of only the latest pieces: ``add()`` appends
and calls ``compact()`` every ``COMPACT_EVERY`` pieces, which joins them onto the last block (the
two hottest paths inline those lines: a method call there costs ~10% of the conversion). A block stops growing at ``BLOCK_CHARS``, so one compaction copies a bounded amount:
the total work stays linear, and memory is the text plus one header per block plus at most
``COMPACT_EVERY`` loose pieces.
"""

from __future__ import annotations

COMPACT_EVERY = 64
BLOCK_CHARS = 4096


class Pieces(list[str]):
    """The pieces appended since the last ``compact()``; ``text()`` is all of them, in order."""

    __slots__ = ("_blocks",)

    def __init__(self) -> None:
        super().__init__()
        self._blocks: list[str] = []

    def add(self, piece: str) -> None:
        """Append ``piece``, compacting when enough loose pieces have gathered."""
        self.append(piece)
        if len(self) >= COMPACT_EVERY:
            self.compact()

    def compact(self) -> None:
        """Move the loose pieces onto the last block (a new one once it is full)."""
        block = "".join(self)
        self.clear()
        blocks = self._blocks
        if blocks and len(blocks[-1]) < BLOCK_CHARS:
            blocks[-1] += block
        else:
            blocks.append(block)

    def text(self) -> str | None:
        """Everything appended, joined; None when nothing was (even ``""`` counts as something)."""
        if not self._blocks and not self:
            return None
        return "".join(self._blocks + self)
