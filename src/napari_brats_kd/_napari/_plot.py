"""Live training plot for the training dock widget: loss per step / epoch and validation Dice.

A matplotlib figure with two panels: training loss against the optimisation step (thin line per
step, dots for epoch means) and validation Dice per region (WT, TC, ET) against the epoch.

Why the figure is rendered off the GUI thread: a matplotlib draw of this figure takes about 60 ms
of Python (mostly text layout), and while the training thread competes for the interpreter it
stretches past 100 ms, long enough for napari to stutter at every update. So the figure lives on a
plain Agg canvas owned by one rendering thread; the GUI thread only hands it snapshots of the
points (the newest wins, so a fast run cannot queue up draws) and shows the finished image.

The figure takes its colours from napari's theme (:func:`theme_colors`, followed as the user
switches themes), so that it does not sit as a white block in the default dark window; while a
panel has no points it shows a hint and no ticks (an empty 0-1 axis means nothing).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QLabel, QSizePolicy, QVBoxLayout, QWidget

from ..labels import REGION_DESCRIPTIONS, REPORT_REGIONS

#: Line colours of the regions (fixed so they never swap between runs).
REGION_COLORS = {"WT": "tab:green", "TC": "tab:red", "ET": "tab:orange"}

DPI = 80


@dataclass(frozen=True)
class PlotColors:
    """The figure's colours (any matplotlib colour, e.g. ``"#23242b"``).

    Attributes
    ----------
    background
        Behind the panels: the dock's own background.
    panel
        Inside the axes.
    text
        Labels, ticks and the legend's text.
    muted
        The hints, the grid and the per-step loss line.
    """

    background: str = "white"
    panel: str = "white"
    text: str = "black"
    muted: str = "0.5"


def theme_colors(theme_name: str) -> PlotColors:
    """The plot's colours in napari's theme ``theme_name`` (``"dark"``, ``"light"``, ...).

    An unknown theme gives matplotlib's own (light) colours.
    """
    from napari.utils.theme import get_theme

    try:
        theme = get_theme(theme_name)
    except (KeyError, ValueError):
        return PlotColors()
    return PlotColors(
        background=theme.background.as_hex(),
        panel=theme.foreground.as_hex(),
        text=theme.text.as_hex(),
        muted=theme.highlight.as_hex() if theme.type == "dark" else theme.secondary.as_hex(),
    )


class _Figure:
    """The matplotlib figure and its lines; used by the rendering thread only."""

    def __init__(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        # Fixed margins (set per size in render): constrained layout would cost every draw.
        self.figure = Figure(figsize=(4.0, 4.6), dpi=DPI)
        self.canvas = FigureCanvasAgg(self.figure)
        self.ax_loss, self.ax_dice = self.figure.subplots(2, 1)
        ax = self.ax_loss
        (self.step_line,) = ax.plot([], [], lw=0.8, color="0.55", label="step")
        (self.epoch_line,) = ax.plot([], [], "o-", ms=4, color="tab:blue", label="epoch mean")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize="small")
        self.loss_hint = ax.text(0.5, 0.5, "Start a run to see its loss", ha="center",
                                 va="center", transform=ax.transAxes, color="0.5")  # fmt: skip
        ax = self.ax_dice
        self.dice_lines = {
            r: ax.plot(
                [], [], "o-", ms=4, color=REGION_COLORS[r], label=f"{r} {REGION_DESCRIPTIONS[r]}"
            )[0]
            for r in REPORT_REGIONS
        }
        ax.set_ylim(0, 1.02)
        ax.set_yticks([0, 0.5, 1])
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation Dice")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
        self.dice_hint = ax.text(0.5, 0.5, "Dice appears after the\nfirst validated epoch",
                                 ha="center", va="center", transform=ax.transAxes,
                                 color="0.5")  # fmt: skip
        # Steps and epochs are whole numbers: no tick at step 1.2 or epoch 0.6.
        for axis in (self.ax_loss.xaxis, self.ax_dice.xaxis):
            axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        self.colors: PlotColors | None = None

    def apply_colors(self, colors: PlotColors) -> None:
        """Paint the figure in ``colors`` (a theme's)."""
        self.colors = colors
        self.figure.set_facecolor(colors.background)
        for ax in (self.ax_loss, self.ax_dice):
            ax.set_facecolor(colors.panel)
            ax.xaxis.label.set_color(colors.text)
            ax.yaxis.label.set_color(colors.text)
            ax.tick_params(colors=colors.text)
            ax.grid(alpha=0.3, color=colors.muted)
            for spine in ax.spines.values():
                spine.set_color(colors.muted)
            legend = ax.get_legend()
            legend.get_frame().set_facecolor(colors.panel)
            legend.get_frame().set_edgecolor(colors.muted)
            for text in legend.get_texts():
                text.set_color(colors.text)
        self.step_line.set_color(colors.muted)
        self.loss_hint.set_color(colors.muted)
        self.dice_hint.set_color(colors.muted)

    @staticmethod
    def _show_ticks(ax: Any, shown: bool) -> None:
        # Ticks on an empty panel are matplotlib's default 0-1 range: no information, so none;
        # nor a legend of lines not drawn yet, over the hint.
        ax.tick_params(
            bottom=shown, left=shown, labelbottom=shown, labelleft=shown,
        )  # fmt: skip
        ax.get_legend().set_visible(shown)
        ax.grid(shown)

    def render(self, snap: dict[str, Any]) -> tuple[bytes, int, int]:
        """RGBA pixels (and width, height) of the figure drawn with the snapshot's points."""
        width, height = max(snap["size"][0], 200), max(snap["size"][1], 200)
        if snap["colors"] != self.colors:
            self.apply_colors(snap["colors"])
        self.figure.set_size_inches(width / DPI, height / DPI)
        # Margins in pixels (axis labels keep their room whatever the widget's size).
        self.figure.subplots_adjust(
            left=58 / width,
            right=1 - 10 / width,
            top=1 - 10 / height,
            bottom=42 / height,
            hspace=60 / max((height - 52 - 60) / 2, 1),  # 60 px between the panels
        )
        self.step_line.set_data(snap["steps"], snap["step_losses"])
        self.epoch_line.set_data(snap["epoch_steps"], snap["epoch_losses"])
        has_loss = bool(snap["steps"] or snap["epoch_steps"])
        self.loss_hint.set_visible(not has_loss)
        self._show_ticks(self.ax_loss, has_loss)
        for region, line in self.dice_lines.items():
            line.set_data(snap["val_epochs"], snap["val_dice"][region])
        self.dice_hint.set_visible(not snap["val_epochs"])
        self._show_ticks(self.ax_dice, bool(snap["val_epochs"]))
        self.ax_loss.relim()
        self.ax_loss.autoscale_view()
        epochs = snap["val_epochs"]
        if epochs:
            self.ax_dice.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        self.canvas.draw()
        buffer = self.canvas.buffer_rgba()
        h, w = buffer.shape[:2]
        return bytes(buffer), w, h


class TrainingPlot(QWidget):
    """Two panels: training loss and validation Dice per region.

    Attributes
    ----------
    steps, step_losses
        Every step's global index and loss.
    epochs, epoch_steps, epoch_losses
        Epoch means of the loss, at the step that ended the epoch.
    val_epochs, val_dice
        Validated epochs and ``{region: [Dice per validated epoch]}``.
    n_draws
        Images rendered and shown so far.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.image = QLabel(self)
        self.image.setAlignment(Qt.AlignCenter)
        self.image.setMinimumSize(200, 240)
        # Ignored: the pixmap must not drive the layout (it is rendered at the label's size).
        self.image.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Ignored)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.image)
        self.n_draws = 0
        self.colors = PlotColors()
        # The rendering thread never calls Qt (Qt objects may be gone when it finishes, e.g. at
        # exit): it leaves its pixels in _done and the GUI thread polls while a render is due.
        self._wake = threading.Condition()
        self._pending: dict[str, Any] | None = None
        self._done: tuple[bytes, int, int] | None = None
        self._busy = False
        self._closing = False
        self._poll = QTimer(self)
        self._poll.setInterval(50)
        self._poll.timeout.connect(self._show)
        self._thread = threading.Thread(target=self._render_loop, name="training-plot", daemon=True)
        self._thread.start()
        self.destroyed.connect(self.close_renderer)
        self.clear()

    # ------------------------------------------------------------------------------------ data
    def clear(self) -> None:
        """Forget all points (a new run)."""
        self.steps: list[int] = []
        self.step_losses: list[float] = []
        self.epochs: list[int] = []
        self.epoch_steps: list[int] = []
        self.epoch_losses: list[float] = []
        self.val_epochs: list[int] = []
        self.val_dice: dict[str, list[float]] = {r: [] for r in REPORT_REGIONS}
        self.redraw()

    @property
    def n_points(self) -> int:
        """Number of plotted points (steps, epochs and validations together)."""
        return len(self.steps) + len(self.epochs) + len(self.val_epochs)

    def add_step(self, step: int, loss: float) -> None:
        """One optimisation step's loss."""
        self.steps.append(int(step))
        self.step_losses.append(float(loss))
        self.redraw()

    def add_epoch(self, epoch: int, step: int, loss: float) -> None:
        """An epoch's mean loss, drawn at the step that ended it."""
        self.epochs.append(int(epoch))
        self.epoch_steps.append(int(step))
        self.epoch_losses.append(float(loss))
        self.redraw()

    def add_validation(self, epoch: int, dice: Mapping[str, float]) -> None:
        """Validation Dice per region after ``epoch``."""
        self.val_epochs.append(int(epoch))
        for region in REPORT_REGIONS:
            self.val_dice[region].append(float(dice.get(region, float("nan"))))
        self.redraw()

    def load_history(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Replace the points by a run's epoch rows (the engine's ``log.csv``).

        Steps are not in the log, so only epoch means and validations are drawn.
        """
        self.clear()
        for row in rows:
            epoch, step = int(float(row["epoch"])), int(float(row["step"]))
            self.epochs.append(epoch)
            self.epoch_steps.append(step)
            self.epoch_losses.append(float(row["loss"]))
            values = {r: row.get(f"val_dice_{r}", "") for r in REPORT_REGIONS}
            if all(v not in ("", None) for v in values.values()):
                self.val_epochs.append(epoch)
                for r, v in values.items():
                    self.val_dice[r].append(float(v))
        self.redraw()

    # ------------------------------------------------------------------------------------ colours
    def set_colors(self, colors: PlotColors) -> None:
        """Draw in ``colors`` from now on."""
        self.colors = colors
        self.redraw()

    def follow_theme(self, viewer: Any) -> None:
        """Take the colours of ``viewer``'s theme, now and whenever the user changes it."""

        def on_theme(*_: Any) -> None:
            if not self._closing:
                self.set_colors(theme_colors(viewer.theme))

        viewer.events.theme.connect(on_theme)
        # A closed dock stops listening (the viewer outlives it).
        self.destroyed.connect(lambda *_: viewer.events.theme.disconnect(on_theme))
        on_theme()

    # ------------------------------------------------------------------------------------ drawing
    def redraw(self) -> None:
        """Ask for an image of the current points (rendered in the background, shown when ready)."""
        snap = {
            "steps": list(self.steps),
            "step_losses": list(self.step_losses),
            "epoch_steps": list(self.epoch_steps),
            "epoch_losses": list(self.epoch_losses),
            "val_epochs": list(self.val_epochs),
            "val_dice": {r: list(v) for r, v in self.val_dice.items()},
            "size": (self.image.width(), self.image.height()),
            "colors": self.colors,
        }
        with self._wake:
            self._pending = snap
            self._wake.notify()
        if not self._poll.isActive():
            self._poll.start()

    @property
    def idle(self) -> bool:
        """True when every requested image has been rendered."""
        with self._wake:
            return self._pending is None and not self._busy and self._done is None

    def resizeEvent(self, event: Any) -> None:
        super().resizeEvent(event)
        self.redraw()

    def close_renderer(self, *_: Any) -> None:
        """End the rendering thread (the widget is going away)."""
        with self._wake:
            self._closing = True
            self._wake.notify()

    def _render_loop(self) -> None:
        figure = None
        while True:
            with self._wake:
                while self._pending is None and not self._closing:
                    self._wake.wait()
                if self._closing:
                    return
                snap, self._pending = self._pending, None
                self._busy = True
            pixels = None
            try:
                figure = figure or _Figure()
                pixels = figure.render(snap)
            finally:
                with self._wake:
                    self._busy = False
                    self._done = pixels

    def _show(self) -> None:
        with self._wake:
            done, self._done = self._done, None
            if self._pending is None and not self._busy:
                self._poll.stop()
        if done is None or self._closing:
            return
        data, width, height = done
        image = QImage(data, width, height, 4 * width, QImage.Format_RGBA8888)
        self.image.setPixmap(QPixmap.fromImage(image))  # fromImage copies the pixels
        self.n_draws += 1
