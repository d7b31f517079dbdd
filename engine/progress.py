"""Rich progress for extraction: one bar for the cohort, one per slide in flight."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


class ExtractProgress:
    def __init__(self, total: int, skipped: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=Console(stderr=True), transient=False,
                                 disable=not enabled)
        self.overall = self.progress.add_task("slides", total=total, completed=skipped)
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def slide_started(self, slide_id: str):
        task = self.progress.add_task(f"  {slide_id}", total=None)
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
            self.progress.console.print(f"[red]error[/red] {rec.get('reason')}", soft_wrap=True, markup=True,
                                        highlight=False)
        elif status == "empty" or rec.get("corrupt_tiles"):
            self.progress.console.print(f"[yellow]{status}[/yellow] {slide_id}: {rec.get('reason')}", soft_wrap=True,
                                        highlight=False)
        self.progress.advance(self.overall)
