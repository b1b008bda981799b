"""`python -m bot.cli`: the `tuneloop` command, for processes started without the console script."""

from bot.cli import app

if __name__ == "__main__":
    app()
