"""`r1core study`: the studies that compare recipes, each a subcommand: `r1core study distill`
(distillation against RL on a small student, r1core.recipes.study_distill) and `r1core study all`
(every study recipe over seeds and one table of findings, r1core.recipes.study_all)."""

from __future__ import annotations

from r1core.recipes.flags import Command


class CommandGroup:
    """A command whose subcommands are commands: reading what was given goes to the one named."""

    def __init__(self, dest: str, commands: dict[str, Command]):
        self.dest, self.commands = dest, commands

    def read(self, ns):
        return self.commands[getattr(ns, self.dest)].read(ns)


def commands(sub) -> dict[str, CommandGroup]:
    from r1core.recipes.study_all import commands as all_commands
    from r1core.recipes.study_distill import commands as distill_commands

    p = sub.add_parser("study", help="studies that compare recipes: `study distill` (distillation vs RL), `study all` (the table)",
                       description="Studies that reproduce the articles' findings: `r1core study distill` and `r1core study all` "
                                   "(each with --help).")
    studies = p.add_subparsers(dest="study", required=True, metavar="{distill,all}")
    return {"study": CommandGroup("study", {**distill_commands(studies), **all_commands(studies)})}


__all__ = ["CommandGroup", "commands"]
