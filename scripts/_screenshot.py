"""Helpers shared by the screenshot scripts (run as ``python scripts/<name>.py``)."""

from __future__ import annotations


def close_toasts(viewer) -> None:
    """Close napari's notification pop-ups, which would cover part of the screenshot."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
