"""The parsed view of a work item's bytes, shared by the stages (issue 15: one parse per message).

The legacy detector (`bridge.LegacyInboundStage`), the S/MIME classifier (`forms.is_encrypted`),
the header edits (`headers.strip_headers`) and the protection (`smime.protect`) all read the same
bytes; each used to split and parse them again. `view_of` hands them one `MessageView` per bytes
object, kept on the item (`WorkItem.derived`) so that the items a stage derives with `replace`
share it as long as their `data` is the very same object.

Rule: a stage that changes the message makes new bytes (`replace(item, data=...)`); it never
changes what a view handed out (the parsed tree is shared, read-only).
"""

from __future__ import annotations

from gateway.pipeline import WorkItem
from gateway.rawmime import MessageView

_KEY = "view"


def view_of(item: WorkItem) -> MessageView:
    """The view of `item.data`, made on first use and shared while the bytes stay the same."""
    view = item.derived.get(_KEY)
    if not isinstance(view, MessageView) or view.data is not item.data:
        view = MessageView(item.data)
        item.derived[_KEY] = view
    return view
