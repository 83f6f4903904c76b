"""``python -m visattn <command> [flags]``: the same program as the installed ``visattn`` command."""

from visattn.cli.main import main

if __name__ == "__main__":
    main()
