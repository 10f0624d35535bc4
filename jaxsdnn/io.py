"""Files in and out: the Sparse DNN Graph Challenge layout (host side, NumPy / scipy only).

Layout (one directory per network, as published by the Graph Challenge)::

    n{N}-l{k}.tsv[.gz]      layer k (1-based) W_k, N x N, lines ``row<TAB>col<TAB>value``, 1-based,
                            row = input neuron, col = output neuron (Y.W), sorted by col then row
    images .tsv[.gz]        ``row<TAB>col<TAB>value``: row = image, col = input feature (1-based)
    images .mtx[.gz]        MatrixMarket coordinate (pattern -> ones, or integer / real values)
    categories .tsv         one 1-based image index per line (the images whose last layer is nonzero)
    categories .mtx         MatrixMarket ``images x 1`` pattern: the rows of its entries

The layout stores no biases: every neuron has the bias of :func:`graphchallenge_bias` (or one passed
to :func:`read_network`). Every malformed input raises a ``ValueError`` that starts with
``path:line:`` (1-based line of the file) and says what was expected.

References:
    Kepner et al., "Sparse Deep Neural Network Graph Challenge", IEEE HPEC 2019.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.io
import scipy.sparse as sp

from jaxsdnn._atomic import atomic_write
from jaxsdnn.network import SparseNetwork

__all__ = [
    "find_layer_files",
    "graphchallenge_bias",
    "read_categories",
    "read_images",
    "read_layer",
    "read_network",
    "write_categories",
    "write_images",
    "write_network",
]

_BIAS = {1024: -0.3, 4096: -0.35, 16384: -0.4, 65536: -0.45}
_LAYER_NAME = re.compile(r"^n(\d+)-l(\d+)\.tsv(\.gz)?$")
_INT_LINE = re.compile(r"^\s*\+?(\d+)\s*$")
_MAX_INDEX = 2**31 - 1


def _memory_bytes() -> int:
    """This machine's available memory (physical, not yet used)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def _check_fits(what: str, nbytes: int) -> None:
    """Refuses, before allocating, what would need more than this machine's memory."""
    if nbytes > _memory_bytes():
        raise ValueError(f"{what} would need {nbytes / 2**30:,.1f} GiB of memory, more than the "
                         f"{_memory_bytes() / 2**30:,.1f} GiB this machine has available")


def graphchallenge_bias(neurons: int) -> float:
    """The Graph Challenge bias of every neuron of a network with ``neurons`` per layer.

    Raises:
        ValueError: for a size the challenge does not define (pass an explicit bias instead;
            the CLI asks for ``--bias`` itself).
    """
    try:
        return _BIAS[int(neurons)]
    except KeyError:
        raise ValueError(
            f"no Graph Challenge bias for {neurons} neurons per layer (defined for "
            f"{', '.join(map(str, _BIAS))}); pass bias= explicitly"
        ) from None


