"""Where the shipped finder lives (a leaf: importing it costs nothing, no torch)."""
from ...core.files import ASSETS

SHIPPED = ASSETS / "finder.safetensors"
SHIPPED_JSON = SHIPPED.with_suffix(".json")
