"""Errors a user can act on. The CLI prints them as one or a few lines, without a traceback."""


class TunesmithError(Exception):
    """Base for errors caused by the user's input, not by a bug."""


class ConfigError(TunesmithError):
    """The recipe or its overrides are invalid: names the key, the value and what is allowed."""


class RunFinished(TunesmithError):
    """--resume on a run that already wrote its final weights: there is nothing left to train."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training. `checkpoint` is the newest complete checkpoint (None: none yet), `saved` whether it
    was written at the interrupted step. `command` is what the user ran, for the line that says how to go on."""

    def __init__(self, step: int, checkpoint, saved: bool):
        super().__init__(step)
        self.step, self.checkpoint, self.saved = step, checkpoint, saved
        self.command = "tunesmith train RECIPE"

    def __str__(self) -> str:
        if self.checkpoint is None:
            return f"interrupted at step {self.step}, before the first checkpoint: nothing saved; start again with: {self.command}"
        resume = f"continue with: {self.command} --resume"
        if self.saved:
            return f"interrupted at step {self.step}: checkpoint saved to {self.checkpoint}; {resume}"
        return f"interrupted at step {self.step}, not saved: the last checkpoint is {self.checkpoint}; {resume}"