# -- reading text -----------------------------------------------------------------------------
def read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when the name ends in ``.gz`` (a bad gzip names the file)."""
    data = Path(path).read_bytes()
    if Path(path).name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: not a valid gzip file ({e})") from None
    return data


def _read_text(path: Path) -> str:
    """The file's text, gunzipped when the name ends in ``.gz``."""
    data = read_bytes(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def _is_blank(line: str) -> bool:
    # np.loadtxt skips exactly these lines (a line of spaces is an error there, and so here).
    return line == "" or line == "\r"


def _record_lines(lines: Sequence[str]) -> np.ndarray:
    """1-based file line of every record (non-blank line): ``[records]`` int64. Error path only."""
    return np.flatnonzero([not _is_blank(x) for x in lines]) + 1


class _Field(NamedTuple):
    """One index column of a ``row col value`` file, for the error messages."""

    name: str  # "row" / "col"
    limit: int  # largest valid 1-based index
    expected: str  # what a valid value is, e.g. "an integer input neuron in [1, 1024]"
    too_big: str  # message for an index above ``limit``: a format string of index, limit, name


def _fields(n_rows, n_cols, row_what, col_what, too_big_col=None) -> tuple[_Field, _Field]:
    out = []
    for name, n, what, big in (("row", n_rows, row_what, None), ("col", n_cols, col_what, too_big_col)):
        if n is None:  # unbounded, up to what an int32 index holds
            expected = f"an integer {what} >= 1"
            out.append(_Field(name, _MAX_INDEX, expected, f"{name} index {{index}} is too large (> {{limit}})"))
            continue
        expected = f"an integer {what} in [1, {n}]"
        out.append(_Field(name, n, expected, big or f"{name} index {{index}} is out of range: expected {expected}"))
    return tuple(out)


def _first_bad_line(path: Path, lines: Sequence[str], fields: tuple[_Field, _Field]) -> str | None:
    """Re-scans the lines in Python for the first one ``np.loadtxt`` cannot parse; its message."""
    expected = (fields[0].expected, fields[1].expected, "a finite number")
    names = (fields[0].name, fields[1].name, "value")
    for number, line in enumerate(lines, start=1):
        if _is_blank(line):
            continue
        parts = line.rstrip("\r").split("\t")
        if len(parts) != 3:
            shown = line if len(line) <= 60 else line[:57] + "..."
            return (
                f"{path}:{number}: expected 3 tab-separated fields `row col value`, found "
                f"{len(parts)}: {shown!r}"
            )
        for k, part in enumerate(parts):
            try:
                if "_" in part:  # Python's float() accepts 1_000, loadtxt does not
                    raise ValueError
                float(part)
            except ValueError:
                shown = part if len(part) <= 30 else part[:27] + "..."
                return (
                    f"{path}:{number}: field {k + 1} ({names[k]}) is {shown!r}, not a number; "
                    f"expected {expected[k]}"
                )
    return None


def _parse_triples(path: Path, text: str, fields: tuple[_Field, _Field]) -> tuple[list[str], np.ndarray]:
    """Parses ``row<TAB>col<TAB>value`` lines: the lines and a ``[records, 3]`` float64 array."""
    lines = text.split("\n")
    if all(_is_blank(x) for x in lines):
        return lines, np.zeros((0, 3))
    try:
        a = np.loadtxt(lines, delimiter="\t", ndmin=2, comments=None, dtype=np.float64)
    except ValueError as e:
        message = _first_bad_line(path, lines, fields)
        raise ValueError(message or f"{path}: {e}") from None
    if a.shape[1] != 3:  # every line has the same wrong number of fields
        raise ValueError(_first_bad_line(path, lines, fields) or f"{path}: expected 3 fields, found {a.shape[1]}")
    return lines, a


def _num(v: float) -> str:
    """A parsed number as the user wrote it: ``1100`` rather than ``1100.0``."""
    return str(int(v)) if np.isfinite(v) and v == np.floor(v) and abs(v) < 2**63 else repr(float(v))


def _first_duplicate(keys: np.ndarray) -> tuple[int, int] | None:
    """(first, later) record indices of the earliest repeated key in file order, or None."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    same = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1]) + 1
    if same.size == 0:
        return None
    later_positions = same[np.argmin(order[same])]
    first_position = np.searchsorted(sorted_keys, sorted_keys[later_positions], side="left")
    return int(order[first_position]), int(order[later_positions])


def _check_triples(
    path: Path, lines: Sequence[str], a: np.ndarray, fields: tuple[_Field, _Field]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validates parsed records; 0-based int64 rows, cols and float32 values. Errors name the line."""
    problems: list[tuple[int, str]] = []  # (record index, message), the earliest one is raised
    index = []
    for column, field in enumerate(fields):
        x = a[:, column]
        checks = (
            (~np.isfinite(x) | (x != np.floor(x)), "{name} index {index} is not an integer; expected {expected}"),
            (x < 1, "{name} index {index} < 1: indices are 1-based; expected {expected}"),
            (x > field.limit, field.too_big),
        )
        for bad, message in checks:
            if bad.any():
                i = int(np.argmax(bad))  # the earliest record failing this check
                problems.append((i, message.format(index=_num(x[i]), **field._asdict())))
        index.append(x)
    with np.errstate(over="ignore"):  # reported below as "overflows float32"
        values = a[:, 2].astype(np.float32)
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.argmax(bad))
        what = "is not a finite number" if not np.isfinite(a[i, 2]) else "overflows float32"
        problems.append((i, f"value {a[i, 2]:g} {what}; expected a finite number"))
    if problems:  # the earliest record wins; on a tie, the first check in the order above
        i, message = min(problems, key=lambda p: p[0])
        raise ValueError(f"{path}:{_record_lines(lines)[i]}: {message}")
    rows = index[0].astype(np.int64) - 1
    cols = index[1].astype(np.int64) - 1
    keys = cols * (int(rows.max(initial=0)) + 1) + rows  # column-major: the challenge files' order
    if keys.size > 1 and not np.all(keys[1:] > keys[:-1]):  # not sorted that way: sort to find repeats
        keys = rows * (int(cols.max()) + 1) + cols
        dup = _first_duplicate(keys)
        if dup is not None:
            line_of = _record_lines(lines)
            first, later = dup
            raise ValueError(
                f"{path}:{line_of[later]}: duplicate edge ({rows[later] + 1}, {cols[later] + 1}), first on "
                f"line {line_of[first]}; each entry must appear once"
            )
    return rows, cols, values


