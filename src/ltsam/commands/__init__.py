"""The commands of ``ltsam``, side by side: each module adds its parser (``add_parser(sub)``) and runs it.

A command imports the library, never another command; ``ltsam.cli`` only dispatches.
"""

from ltsam.commands import eval, finetune, hessian, recipes, report, sweep, train

# In the order ``ltsam --help`` lists them.
COMMANDS = (train, eval, finetune, recipes, hessian, sweep, report)

__all__ = ["COMMANDS"]
