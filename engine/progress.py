"""Rich progress for extraction: one bar for the cohort, one per slide in flight."""
from __future__ import annotations


def one_line(text) -> str:
    """A path or reason with its line breaks shown as \\n: a file name with a newline split its error line."""
    return str(text).replace("\n", "\\n").replace("\r", "\\r")


def plain(text) -> str:
    """User text (a path, a slide id, a reason) for a rich line: one line, markup escaped, so a file name never
    styles, breaks or crashes the line ('x[/b].svs' was a MarkupError traceback)."""
    from rich.markup import escape

    return escape(one_line(text))


class ExtractProgress:
    """With ``enabled=False`` (``--quiet``, ``--json``) there is no bar, and rich is imported only to print a
    slide's error or warning line (start-up of a one-slide job: ~30 ms CPU less)."""

    def __init__(self, total: int, skipped: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.progress = None
        self._console = None
        self.tasks: dict[str, int] = {}
        if enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                       TimeElapsedColumn)

            self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                     MofNCompleteColumn(), TimeElapsedColumn(), console=Console(stderr=True),
                                     transient=False)
            self.overall = self.progress.add_task("slides", total=total, completed=skipped)

    def __enter__(self):
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc) if self.progress is not None else None

    def console(self):
        if self.progress is not None:
            return self.progress.console
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True)
        return self._console

    def slide_started(self, slide_id: str):
        if self.progress is None:
            return lambda done, total: None
        task = self.progress.add_task(f"  {plain(slide_id)}", total=None)
        self.tasks[slide_id] = task

        def update(done: int, total: int) -> None:
            self.progress.update(task, completed=done, total=total)

        return update

    def slide_done(self, slide_id: str, rec: dict) -> None:
        task = self.tasks.pop(slide_id, None)
        if task is not None:
            self.progress.remove_task(task)
        status = rec.get("status")
        if status == "error":
            self.console().print(f"[red]error[/red] {plain(rec.get('reason'))}", soft_wrap=True, markup=True,
                                 highlight=False)
        elif status == "empty" or rec.get("corrupt_tiles"):
            self.console().print(f"[yellow]{status}[/yellow] {plain(slide_id)}: {plain(rec.get('reason'))}", soft_wrap=True,
                                 highlight=False)
        if self.progress is not None:
            self.progress.advance(self.overall)