def read_layer(path: str | os.PathLike, n_in: int, n_out: int, allow_empty: bool = False) -> sp.coo_array:
    """Reads one Graph Challenge layer file (``.tsv`` or ``.tsv.gz``).

    Args:
        path: the file, lines ``row<TAB>col<TAB>value`` (1-based, row = input neuron).
        n_in: input neurons (rows of the matrix).
        n_out: output neurons (columns).
        allow_empty: accept a file without any edge (0 bytes, or blank lines only) as an all-zero
            layer; by default that is an error (a truncated file is the likelier cause).

    Returns:
        ``W`` of shape ``[n_in, n_out]``, float32, entries in file order.

    Raises:
        ValueError: ``path:line: ...`` for the first malformed line, index out of range or not
            1-based, non-finite value, or repeated edge; ``path: ...`` for a file without edges.
    """
    path = Path(path)
    fields = _fields(n_in, n_out, "input neuron", "output neuron")
    text = _read_text(path)
    lines, a = _parse_triples(path, text, fields)
    if a.shape[0] == 0 and not allow_empty:
        what = "is empty (0 bytes)" if not text else "holds no edges (only blank lines)"
        raise ValueError(
            f"{path}: {what}; a truncated or unfinished file? (--allow-empty-layers / allow_empty=True "
            "reads it as a layer without edges)"
        )
    rows, cols, values = _check_triples(path, lines, a, fields)
    return sp.coo_array((values, (rows, cols)), shape=(n_in, n_out))


