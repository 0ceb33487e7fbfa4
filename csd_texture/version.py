"""The csd-texture version, recorded in every output (glTF asset.generator, metadata)."""

__version__ = "0.1.0"
