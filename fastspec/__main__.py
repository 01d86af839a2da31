"""``python -m fastspec`` runs the command-line interface."""
from fastspec.cli import main

if __name__ == "__main__":
    main()
