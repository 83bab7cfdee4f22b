"""The ``moejet`` program: the console script's entry point.

It lives outside the moejet package because ``import moejet`` registers moejet's models with timm, which imports
torch and timm (seconds). The package checks for this module and skips that import when run through here; the
parser is built from the light modules of ``moejet.cli`` and each subcommand imports what it needs when it runs.
"""


def main() -> int:
    from moejet.cli import main as moejet

    return moejet()


if __name__ == "__main__":
    raise SystemExit(main())
