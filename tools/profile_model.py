"""Profile a model: ``python tools/profile_model.py --backbone resnet50 --attn se`` (an alias of ``visattn profile``).

(Not named ``profile.py``: a script there would shadow the stdlib ``profile`` module that torch imports.)
"""

from visattn.cli import run_cli
from visattn.commands import profile_main

if __name__ == "__main__":
    run_cli(profile_main)
