"""Where the shipped finder lives (a leaf: importing it costs nothing, no torch)."""
from pathlib import Path

SHIPPED = Path(__file__).resolve().parent.parent / "assets" / "finder.safetensors"
SHIPPED_JSON = SHIPPED.with_suffix(".json")
