"""Split slices (``validation[:50%]``, ``train[:1000]``) and indexed reads of parquet files.

A split spec is ``name`` or ``name[from:to]`` (rows or percentages, negative counts from the end;
several ranges of the same split joined by ``+``), the syntax of ``datasets.load_dataset(split=...)``.
``split_rows`` resolves it with datasets' own ``ReadInstruction``, so a slice selects exactly the
rows it selects there (percent boundaries rounded the same way).

``ParquetRows`` reads chosen rows of a split stored as parquet files: the row count and column names
come from the files' footers, and only the row groups that hold a requested row are read and
decoded. ``datasets.load_dataset("parquet", ...)`` would first copy every file into its Arrow cache,
reading the whole split even for ``train[:10]``.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fedumm.errors import DataError

__all__ = ["SPLIT_SPEC", "ParquetRows", "split_name", "split_rows"]

# One range of a split spec: a split name (datasets' rule: word characters, dot-separated parts)
# with an optional [from:to] slice of row counts or percentages.
_PART = r"\w+(?:\.\w+)*(?:\[(?:-?\d+%?)?:(?:-?\d+%?)?\])?"
#: A whole spec: ranges joined by "+".
SPLIT_SPEC = re.compile(rf"{_PART}(?:\+{_PART})*")


def split_name(spec: str) -> str:
    """The split ``spec`` reads: "validation" for "validation[:50%]".

    Raises:
        DataError: if ``spec`` is not a split spec, or its ranges name different splits.
    """
    if not SPLIT_SPEC.fullmatch(spec):
        raise DataError(
            f"split {spec!r}: expected a split name with an optional slice, e.g. 'train', 'train[:1000]', "
            f"'validation[:50%]', 'train[10%:20%]'"
        )
    names = {re.match(r"\w+(?:\.\w+)*", part).group(0) for part in spec.split("+")}  # type: ignore[union-attr]
    if len(names) > 1:
        raise DataError(f"split {spec!r}: its ranges name several splits {sorted(names)}; slice one split")
    return names.pop()


def split_rows(spec: str, num_rows: int) -> list[int]:
    """The 0-based rows of a ``num_rows``-row split that ``spec`` selects, in the spec's order."""
    # Imported here: datasets pulls in pyarrow and takes about a second.
    import datasets

    name = split_name(spec)
    ranges = datasets.ReadInstruction.from_spec(spec).to_absolute({name: num_rows})
    return [i for r in ranges for i in range(r.from_, r.to)]


class ParquetRows:
    """The rows of one split stored as parquet ``files`` (their rows in file order), read by index.

    Opening reads each file's footer only; ``records`` reads just the row groups holding the
    requested rows.
    """

    def __init__(self, files: Sequence[str | Path], where: str) -> None:
        import pyarrow.parquet as pq

        if not files:
            raise DataError(f"{where}: no parquet files")
        self.where = where
        self.files = [Path(f) for f in files]
        self._handles = []
        # Global index of the first row of each (file, row group), in order.
        self._starts: list[int] = []
        self._groups: list[tuple[int, int]] = []
        total = 0
        for k, path in enumerate(self.files):
            try:
                handle = pq.ParquetFile(path)
            except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
                raise DataError(f"{where}: {path}: not a readable parquet file ({exc})") from None
            names = handle.schema_arrow.names
            if k and names != self._handles[0].schema_arrow.names:
                raise DataError(
                    f"{where}: {path} has columns {names}, but {self.files[0]} has "
                    f"{self._handles[0].schema_arrow.names}; the files of one split must share their columns"
                )
            self._handles.append(handle)
            for group in range(handle.metadata.num_row_groups):
                self._starts.append(total)
                self._groups.append((k, group))
                total += handle.metadata.row_group(group).num_rows
        self.num_rows = total
        self.column_names: list[str] = list(self._handles[0].schema_arrow.names)

    def records(self, indices: Sequence[int], image_column: str = "image") -> Iterator[tuple[int, dict]]:
        """(index, record) for each of ``indices`` (ascending), reading one row group at a time (image
        columns are parquet structs of bytes and path: never decoded here, whatever ``image_column``)."""
        position = 0
        ordered = list(indices)
        if any(b < a for a, b in zip(ordered, ordered[1:])):
            raise ValueError("ParquetRows.records needs ascending indices")
        if ordered and not 0 <= ordered[0] <= ordered[-1] < self.num_rows:
            raise IndexError(f"row indices {ordered[0]}..{ordered[-1]} outside 0..{self.num_rows - 1}")
        while position < len(ordered):
            slot = bisect.bisect_right(self._starts, ordered[position]) - 1
            start = self._starts[slot]
            end = self._starts[slot + 1] if slot + 1 < len(self._starts) else self.num_rows
            stop = bisect.bisect_left(ordered, end, lo=position)
            table = self._read_group(slot)
            offsets = [i - start for i in ordered[position:stop]]
            for index, record in zip(ordered[position:stop], table.take(offsets).to_pylist()):
                yield index, record
            position = stop

    def _read_group(self, slot: int) -> Any:  # a pyarrow.Table (pyarrow is imported lazily)
        k, group = self._groups[slot]
        try:
            return self._handles[k].read_row_group(group)
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.where}: {self.files[k]}: row group {group} cannot be read ({exc})") from None
