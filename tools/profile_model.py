"""Profile a model: ``python tools/profile_model.py --backbone resnet50 --attn se`` (an alias of ``visattn profile``).

(Not named ``profile.py``: a script there would shadow the stdlib ``profile`` module that torch imports.)
"""

from visattn.cli.main import run_cli
from visattn.cli.profile import main

if __name__ == "__main__":
    run_cli(main)
