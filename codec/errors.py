"""The errors a user of `codec` can meet. Each carries a message meant for a person, not a traceback."""


class CodecError(Exception):
    """Base of every error this library raises on bad input or a missing resource."""


class VideoError(CodecError):
    """A file is not a readable video, or exceeds the limits (resolution, frame count)."""


class BitstreamError(CodecError):
    """A bitstream is damaged, truncated, of an unknown version, or made by another model pack."""


class CodecUnavailableError(CodecError):
    """A codec is registered but cannot run here (missing encoder in the PyAV build, missing model pack)."""


class SpecError(CodecError):
    """A codec spec such as ``x265:preset=veryslow`` names an unknown codec or option, or a bad value."""


class RowSchemaError(CodecError):
    """A stored evaluation result row is of another schema version (`codec.eval.rows`), or not a result row."""
