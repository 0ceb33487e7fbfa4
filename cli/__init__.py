"""Command-line front end of csd-texture (installed as the package `csd_texture_cli`)."""
