"""The built-in web UI: a playground and a live dashboard served at `/` (docs/web_ui.md)."""
