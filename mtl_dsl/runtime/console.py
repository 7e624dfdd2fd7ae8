"""The console of a run: one line per record of the training loop (start, log interval,
evaluation, checkpoint, note), and the format of the log line."""
from __future__ import annotations

from typing import Callable


class Console:
    """Turns the records of the training loop into console lines (one per log interval)."""

    def __init__(self, write: Callable[[str], None] = print, bar_width: int = 20):
        self.write = write
        self.bar_width = bar_width

    def __call__(self, record: dict) -> None:
        kind = record.get("kind")
        if kind == "start":
            self.write(format_start_line(record))
        elif kind == "log":
            self.write(format_log_line(record, self.bar_width))
        elif kind == "eval":
            metrics = " ".join(f"{k} {v:.4g}" for k, v in record["metrics"].items())
            images = f", {record['images']} images" if record.get("images") else ""
            self.write(f"eval @ step {record['step']}: {metrics} ({record['seconds']:.1f} s{images})")
        elif kind == "checkpoint":
            self.write(f"checkpoint @ step {record['step']}: {record['path']}")
        elif kind == "note":
            self.write(record["text"])


def format_start_line(record: dict) -> str:
    start = f"from step {record['step']} " if record.get("step") else ""
    n = record.get("threads")
    threads = f" ({n} thread{'s' if n != 1 else ''})" if record.get("device") == "cpu" else ""
    nodes = len(record.get("nodes") or [])
    where = f" on {nodes} nodes" if nodes > 1 else ""
    return (f"training {record['total']} steps {start}on {record['world']} worker(s){where}, "
            f"{record['device']}{threads}, batch {record['batch']}; tasks {', '.join(record['tasks'])}")


def clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def format_log_line(record: dict, bar_width: int = 20) -> str:
    step, total = record["step"], record["total"]
    done = step / total
    filled = int(round(done * bar_width))
    bar = "#" * filled + "." * (bar_width - filled)
    speed = record["images_per_s"]
    left = record["elapsed"] / max(step - record.get("start_step", 0), 1) * (total - step)
    losses = " ".join(f"{t} {v:.4f}" for t, v in record["losses"].items())
    width = len(str(total))
    return (f"step {step:>{width}}/{total} [{bar}] {100 * done:3.0f}% | {losses} | total "
            f"{record['loss']:.4f} | lr {record['lr']:.2e} | {speed:.1f} img/s | {clock(left)} left")
