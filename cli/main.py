"""Placeholder entry point; replaced by the real CLI."""


def main() -> None:
    raise SystemExit("csd-texture CLI is not built yet")