# -- networks ---------------------------------------------------------------------------------
def find_layer_files(directory: str | os.PathLike) -> tuple[int, list[Path]]:
    """The layer files of a Graph Challenge network directory.

    Files are named ``n{N}-l{k}.tsv`` or ``n{N}-l{k}.tsv.gz``; other files are ignored.

    Returns:
        ``(N, paths)``: neurons per layer and the files of layers ``1..L`` in order.

    Raises:
        ValueError: no layer files, a name of a layer file that is a directory, broken symlink or
            other non-regular file, ``N`` beyond the int32 range, several ``N``, a layer numbered 0, a gap in the numbering
            (names the missing layer), or a layer present twice (e.g. both ``.tsv`` and ``.tsv.gz``:
            the error names both rather than guessing which one is current).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory}: not a directory")
    found: dict[int, dict[int, Path]] = {}
    for entry in sorted(directory.iterdir()):
        match = _LAYER_NAME.match(entry.name)
        if match is None:
            continue
        if not entry.is_file():  # a layer that cannot be read must not silently shorten the network
            what = (f"a broken symlink (to {os.readlink(entry)!r})" if entry.is_symlink() and not entry.exists()
                    else "a directory" if entry.is_dir() else "not a regular file")
            raise ValueError(f"{entry}: is {what}, not a layer file; fix or remove it")
        neurons, k = int(match.group(1)), int(match.group(2))
        if neurons > _MAX_INDEX:
            raise ValueError(f"{entry}: {neurons} neurons per layer is more than this library supports "
                             f"(at most {_MAX_INDEX}, the int32 index range)")
        layers = found.setdefault(neurons, {})
        if k in layers:
            raise ValueError(f"{directory}: layer {k} is stored twice: {layers[k].name} and {entry.name}; keep one")
        layers[k] = entry
    if not found:
        raise ValueError(f"{directory}: no layer files named n{{N}}-l{{k}}.tsv or n{{N}}-l{{k}}.tsv.gz")
    if len(found) > 1:
        sizes = ", ".join(f"N={n} ({len(v)} files)" for n, v in sorted(found.items()))
        raise ValueError(f"{directory}: layer files of several network sizes: {sizes}; keep one network per directory")
    (neurons, layers), = found.items()
    if 0 in layers:
        raise ValueError(f"{directory}: {layers[0].name}: layers are numbered from 1")
    last = max(layers)
    missing = [k for k in range(1, last + 1) if k not in layers]
    if missing:
        raise ValueError(
            f"{directory}: layer {missing[0]} is missing (n{neurons}-l{missing[0]}.tsv[.gz]) but layer "
            f"{last} exists; {len(missing)} missing in all, layers must be numbered 1..L without gaps"
        )
    return neurons, [layers[k] for k in range(1, last + 1)]


def read_network(
    directory: str | os.PathLike,
    num_layers: int | None = None,
    bias: float | Sequence | None = None,
    cap: float | None = 32.0,
    allow_empty: bool = False,
) -> SparseNetwork:
    """Reads a Graph Challenge network directory (square ``N x N`` layers).

    Args:
        directory: holds ``n{N}-l{k}.tsv[.gz]`` for ``k = 1..L`` (see :func:`find_layer_files`).
        num_layers: read only layers ``1..num_layers``; ``None`` reads all ``L``.
        bias: as :meth:`SparseNetwork.from_scipy`; ``None`` is :func:`graphchallenge_bias` of ``N``.
        cap: ReLU cap (32 in the challenge), ``None`` for a plain ReLU.
        allow_empty: accept layer files without edges (see :func:`read_layer`).

    Raises:
        ValueError: a bad directory or layer file (``path:line: ...``), an empty layer file
            (unless ``allow_empty``), ``num_layers`` out of ``[1, L]``, a bias that is not a
            finite float32, a network too large for this machine's memory, or no default bias for ``N``.
    """
    neurons, paths = find_layer_files(directory)
    _check_fits(f"{directory}: {len(paths)} layers of {neurons} neurons", 8 * (neurons + 1) * len(paths) * 2)
    if num_layers is not None:
        if int(num_layers) != num_layers or not 1 <= num_layers <= len(paths):
            raise ValueError(
                f"{directory}: num_layers={num_layers} but it holds layers 1..{len(paths)} "
                f"(n{neurons}-l1..l{len(paths)}); expected num_layers in [1, {len(paths)}]"
            )
        paths = paths[: int(num_layers)]
    if bias is None:
        bias = graphchallenge_bias(neurons)
    b = np.asarray(bias, dtype=np.float64)
    if not np.all(np.isfinite(b)) or np.any(np.abs(b) > np.finfo(np.float32).max):
        raise ValueError(f"bias={bias!r}: every bias must be a finite float32 value (|b| <= 3.4e38)")
    matrices = [read_layer(p, neurons, neurons, allow_empty=allow_empty) for p in paths]
    try:
        return SparseNetwork.from_scipy(matrices, bias, cap)
    except ValueError as e:
        match = re.match(r"layer (\d+): ", str(e))
        where = paths[int(match.group(1)) - 1] if match else directory
        raise ValueError(f"{where}: {e}") from e


def _format_lines(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, value_format: str) -> str:
    """``row<TAB>col<TAB>value`` lines, 1-based, from 0-based indices."""
    template = "{}\t{}\t{:" + value_format + "}\n"
    return "".join(
        template.format(r, c, v) for r, c, v in zip((rows + 1).tolist(), (cols + 1).tolist(), values.tolist())
    )


def _exact_format(values: np.ndarray) -> str:
    """``.6e`` (the challenge's own format) when it reproduces every float32 value, else ``.8e``."""
    short = np.array([f"{v:.6e}" for v in values.tolist()], dtype=np.float64).astype(np.float32)
    return ".6e" if np.array_equal(short, values, equal_nan=True) else ".8e"


def write_network(network: SparseNetwork, directory: str | os.PathLike) -> list[Path]:
    """Writes ``network`` in the Graph Challenge layout: ``directory/n{N}-l{k}.tsv``.

    Lines are ``row<TAB>col<TAB>value`` sorted by column then row, values as ``%.6e`` like the
    originals (``6.250000e-02``), or ``%.8e`` for a layer whose float32 values ``%.6e`` would round.
    Each file is written atomically. Biases and cap are not stored (the layout has no place for
    them): pass them to :func:`read_network`.

    Returns:
        The written paths, layer 1 first.

    Raises:
        ValueError: a layer is not ``N x N`` with one ``N``, or the directory already holds layer
            files this network would not replace (another ``N``, more layers, or ``.tsv.gz``
            twins), which would make the directory ambiguous.
    """
    sizes = network.sizes
    neurons = sizes[0]
    for k, w in enumerate(network.weights, start=1):
        if w.shape != (neurons, neurons):
            raise ValueError(
                f"write_network: layer {k} is {w.shape[0]} x {w.shape[1]} but the Graph Challenge "
                f"layout needs square N x N layers of one N (layer 1 has N={neurons})"
            )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = {f"n{neurons}-l{k}.tsv" for k in range(1, network.num_layers + 1)}
    stale = sorted(e.name for e in directory.iterdir() if _LAYER_NAME.match(e.name) and e.name not in names)
    if stale:
        raise ValueError(
            f"{directory}: already holds layer files this network would not replace ({', '.join(stale[:3])}"
            f"{', ...' if len(stale) > 3 else ''}); remove them or write to an empty directory"
        )
    written = []
    for k, w in enumerate(network.weights, start=1):
        coo = w.tocoo()
        order = np.lexsort((coo.row, coo.col))  # by column, then row
        rows, cols, values = coo.row[order].astype(np.int64), coo.col[order].astype(np.int64), coo.data[order]
        path = directory / f"n{neurons}-l{k}.tsv"
        with atomic_write(path) as f:
            f.write(_format_lines(rows, cols, values, _exact_format(values)))
        written.append(path)
    return written


# -- images -----------------------------------------------------------------------------------
def _mtx_line(path: Path, row: int, col: int, occurrence: int = 1) -> int | None:
    """1-based line of the ``occurrence``-th MatrixMarket entry ``(row, col)`` (1-based). Error path."""
    size_seen = False
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("%"):
            continue
        if not size_seen:
            size_seen = True
            continue
        parts = stripped.split()
        if len(parts) >= 2 and parts[0] == str(row) and parts[1] == str(col):
            occurrence -= 1
            if occurrence == 0:
                return number
    return None


def _where(path: Path, line: int | None) -> str:
    return f"{path}:{line}" if line is not None else f"{path}"


def _mtx_header(path: Path) -> tuple[int, int, int, int] | None:
    """``(rows, cols, entries, line)`` of a coordinate file's size line, or None (mmread reports it)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                line = raw.decode("utf-8", "replace").strip()
                if number == 1:
                    if "coordinate" not in line.lower():
                        return None
                    continue
                if not line or line.startswith("%"):
                    continue
                parts = line.split()
                if len(parts) != 3 or not all(p.isdigit() for p in parts):
                    return None
                return int(parts[0]), int(parts[1]), int(parts[2]), number
    except (OSError, EOFError, zlib.error):
        return None
    return None


def _check_mtx_header(path: Path) -> tuple[int, int, int, int] | None:
    """Bounds a coordinate file's announced size before ``mmread`` allocates it."""
    header = _mtx_header(path)
    if header is None:
        return None
    rows, cols, entries, line = header
    if rows > _MAX_INDEX or cols > _MAX_INDEX:
        raise ValueError(f"{path}:{line}: size {rows} x {cols} exceeds the int32 index range ({_MAX_INDEX})")
    if not path.name.endswith(".gz") and entries * 4 > os.path.getsize(path):  # an entry is >= 4 bytes
        raise ValueError(f"{path}:{line}: the header announces {entries} entries but the file has only "
                         f"{os.path.getsize(path)} bytes (truncated file or wrong header)")
    _check_fits(f"{path}:{line}: {rows} x {cols} with {entries} entries", 40 * entries + 16 * (rows + 1))
    return header


def _read_mtx(path: Path) -> sp.coo_array:
    """``scipy.io.mmread`` of a coordinate file, errors as ``path:line: ...`` ValueErrors."""
    _check_mtx_header(path)
    try:
        matrix = scipy.io.mmread(path)
    except (ValueError, OSError, EOFError, zlib.error) as e:
        match = re.match(r"Line (\d+): (.*)", str(e), re.S)
        if match:
            raise ValueError(f"{path}:{match.group(1)}: {match.group(2)} (MatrixMarket)") from None
        raise ValueError(f"{path}: not a valid MatrixMarket file ({e})") from None
    if not sp.issparse(matrix):
        raise ValueError(f"{path}: expected a MatrixMarket coordinate file, found a dense array of shape {matrix.shape}")
    if np.iscomplexobj(matrix.data):
        raise ValueError(f"{path}: complex values; expected pattern, integer or real entries")
    coo = sp.coo_array(matrix)
    keys = coo.row.astype(np.int64) * coo.shape[1] + coo.col
    dup = _first_duplicate(keys)
    if dup is not None:
        r, c = int(coo.row[dup[1]]) + 1, int(coo.col[dup[1]]) + 1
        raise ValueError(f"{_where(path, _mtx_line(path, r, c, 2))}: duplicate entry ({r}, {c}); each entry must appear once")
    with np.errstate(over="ignore"):  # a float32 overflow is reported as not finite
        coo.data = coo.data.astype(np.float32)
    bad = ~np.isfinite(coo.data)
    if bad.any():
        i = int(np.argmax(bad))
        r, c = int(coo.row[i]) + 1, int(coo.col[i]) + 1
        raise ValueError(f"{_where(path, _mtx_line(path, r, c))}: value {coo.data[i]:g} of entry ({r}, {c}) is not a finite float32")
    return coo


def _suffix(path: Path, allowed: Sequence[str], what: str) -> str:
    for suffix in allowed:
        if path.name.endswith(suffix):
            return suffix
    raise ValueError(f"{path}: {what} file name must end in one of {', '.join(allowed)}")


def read_images(
    path: str | os.PathLike, num_features: int | None = None, num_images: int | None = None
) -> sp.csr_array:
    """Reads input images (one per row) from ``.tsv[.gz]`` or MatrixMarket ``.mtx[.gz]``.

    Args:
        path: ``row<TAB>col<TAB>value`` lines (1-based; row = image, col = feature) or a
            MatrixMarket coordinate file (pattern entries become 1).
        num_features: input neurons of the network. A narrower file is padded with empty columns;
            an entry beyond it is an error. ``None``: the largest column (tsv) or the header's width.
        num_images: rows of the result; ``None``: the largest row (tsv) or the header's height.

    Returns:
        ``Y_0`` of shape ``[images, features]``, float32 CSR.

    Raises:
        ValueError: ``path:line: ...`` for a malformed line, an index out of range or not 1-based,
            a non-finite value, a repeated entry, or a file wider than the network.
    """
    path = Path(path)
    suffix = _suffix(path, (".tsv", ".tsv.gz", ".mtx", ".mtx.gz"), "images")
    too_wide = "images file is wider than the network: column {index} > {limit} input neurons"
    if suffix.startswith(".tsv"):
        fields = _fields(num_images, num_features, "image", "feature", too_wide)
        lines, a = _parse_triples(path, _read_text(path), fields)
        rows, cols, values = _check_triples(path, lines, a, fields)
        shape = (
            num_images if num_images is not None else int(rows.max(initial=-1)) + 1,
            num_features if num_features is not None else int(cols.max(initial=-1)) + 1,
        )
        if rows.size:
            i = int(np.argmax(rows))
            # the images' row pointers, and the [images, features] float32 activations of inference
            _check_fits(f"{path}:{_record_lines(lines)[i]}: image row {rows[i] + 1} ({shape[0]} images of "
                        f"{shape[1]} features)", 16 * (shape[0] + 1) + 4 * shape[0] * shape[1])
        return sp.csr_array((values, (rows, cols)), shape=shape)
    header = _mtx_header(path)
    if header is not None and num_features is not None:
        _check_fits(f"{path}:{header[3]}: {header[0]} images of {num_features} features",
                    16 * (header[0] + 1) + 4 * header[0] * num_features)
    coo = _read_mtx(path)
    shape = list(coo.shape)
    for axis, (limit, index) in enumerate(((num_images, coo.row), (num_features, coo.col))):
        if limit is None:
            continue
        over = np.flatnonzero(index >= limit)
        if over.size:
            i = int(over[0])  # mmread keeps the file's order
            r, c = int(coo.row[i]) + 1, int(coo.col[i]) + 1
            where = _where(path, _mtx_line(path, r, c))
            if axis == 1:
                raise ValueError(f"{where}: {too_wide.format(index=c, limit=limit)}")
            raise ValueError(f"{where}: row {r} > num_images={limit}")
        if axis == 1 and shape[1] > limit:  # no entry beyond the network, but the header is wider
            header = _mtx_header(path)
            raise ValueError(f"{_where(path, header[3] if header else None)}: images file is wider than the "
                             f"network: the header has {shape[1]} columns > {limit} input neurons")
        shape[axis] = limit
    return sp.csr_array((coo.data, (coo.row, coo.col)), shape=tuple(shape))


def write_images(path: str | os.PathLike, images: sp.sparray | sp.spmatrix) -> None:
    """Writes images atomically as ``row<TAB>col<TAB>value`` lines (1-based, sorted by row, col).

    Values use the shortest form that reproduces the float32 (``1`` for binary images). The file
    does not store the shape: pass ``num_images`` / ``num_features`` to :func:`read_images` to
    keep trailing empty rows or columns. A ``.tsv.gz`` name writes gzip.

    Args:
        path: a ``.tsv`` or ``.tsv.gz`` file name.
        images: ``[images, features]`` sparse matrix.
    """
    path = Path(path)
    suffix = _suffix(path, (".tsv", ".tsv.gz"), "images")
    if not sp.issparse(images):
        raise ValueError(f"write_images: expected a scipy.sparse matrix, got {type(images).__name__}")
    csr = sp.csr_array(images)
    csr.sum_duplicates()
    coo = csr.tocoo()
    values = coo.data.astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"write_images: {path}: images hold non-finite values")
    text = _format_lines(coo.row.astype(np.int64), coo.col.astype(np.int64), values.astype(np.float64), ".9g")
    if suffix == ".tsv.gz":
        with atomic_write(path, "wb") as f:
            f.write(gzip.compress(text.encode(), mtime=0))
    else:
        with atomic_write(path) as f:
            f.write(text)


