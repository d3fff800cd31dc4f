"""The Gradio app: UI only. Tabs are built by functions that receive their handlers (`app.handlers`: compare,
sweep, blind test, codecs); the handlers call the codec library, imported on first use, so building the page loads
no model."""

from app.ui import build_app

__all__ = ["build_app"]
