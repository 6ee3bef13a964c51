"""Small Qt adjustments shared by the dock widgets."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import Container
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QSizePolicy, QWidget


def wrap_to_dock_width(*labels: Any) -> None:
    """Let magicgui ``Label`` widgets wrap their text at the dock's width.

    magicgui gives a label a fixed horizontal size policy, so even with word wrap its longest
    line (a model description, an error message) sets the minimum width of the whole dock and
    squeezes the viewer's canvas. An ignored horizontal policy with height-for-width instead
    takes the width the dock has and grows in height.
    """
    for label in labels:
        native = label.native
        native.setWordWrap(True)
        policy = QSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        policy.setHeightForWidth(True)
        native.setSizePolicy(policy)
        native.setMinimumWidth(1)


def scroll_area(content: QWidget, min_height: int = 360) -> QScrollArea:
    """``content`` in a frameless, vertically scrolling area that follows the dock's width.

    ``min_height`` keeps a usable part of it in view when other docks share the column.
    """
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    area.setWidget(content)
    # Only the height scrolls: the dock stays as wide as the content needs.
    bar = area.verticalScrollBar().sizeHint().width()
    area.setMinimumWidth(content.minimumSizeHint().width() + bar)
    area.setMinimumHeight(min(min_height, content.minimumSizeHint().height()))
    return area


class ScrollingDock(Container):
    """A dock widget whose content (:meth:`set_body`) scrolls vertically.

    napari docks a magicgui container's inner widget, so magicgui's own ``scrollable`` is lost
    there: the scroll area is built here, inside that widget. Forms taller than a laptop screen
    then keep their buttons and plots reachable, and several docks share a column.
    """

    def __init__(self) -> None:
        super().__init__(labels=False)
        self._body: Container | None = None

    def set_body(self, body: Container, min_height: int = 360) -> None:
        """Show ``body`` (the widget's whole content) in the scroll area."""
        self._body = body
        layout = self.native.layout()
        layout.addWidget(scroll_area(body.native, min_height))
        layout.setContentsMargins(0, 0, 0, 0)

    def reset_choices(self, *_: Any) -> None:
        """Refresh every picker's choices (napari calls this when layers change).

        The widgets live in the scrolling body, not in this container's own list.
        """
        if self._body is not None:
            self._body.reset_choices()
