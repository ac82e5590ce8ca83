"""What the training examples share: a progress bar (tqdm's where installed) and the name of the
backend ssmc's kernels run on. The examples import it from their own directory."""
import sys
import time

import torch


class _PlainBar:
    """A minimal stand-in for tqdm: a text bar redrawn in place (or a line every 10% off a TTY)."""

    def __init__(self, total, desc=""):
        self.total, self.desc, self.n, self.postfix = total, desc, 0, ""
        self.start = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.last_decile = -1

    def set_postfix_str(self, s):
        self.postfix = s

    def update(self, n=1):
        self.n += n
        decile = 10 * self.n // self.total
        if self.tty or decile != self.last_decile or self.n == self.total:
            self.last_decile = decile
            width = 30
            filled = width * self.n // self.total
            elapsed = time.perf_counter() - self.start
            line = (f"{self.desc} [{'#' * filled}{'.' * (width - filled)}] {self.n}/{self.total} "
                    f"{elapsed:.0f}s {self.postfix}")
            sys.stderr.write(("\r" + line) if self.tty else (line + "\n"))
            sys.stderr.flush()

    def write(self, message):
        sys.stderr.write(("\n" if self.tty else "") + message + "\n")
        sys.stderr.flush()

    def close(self):
        if self.tty:
            sys.stderr.write("\n")


def progress(total, desc, enabled=True):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
        return tqdm(total=total, desc=desc, dynamic_ncols=True)
    except ImportError:
        return _PlainBar(total, desc)


def backend_name(device):
    from ssmc.runtime.backend import select_backend
    return select_backend(torch.device(device))
