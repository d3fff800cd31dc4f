"""The Gradio app: UI only. It receives the callables it needs from app.py and never imports a model itself."""

from app.ui import build_app

__all__ = ["build_app"]
