"""Named config presets (YAML), applied by ``preset`` under the keys a user sets."""
