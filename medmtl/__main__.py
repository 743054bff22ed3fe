"""``python -m medmtl`` runs the CLI."""

from medmtl.cli import main

if __name__ == "__main__":
    main()
