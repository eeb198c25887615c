"""Images of rows: checked while loading, kept as references, decoded when a batch is built.

A source checks each image once while loading (header first: its pixel count against
``data.max_image_pixels``, before any pixel is decoded; then a full decode whose result is
dropped), so a broken or oversized file is a row error at load time, and keeps an
``ImageRef`` (a file path, or the encoded bytes of an embedded image) in the row. Backends
decode through ``as_pil`` (``Backend.row_images``), which keeps the last decoded images in a
small LRU cache: peak memory stays flat however many images a dataset has.

PIL's own decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``, a warning and then an error)
is replaced, while fedumm decodes, by this module's limit; neither its warning nor its error
leaves this module.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from fedumm.errors import DataError

__all__ = [
    "CACHE_BYTES",
    "CACHE_IMAGES",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "ImageProblem",
    "ImageRef",
    "as_pil",
    "clear_cache",
    "decode",
    "max_image_pixels",
    "pixel_limit",
]

# 50 megapixels (e.g. 8660 x 5773) decode to 150 MB of RGB: larger than any VLM input needs,
# well below PIL's own 89 MP warning, so a bomb fails with our message and not PIL's.
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
# Decoded images kept for the next batches: a few batches' worth, at most CACHE_BYTES of pixels.
CACHE_IMAGES = 64
CACHE_BYTES = 256 * 2**20

# The limit of the load in progress; ``fedumm.data.federated.load_source`` sets it from
# data.max_image_pixels around a source's load (the load functions only get their own section).
_LIMIT: ContextVar[int | None] = ContextVar("max_image_pixels", default=DEFAULT_MAX_IMAGE_PIXELS)

# PIL reads its limit from a module global; one lock so concurrent decodes never see each other's.
_PIL_LOCK = threading.Lock()


class ImageProblem(Exception):
    """What is wrong with one image; the message names the image."""


@contextmanager
def pixel_limit(limit: int | None) -> Iterator[None]:
    """Images loaded inside are checked against ``limit`` pixels (None: PIL's ``MAX_IMAGE_PIXELS``)."""
    token = _LIMIT.set(limit)
    try:
        yield
    finally:
        _LIMIT.reset(token)


def max_image_pixels() -> int | None:
    """The limit images loaded now are checked against (data.max_image_pixels; None = PIL's)."""
    return _LIMIT.get()


@contextmanager
def _pil_guard(limit: int | None) -> Iterator[None]:
    """PIL's bomb check at ``limit`` (None: off), its warning raised as an error so it can be caught."""
    with _PIL_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = limit
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _limit_text(limit: int | None) -> tuple[int | None, str]:
    """(effective limit, how a message names it) for data.max_image_pixels = ``limit``."""
    if limit is not None:
        return limit, f"data.max_image_pixels={limit:,}"
    pil = Image.MAX_IMAGE_PIXELS
    return pil, f"PIL's Image.MAX_IMAGE_PIXELS={pil:,} (data.max_image_pixels: null)" if pil else "no limit"


def decode(
    source: Path | bytes, what: str, limit: int | None, expect_size: tuple[int, int] | None = None
) -> Image.Image:
    """``source`` decoded to RGB, after its header's pixel count is checked against ``limit``
    (None: PIL's ``Image.MAX_IMAGE_PIXELS``), or, with ``expect_size`` (an image checked while
    loading), its size against that instead.

    Raises:
        ImageProblem: naming ``what``, if the file is missing, too large or cannot be decoded.
    """
    effective, named = _limit_text(limit)
    opened = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        # Opened with PIL's check off: the header check below names the size and the key.
        with _pil_guard(None):
            image = Image.open(opened)
        with image:
            width, height = image.size
            if expect_size is not None:
                if image.size != expect_size:
                    raise ImageProblem(f"{what} changed since loading: now {width}x{height}, was {expect_size}")
                effective = width * height
            elif effective is not None and width * height > effective:
                raise ImageProblem(
                    f"{what} is {width}x{height} = {width * height:,} pixels, over {named} "
                    "(checked before decoding: a larger image may be a decompression bomb)"
                )
            # PIL's own check stays armed at the same limit for what a header does not show
            # (e.g. GIF frames larger than the canvas).
            with _pil_guard(effective):
                return image.convert("RGB")
    except FileNotFoundError:
        raise ImageProblem(f"{what} not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageProblem(f"{what} exceeds {named} while decoding ({exc})") from None
    except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise ImageProblem(f"{what} cannot be decoded ({exc})") from None


@dataclass(frozen=True, eq=False)
class ImageRef:
    """One image of a row, not decoded: a file (``path``) or an embedded image's encoded bytes
    (``data``), with its size as checked while loading. ``load()`` gives the RGB image.

    Compared and hashed by identity (rows that name the same file share one reference), so the
    cache never hashes image bytes.
    """

    what: str  # how messages name it: "image file <path>" or "embedded image (<path>)"
    size: tuple[int, int]
    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)

    @classmethod
    def checked(cls, source: Path | bytes, what: str) -> ImageRef:
        """A reference to ``source`` after decoding it once (and dropping the pixels), so a broken
        or oversized image is found while loading. Raises ``ImageProblem``."""
        image = decode(source, what, max_image_pixels())
        size = image.size
        image.close()
        if isinstance(source, bytes):
            return cls(what, size, data=source)
        return cls(what, size, path=source)

    def load(self) -> Image.Image:
        """The decoded RGB image (cached; do not modify it in place).

        Raises:
            DataError: if the file has gone or changed since loading.
        """
        return _CACHE.get(self)

    def _decode(self) -> Image.Image:
        source = self.data if self.data is not None else self.path
        assert source is not None, "an ImageRef holds a path or bytes"
        try:
            # Checked while loading; the size check catches a file replaced since.
            return decode(source, self.what, max_image_pixels(), expect_size=self.size)
        except ImageProblem as exc:
            raise DataError(f"{exc} (at batch time)") from None


class _LruCache:
    """The last decoded images, at most ``max_images`` and ``max_bytes`` of pixels (the newest one
    is always kept, however large)."""

    def __init__(self, max_images: int, max_bytes: int) -> None:
        self.max_images, self.max_bytes = max_images, max_bytes
        self._images: OrderedDict[ImageRef, Image.Image] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, ref: ImageRef) -> Image.Image:
        with self._lock:
            image = self._images.get(ref)
            if image is not None:
                self._images.move_to_end(ref)
                return image
        image = ref._decode()
        with self._lock:
            if ref not in self._images:
                self._images[ref] = image
                self._bytes += _nbytes(image)
            while len(self._images) > 1 and (len(self._images) > self.max_images or self._bytes > self.max_bytes):
                _, dropped = self._images.popitem(last=False)
                self._bytes -= _nbytes(dropped)
        return image

    def clear(self) -> None:
        with self._lock:
            self._images.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._images)


def _nbytes(image: Image.Image) -> int:
    return image.width * image.height * 4  # PIL keeps an RGB pixel in 4 bytes


_CACHE = _LruCache(CACHE_IMAGES, CACHE_BYTES)


def clear_cache() -> None:
    """Drop every decoded image (tests; a process that is done training)."""
    _CACHE.clear()


def as_pil(image: object) -> object:
    """A row's image ready for a processor: an ``ImageRef`` decoded (through the cache), anything
    else (an in-memory PIL image of the synthetic source, None) as it is."""
    return image.load() if isinstance(image, ImageRef) else image
