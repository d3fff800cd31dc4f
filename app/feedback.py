"""How an error reaches the page: one clear line, never a traceback (that goes to the server log)."""

from __future__ import annotations

import logging

log = logging.getLogger("app")


def error_message(error: BaseException) -> str:
    """Markdown for the page's status line. Input problems say what to fix; a bug says only that it happened."""
    from app.handlers import UserError
    from codec.errors import CodecError

    if type(error).__name__ == "ComparisonCancelled":
        return "**Stopped.** Nothing was kept from this run."
    if isinstance(error, (UserError, CodecError)):
        return f"**Cannot run this:** {_inert(str(error))}"
    log.error("handler failed", exc_info=error)
    return (
        f"**Something went wrong inside the app** ({type(error).__name__}). The details are in the server's "
        "log; the app keeps serving, so try other settings or another clip."
    )


def _inert(text: str) -> str:
    return text.replace("<", "&lt;").replace(">", "&gt;")
