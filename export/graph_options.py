"""How the export graph computes a backbone: :class:`GraphOptions`.

Every option keeps the numbers (to float rounding: only the order of additions changes) and changes which
operators the runtime sees, for speed or peak memory on the CPU runtimes:

* ``band_rows``, ``band_levels`` (UNet): the last decoder levels are computed in bands of rows. A band of the
  3×3 convolution after the upsample-and-concatenate needs one row above and below it, and the bilinear
  upsampling of that band needs the two lower-resolution rows around each of its rows; nothing else in the
  backbone looks across rows, and the head's image-wide statistics come after the backbone. So the
  full-resolution upsampled map and concatenation are never materialized, only one band of them at a time.
  At the last level the full-resolution branch (two 3×3 convolutions of the input) is computed per band as
  well, and the backbone's 1×1 output convolution too.
* ``decoder_conv`` (UNet): the form of the decoder convolutions that have one output channel per group (in the
  paper's UNet the last one, 192 → 64 channels in 64 groups): ``grouped`` as trained; ``depthwise``, a depthwise
  convolution followed by a sum over each group's channels; ``split``, depthwise convolutions of the upsampled
  map and of the skip separately, with the group sum folded into the following 1×1 convolution, so the
  concatenation disappears (``conv(cat(a, b)) = conv_a(a) + conv_b(b)``).
* ``upsample_conv`` (ResNet): the nearest ×2 upsampling followed by a 3×3 convolution, ``plain``, or
  ``transposed``: one stride-2 4×4 transposed convolution of the low-resolution map (each output pixel sees
  only 2×2 distinct inputs; see :mod:`export.resnet_graph`): 4/9 of the multiply-adds and no upsampled map.

The manifest's ``graph`` entry records what was requested, what applied, and each option that did not apply
with the reason (a ResNet has no decoder convolutions; banding needs fixed shapes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from pgn.errors import PGNError

DECODER_CONV_FORMS = ("grouped", "depthwise", "split")
UPSAMPLE_CONV_FORMS = ("plain", "transposed")


@dataclass(frozen=True)
class GraphOptions:
    """The operator choices of an export graph (see the module docs). The defaults are the backbone as trained;
    each export target has its own defaults (:attr:`export.target.ExportTarget.default_graph_options`).

    Args:
        band_rows: UNet: rows per band in the banded decoder levels; 0 (default) computes every level on whole maps.
        band_levels: UNet: how many of the last decoder levels are banded (1: the full-resolution level only).
        decoder_conv: UNet: ``grouped``, ``depthwise`` or ``split`` form of the one-output-per-group decoder convs.
        upsample_conv: ResNet: ``plain`` or ``transposed`` form of the nearest-upsample + 3×3 convolutions.
    """

    band_rows: int = 0
    band_levels: int = 2
    decoder_conv: str = "grouped"
    upsample_conv: str = "plain"

    def __post_init__(self):
        for name in ("band_rows", "band_levels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise PGNError(f"graph option {name} must be a non-negative integer, got {value!r}")
        if self.decoder_conv not in DECODER_CONV_FORMS:
            raise PGNError(f"graph option decoder_conv={self.decoder_conv!r}: use one of {', '.join(DECODER_CONV_FORMS)}")
        if self.upsample_conv not in UPSAMPLE_CONV_FORMS:
            raise PGNError(f"graph option upsample_conv={self.upsample_conv!r}: use one of {', '.join(UPSAMPLE_CONV_FORMS)}")

    @classmethod
    def plain(cls) -> "GraphOptions":
        """The backbone exactly as trained: no bands, grouped decoder convs, plain upsample-convs."""
        return cls()

    @classmethod
    def parse(cls, text: str, base: "GraphOptions | None" = None) -> "GraphOptions":
        """``"band_rows=16,decoder_conv=split"`` (or ``plain``) → options; unnamed fields keep ``base``'s values.

        Raises:
            PGNError: an unknown name or a bad value, in one line that lists the known names.
        """
        base = base or cls()
        text = str(text).strip()
        if text in ("", "default"):
            return base
        if text == "plain":
            return cls.plain()
        known = {f.name: f.type for f in fields(cls)}
        changes: dict[str, object] = {}
        for item in text.split(","):
            name, sep, value = (part.strip() for part in item.partition("="))
            if not sep or name not in known:
                raise PGNError(f"graph option {item.strip()!r}: write NAME=VALUE with NAME one of {', '.join(known)} (or 'plain')")
            if known[name] == "int":
                try:
                    changes[name] = int(value)
                except ValueError:
                    raise PGNError(f"graph option {name} must be an integer, got {value!r}") from None
            else:
                changes[name] = value
        return replace(base, **changes)

    def to_dict(self) -> dict:
        """Plain-dict form for manifests and benchmark rows."""
        return asdict(self)

    def __str__(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.to_dict().items())


def resolve_graph_options(value: "GraphOptions | str | None", base: GraphOptions | None = None) -> GraphOptions:
    """Options given as :class:`GraphOptions`, as text (parsed over ``base``) or ``None`` (``base`` itself;
    default ``GraphOptions()``)."""
    if isinstance(value, GraphOptions):
        return value
    return GraphOptions.parse("" if value is None else value, base)