# -- categories -------------------------------------------------------------------------------
def read_categories(path: str | os.PathLike) -> np.ndarray:
    """Reads the truth categories: the 1-based indices of the images whose output is nonzero.

    Args:
        path: MatrixMarket ``.mtx[.gz]`` of shape ``[images, 1]`` (the rows of its entries), or
            any other name: plain text (``.gz`` is gunzipped), one integer per line, blank lines
            ignored.

    Returns:
        ``[categories]`` int64, 1-based, ascending, no repeats.

    Raises:
        ValueError: ``path:line: ...`` for a line that is not one integer >= 1, or a repeat.
    """
    path = Path(path)
    if path.name.endswith((".mtx", ".mtx.gz")):
        coo = _read_mtx(path)
        if coo.shape[1] != 1:
            raise ValueError(f"{path}: categories must be an images x 1 MatrixMarket column, found shape {coo.shape}")
        return np.sort(coo.row.astype(np.int64) + 1)
    seen: dict[int, int] = {}
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        match = _INT_LINE.match(line)
        if match is None:
            shown = line if len(line) <= 40 else line[:37] + "..."
            raise ValueError(f"{path}:{number}: expected one 1-based image index (an integer >= 1) per line, found {shown!r}")
        value = int(match.group(1))
        if value < 1:
            raise ValueError(f"{path}:{number}: image index 0: indices are 1-based")
        if value in seen:
            raise ValueError(f"{path}:{number}: image {value} is already listed on line {seen[value]}")
        seen[value] = number
    return np.sort(np.fromiter(seen, dtype=np.int64, count=len(seen)))


def write_categories(path: str | os.PathLike, categories) -> None:
    """Writes categories atomically, one 1-based index per line, ascending.

    Args:
        path: the file.
        categories: ``[categories]`` integers >= 1, no repeats.
    """
    c = np.asarray(categories)
    if c.ndim != 1 or (c.size and c.dtype.kind not in "iu"):
        raise ValueError(f"write_categories: expected a 1-D integer array, got {c.dtype} of shape {c.shape}")
    c = np.sort(c.astype(np.int64))
    if c.size and c[0] < 1:
        raise ValueError(f"write_categories: index {c[0]} < 1: categories are 1-based image indices")
    repeats = c[1:][c[1:] == c[:-1]]
    if repeats.size:
        raise ValueError(f"write_categories: image {repeats[0]} listed more than once")
    with atomic_write(path) as f:
        f.write("".join(f"{v}\n" for v in c.tolist()))
