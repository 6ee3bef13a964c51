"""Small Qt adjustments shared by the dock widgets."""

from __future__ import annotations

from typing import Any

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
