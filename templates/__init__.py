"""jinja2 templates of the generated sources, shipped as package data (one template per file)."""
