"""Axes of stored arrays: read from metadata, given as ``data.axes``, or guessed from the shape.

An axes string names every dimension of an array as stored, e.g. ``CZYX``, ``ZCYX``, ``YXC``,
``TCZYX``. Letters: ``C`` channels (``S``, tifffile's samples, is read as ``C``), ``Z``, ``Y``,
``X`` spatial, ``T`` time (one time point is read: ``data.timepoint``, needed when there are several). icone trains on ``C x Z x Y x X``
(volumes) or ``C x Y x X`` (images); an array without ``C`` has one channel.

Guesses, for arrays without metadata (stated by ``icone data``; ``data.axes`` overrides them):

- 2 dimensions: ``YX``;
- 3: ``YXC`` if the last is at most 4 and the others larger, ``CYX`` if the first is (at most 8 in a
  folder of 2D images: multichannel microscopy, e.g. Cell Painting's 5 or RxRx1's 6 channels, is
  stored one ``CYX`` file per field of view), else ``ZYX``;
- 4: ``CZYX`` if the first is not larger than the last, else ``ZYXC``;
- 5: ``TCZYX`` (the OME order) if the first is 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from icone.errors import UserError

LETTERS = "TCZYX"
MAX_GUESSED_CHANNELS = 4
MAX_IMAGE_SET_CHANNELS = 8  # a folder of 2D images: a leading axis this short is channels
AMBIGUOUS = MAX_IMAGE_SET_CHANNELS  # an axis this short may be channels or slices: a guess then is stated
OTHER_READING = {"CYX": "ZYX", "ZYX": "CYX", "YXC": "ZYX", "CZYX": "ZCYX", "ZYXC": "CZYX", "TCZYX": "CZYXT"}


def parse_axes(text: str, what: str = "data.axes") -> str:
    """An axes string, upper case, checked: known letters, each once, ``Y`` and ``X`` present."""
    axes = text.strip().upper().replace("S", "C")
    bad = sorted(set(axes) - set(LETTERS))
    if bad or len(set(axes)) != len(axes) or "Y" not in axes or "X" not in axes:
        reason = (
            f"unknown letter(s) {', '.join(bad)}"
            if bad
            else "a letter is repeated"
            if len(set(axes)) != len(axes)
            else "Y and X are needed"
        )
        raise UserError(
            f"{what}={text!r} is not valid ({reason}); name each dimension once with C, Z, Y, X (and T), e.g. CZYX or YXC"
        )
    return axes


def guess_axes(shape: tuple[int, ...], image_set: bool = False) -> str | None:
    """The axes of an array without metadata (see the module's rules; ``image_set``: a file of a folder of
    2D images); ``None`` where no rule applies."""
    small = MAX_GUESSED_CHANNELS
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3:
        if shape[-1] <= small < min(shape[:2]):
            return "YXC"
        leading = MAX_IMAGE_SET_CHANNELS if image_set else small
        if shape[0] <= leading < min(shape[1:]):
            return "CYX"
        return "ZYX"
    if len(shape) == 4:
        return "CZYX" if shape[0] <= shape[-1] else "ZYXC"
    if len(shape) == 5 and shape[0] == 1:
        return "TCZYX"
    return None


def from_metadata(letters: str | None) -> str | None:
    """Axes from a reader's letters (tifffile's ``series.axes``, OME names): ``None`` if any is unknown (``Q``, ``I``...)."""
    if not letters:
        return None
    axes = letters.upper().replace("S", "C")
    if set(axes) - set(LETTERS) or len(set(axes)) != len(axes) or "Y" not in axes or "X" not in axes:
        return None
    return axes


@dataclass(frozen=True)
class Layout:
    """How an array's stored axes map to ``C x spatial``: the axes, where they came from, the spatial letters."""

    axes: str  # as stored, e.g. "ZCYX"
    origin: str  # "metadata", "data.axes", "guessed" or the format's convention
    shape: tuple[int, ...]  # as stored
    time: int = 0  # the time point read where there is a T axis

    @property
    def spatial(self) -> str:
        return "".join(a for a in "ZYX" if a in self.axes)

    @property
    def channels(self) -> int:
        return self.shape[self.axes.index("C")] if "C" in self.axes else 1

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[self.axes.index(a)] for a in self.spatial)


def layout(
    shape: tuple[int, ...], name: str, override: str | None, known: str | None, convention: str = "",
    timepoint: int | None = None, image_set: bool = False,
) -> Layout:  # fmt: skip
    """The :class:`Layout` of an array of ``shape`` called ``name``: ``data.axes`` if given, else the
    metadata's axes (``known``), else the format's ``convention`` (e.g. NIfTI), else a guess; at
    ``timepoint`` (``data.timepoint``) where it has a T axis."""
    shape = tuple(int(s) for s in shape)
    if not 2 <= len(shape) <= len(LETTERS):
        raise UserError(
            f"'{name}' has {len(shape)} dimension(s) (shape {'x'.join(map(str, shape))}); icone reads 2 to 5 "
            "(Y and X, and Z, C, T where there are): save the image or volume as such an array"
        )
    if override:
        axes, origin = parse_axes(override), "data.axes"
        if len(axes) != len(shape):
            example = guess_axes(shape) or "C, Z, Y, X"
            raise UserError(
                f"data.axes={override} names {len(axes)} dimension(s) but '{name}' has {len(shape)} "
                f"(shape {'x'.join(map(str, shape))}); give {len(shape)} letters, e.g. data.axes={example}"
            )
    elif known and len(known) == len(shape):
        axes, origin = known, "metadata"
    elif convention and len(convention) == len(shape):
        axes, origin = convention, "format"
    else:
        guessed = guess_axes(shape, image_set)
        if guessed is None:
            raise UserError(
                f"cannot tell the axes of '{name}' (shape {'x'.join(map(str, shape))}); name them with data.axes=..., "
                "e.g. data.axes=TCZYX"
            )
        axes, origin = guessed, "guessed"
    return Layout(axes, origin, shape, _time_point(axes, shape, name, timepoint))


def _time_point(axes: str, shape: tuple[int, ...], name: str, timepoint: int | None) -> int:
    """The index read along T: ``data.timepoint``, or the only one there is (without a T axis: 0, whatever is asked)."""
    if "T" not in axes:
        return 0
    count = shape[axes.index("T")]
    if timepoint is None and count > 1:
        raise UserError(
            f"'{name}' holds {count} time points (axes {axes}); pick one with data.timepoint=0..{count - 1}, "
            "or name the axis otherwise with data.axes=..."
        )
    if timepoint is not None and timepoint >= count:
        raise UserError(
            f"data.timepoint={timepoint} but '{name}' has {count} time point(s) (axes {axes}); choose 0..{count - 1}"
        )
    return timepoint or 0


def guess_warning(plan: Layout, name: str) -> str | None:
    """One line stating a guess that could be wrong (an axis besides Y and X short enough to be channels or
    slices, at most 8), with the ``data.axes`` of the other reading."""
    short = [n for a, n in zip(plan.axes, plan.shape) if a not in "YX" and n <= AMBIGUOUS]
    if plan.origin != "guessed" or not short:
        return None
    other = OTHER_READING.get(plan.axes, "...")
    shape = "x".join(map(str, plan.shape))
    return (
        f"'{name}' has no axes in its metadata: its shape {shape} is read as {plan.axes} (guessed); if that is wrong, "
        f"name the axes, e.g. data.axes={other}"
    )
